"""torch -> ONNX for ``hardscore-export``: one input ``images`` [N, C, H, W] float32, the output
``logits`` [N, classes] and, for a model wrapped by ``torch_models.with_embedding``, a second
output ``embedding`` [N, D] float32 (its penultimate pooled features), with a dynamic batch
axis N, saved as a single file (under 2 GiB) that passes ``onnx.checker``; and, for ``--fp16``,
its float16 copy (float32 inputs and outputs, :mod:`hardscore_server.tools.fp16`).

torch and onnx are imported inside the functions (the ``export`` extra).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardscore_server.model.model_dir import MODEL_FILE
from hardscore_server.tools.export_extra import ExportError, import_onnx, import_torch
from hardscore_server.tools.fp16 import Fp16Error, convert_to_float16

if TYPE_CHECKING:
    import torch

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EMBEDDING_NAME = "embedding"
DEFAULT_OPSET = 17
MAX_SINGLE_FILE_BYTES = 2**31 - 1
"""protobuf limit; larger models would need external data files, which we do not produce."""
FP16_FILE = "model_fp16.onnx"


@dataclass(frozen=True)
class OnnxModel:
    """An exported model: its file, its ``onnx.ModelProto``, the torch exporter that produced
    it ("torchscript" or "dynamo") and the default-domain opset it declares."""

    path: Path
    proto: Any
    exporter: str
    opset: int


def example_input(
    model: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int
) -> torch.Tensor:
    """Zeros [2, C, H, W] float32 for ``input_shape`` (C, H, W), once ``model`` (in eval mode)
    has been seen to turn them into logits [2, ``num_classes``]."""
    torch = import_torch()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    with torch.no_grad():
        probe = model(example)
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ExportError(f"the model must return logits of shape [N, classes], got {shape}")
    if probe.shape[1] != num_classes:
        raise ExportError(
            f"the model has {probe.shape[1]} outputs but {num_classes} class names were given"
        )
    return example


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, directory: Path, *, opset: int, name: str,
    version: str, embedding: bool = False,
) -> OnnxModel:
    """Export ``model`` traced on ``example`` to ``directory/model.onnx``, with ``name`` and
    ``version`` in its doc string and metadata; refuses a model of 2 GiB or more. With
    ``embedding`` the model returns (logits, embedding), exported as outputs ``logits`` and
    ``embedding``."""
    onnx = import_onnx()
    raw_path = directory / "raw.onnx"
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    exporter = _torch_onnx_export(model, example, raw_path, opset, outputs)
    proto = onnx.load(str(raw_path), load_external_data=True)
    actual_opset = next(
        (op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), opset
    )
    proto.doc_string = f"hardscore model {name} version {version}"
    for key, value in (("hardscore.name", name), ("hardscore.version", version)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    size = proto.ByteSize()
    if size > MAX_SINGLE_FILE_BYTES:
        raise ExportError(
            f"the ONNX model is {size} bytes; a single-file model must be under 2 GiB"
        )
    onnx.checker.check_model(proto)
    model_path = directory / MODEL_FILE
    onnx.save_model(proto, str(model_path), save_as_external_data=False)
    return OnnxModel(path=model_path, proto=proto, exporter=exporter, opset=actual_opset)


def save_float16(proto: Any, directory: Path) -> Path:
    """Write the float16 conversion of ``proto`` to ``directory/model_fp16.onnx`` (checked by
    ``onnx.checker``) and return its path; :class:`ExportError` if it cannot be converted."""
    onnx = import_onnx()
    try:
        half = convert_to_float16(proto)
    except Fp16Error as exc:
        raise ExportError(str(exc)) from exc
    onnx.checker.check_model(half)
    path = directory / FP16_FILE
    onnx.save_model(half, str(path), save_as_external_data=False)
    return path


def _torch_onnx_export(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int,
    outputs: list[str],
) -> str:
    """Export with the TorchScript exporter (dynamo=False); fall back to the dynamo exporter
    where the former is unavailable. Returns the exporter's name."""
    torch = import_torch()
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)}
    common: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": outputs,
        "dynamic_axes": dynamic_axes,
        "opset_version": opset,
    }
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it is still the most
        # robust path for plain CNNs, so keep its deprecation notice out of the CLI output.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **common)
            return "torchscript"
        except Exception as first:
            torchscript_error = first
        try:
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False, **common
            )
            return "dynamo"
        except Exception as second:
            raise ExportError(
                f"torch.onnx.export failed with the TorchScript exporter ({torchscript_error}) "
                f"and with the dynamo exporter ({second})"
            ) from second
