"""``hardscore-export``: turn a PyTorch classifier into a hardscore model directory.

Pipeline: build the model (torchvision ResNet50 in the ImageNet or CIFAR layout, or any
``torch.nn.Module`` through :func:`export_model`), load the checkpoint, export to ONNX with a
dynamic batch axis (input ``images`` [N, C, H, W] float32, output ``logits`` [N, classes]),
check ONNX Runtime against PyTorch on seeded random inputs (batch 1 and 4, max abs difference
must be <= 1e-3), then write ``model.onnx`` and ``manifest.json``. With ``--fp16`` the model
written is the float16 conversion (hardscore_server.tools.fp16; float32 inputs and outputs), checked
against the float32 export within FP16_TOLERANCE. Nothing is written to the output directory
unless every step passes.

torch, torchvision and onnx are imported inside functions: they are the ``export`` extra and
the server must not need them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardscore_server.model.model_dir import (
    MODEL_FILE,
    RESIZE_EXACT,
    RESIZE_RULES,
    RESIZE_SHORTER_CENTER_CROP,
    ModelDirError,
    ModelManifest,
    check_io,
    validate_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    import torch

MISSING_EXTRA = "hardscore-export needs the 'export' extra: pip install 'hardscore[export]'"

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-3
"""Max allowed |ONNX Runtime - PyTorch| over all logits of the parity check."""
PARITY_BATCH_SIZES = (1, 4)
FP16_TOLERANCE = 1e-2
"""``--fp16``: max allowed |float16 model - float32 model| over all logits, as a fraction of
the float32 logits' largest magnitude (at least 1): 1% of the logit scale."""
MAX_SINGLE_FILE_BYTES = 2**31 - 1
"""protobuf limit; larger models would need external data files, which we do not produce."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LAYOUTS = ("imagenet", "cifar")
CIFAR_MAXPOOL_CHOICES = ("keep", "identity")
_LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": {
        "num_classes": 1000,
        "input_size": (224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "resize": RESIZE_SHORTER_CENTER_CROP,
    },
    "cifar": {
        "num_classes": 10,
        "input_size": (32, 32),
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "resize": RESIZE_EXACT,
    },
}

# Wrappers that prefix parameter names: DataParallel/DDP ("module."), Lightning modules holding
# the network as self.model / self.net ("model.", "net."), torch.compile ("_orig_mod.").
_STRIPPABLE_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


class ExportError(RuntimeError):
    """The export cannot proceed or its result failed a check; the message says why."""


@dataclass(frozen=True)
class ExportResult:
    """Outcome of a successful export: the written directory, its manifest, and the parity
    check's max |ONNX Runtime - PyTorch| over all logits (logit units)."""

    model_dir: Path
    manifest: ModelManifest
    parity_max_abs_diff: float
    fp16_parity_max_abs_diff: float | None = None
    """``--fp16`` only: max |float16 - float32 export| over all logits (logit units)."""


# --------------------------------------------------------------------------- lazy imports


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return torch


def _import_torchvision() -> Any:
    _import_torch()
    try:
        import torchvision
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return torchvision


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return onnx


# --------------------------------------------------------------------------- models


def build_resnet50(
    layout: str, num_classes: int, *, cifar_maxpool: str = "keep"
) -> torch.nn.Module:
    """A randomly initialised torchvision ResNet50 (never downloads weights).

    ``layout="imagenet"``: torchvision's resnet50 as is. ``layout="cifar"``: conv1 replaced by a
    3x3 stride-1 padding-1 convolution without bias, the layout of huyvnphan/PyTorch_CIFAR10;
    ``cifar_maxpool="keep"`` keeps the stem max-pool as that repository does (its checkpoints
    need it), ``"identity"`` removes it (the other common CIFAR variant). Parameter names are
    torchvision's either way.
    """
    torch = _import_torch()
    torchvision = _import_torchvision()
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if cifar_maxpool not in CIFAR_MAXPOOL_CHOICES:
        raise ExportError(
            f"unknown cifar maxpool option {cifar_maxpool!r}; "
            f"expected one of {', '.join(CIFAR_MAXPOOL_CHOICES)}"
        )
    if num_classes < 2:
        raise ExportError(f"num_classes must be at least 2, got {num_classes}")
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if layout == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if cifar_maxpool == "identity":
            model.maxpool = torch.nn.Identity()
    return model


# --------------------------------------------------------------------------- checkpoints


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Read a checkpoint file and return its state dict (name -> tensor).

    Accepts a raw state dict, or a dict holding it under ``"state_dict"`` (Lightning) or
    ``"model"``. Loaded with ``weights_only=True`` (no arbitrary code execution).
    """
    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"checkpoint {path}: cannot load with torch.load: {exc}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner, torch):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ExportError(
            f"checkpoint {path}: expected a state dict (or a dict with a 'state_dict' or 'model' "
            f"entry), got {type(obj).__name__}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ExportError(
            f"checkpoint {path}: entries that are not tensors: {_preview(bad)}; expected a state "
            "dict (or a dict with a 'state_dict' or 'model' entry)"
        )
    return tensors


def _all_tensors(mapping: Mapping[Any, Any], torch: Any) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def strip_key_prefixes(state_dict: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``model.``, ``net.``, ``_orig_mod.``, repeatedly)
    that every key carries, unless the keys already match ``model_keys``."""
    current = dict(state_dict)
    changed = True
    while changed and not set(current) <= model_keys:
        changed = False
        for prefix in _STRIPPABLE_PREFIXES:
            if current and all(k.startswith(prefix) for k in current):
                current = {k[len(prefix) :]: v for k, v in current.items()}
                changed = True
                break
    return current


def apply_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into ``model`` after :func:`strip_key_prefixes`; refuse on missing or
    unexpected keys or shape mismatches, listing them. BatchNorm ``num_batches_tracked``
    counters (absent from pre-2018 checkpoints, unused in eval mode) may be missing."""
    torch = _import_torch()
    expected = model.state_dict()
    cleaned = strip_key_prefixes(state_dict, set(expected))
    missing = [k for k in expected if k not in cleaned and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in cleaned if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if problems:
        raise ExportError(
            f"{source} does not match the model ({'; '.join(problems)}); check --arch/--layout"
        )
    mismatched = [
        f"{k} {list(cleaned[k].shape)} (model {list(v.shape)})"
        for k, v in expected.items()
        if k in cleaned and tuple(cleaned[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise ExportError(
            f"{source} has tensors whose shapes do not match the model: {_preview(mismatched)}; "
            "check --num-classes and --layout"
        )
    with torch.no_grad():
        model.load_state_dict(cleaned, strict=False)


def _checkpoint_num_classes(state_dict: Mapping[str, Any]) -> int | None:
    for key, value in state_dict.items():
        if re.fullmatch(r"(.*\.)?fc\.weight", key) and getattr(value, "ndim", 0) == 2:
            return int(value.shape[0])
    return None


# --------------------------------------------------------------------------- ONNX export


def _torch_onnx_export(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int
) -> str:
    """Export with the TorchScript exporter (dynamo=False); fall back to the dynamo exporter
    where the former is unavailable. Returns the exporter's name."""
    torch = _import_torch()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    common: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
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


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def parity_check(
    model: torch.nn.Module,
    session: Any,
    input_shape: tuple[int, int, int],
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    seed: int = 0,
) -> float:
    """Max |ONNX Runtime - PyTorch| over all logits, on standard-normal inputs drawn with
    ``seed`` at each batch size (also checks the dynamic batch axis)."""
    torch = _import_torch()
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in batch_sizes:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).detach().cpu().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"parity check: ONNX Runtime output shape {list(got.shape)} != PyTorch "
                f"{list(expected.shape)} at batch size {n}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
        if not np.isfinite(diff):
            raise ExportError(f"parity check: non-finite logits at batch size {n}")
        worst = max(worst, diff)
    return worst


def export_model(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    version: str,
    class_names: Sequence[str],
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = RESIZE_EXACT,
    input_channels: int = 3,
    temperature: float = 1.0,
    random_weights: bool = False,
    provenance: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    parity_tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
    log: Any = print,
    fp16: bool = False,
) -> ExportResult:
    """Export an in-memory ``model`` (logits out) to the model directory ``out_dir``.

    ``input_size`` is (height, width) in pixels; ``mean``/``std`` one value per channel in
    pixel/255 units; ``resize`` one of ``RESIZE_RULES``. ``provenance`` is merged with what the
    exporter records (torch version, export date, opset, exporter, parity_max_abs_diff; "arch"
    defaults to the module's class name). The model is put in eval mode. Raises
    :class:`ExportError` (or :class:`~hardscore_server.model.model_dir.ModelDirError` for an invalid
    manifest) and then writes nothing. ``out_dir`` gets ``model.onnx`` and ``manifest.json``,
    replacing existing ones. ``log`` receives progress lines (``print`` by default).
    With ``fp16`` the written model is the float16 conversion of the float32 export (float32
    inputs and outputs), checked against it on the same inputs within ``FP16_TOLERANCE``.
    """
    torch = _import_torch()
    onnx = _import_onnx()
    height, width = (int(v) for v in input_size)
    record: dict[str, str] = {"arch": type(model).__name__}
    record.update({str(k): str(v) for k, v in (provenance or {}).items()})
    record.update(
        {
            "torch_version": str(torch.__version__),
            "export_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        }
    )
    manifest = ModelManifest(
        name=name,
        version=version,
        class_names=tuple(class_names),
        input_channels=input_channels,
        input_height=height,
        input_width=width,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        resize=resize,
        temperature=float(temperature),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        random_weights=random_weights,
        provenance=dict(record),
    )
    validate_manifest(manifest)  # fail before the slow part

    model = model.eval()
    example = torch.zeros((2, input_channels, height, width), dtype=torch.float32)
    with torch.no_grad():
        probe = model(example)
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ExportError(f"the model must return logits of shape [N, classes], got {shape}")
    if probe.shape[1] != len(manifest.class_names):
        raise ExportError(
            f"the model has {probe.shape[1]} outputs but {len(manifest.class_names)} class names "
            "were given"
        )

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="hardscore-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        exporter = _torch_onnx_export(model, example, raw_path, opset)
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
        model_path = Path(tmp) / MODEL_FILE
        onnx.save_model(proto, str(model_path), save_as_external_data=False)

        session = _ort_session(model_path)
        check_io(manifest, session.get_inputs(), session.get_outputs())
        diff = parity_check(model, session, (input_channels, height, width), seed=seed)
        log(
            f"parity ONNX Runtime vs PyTorch (batch sizes "
            f"{', '.join(str(b) for b in PARITY_BATCH_SIZES)}): max abs diff {diff:.3e} "
            f"(tolerance {parity_tolerance:.0e})"
        )
        if diff > parity_tolerance:
            raise ExportError(
                f"parity check failed: max abs difference {diff:.3e} between ONNX Runtime and "
                f"PyTorch exceeds {parity_tolerance:.0e}; nothing was written"
            )
        record.update({"exporter": exporter, "onnx_opset": str(actual_opset),
                       "parity_max_abs_diff": f"{diff:.3e}"})
        fp16_diff = None
        if fp16:
            model_path, fp16_diff, fp16_record = _fp16_model(
                proto, session, Path(tmp), manifest, (input_channels, height, width), seed, log)
            record.update(fp16_record)
        manifest = replace(manifest, provenance=record)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, out_dir / MODEL_FILE)
        write_manifest(out_dir, manifest)
    log(f"wrote {out_dir / MODEL_FILE} ({(out_dir / MODEL_FILE).stat().st_size} bytes)")
    return ExportResult(model_dir=out_dir, manifest=manifest, parity_max_abs_diff=diff,
                        fp16_parity_max_abs_diff=fp16_diff)


def _fp16_model(
    proto: Any, session32: Any, tmp: Path, manifest: ModelManifest,
    input_shape: tuple[int, int, int], seed: int, log: Any,
) -> tuple[Path, float, dict[str, str]]:
    """Writes the float16 conversion of ``proto`` to ``tmp``, checks it against the float32
    session on seeded standard-normal inputs (PARITY_BATCH_SIZES); returns its path, the max
    abs difference and what the manifest records. Raises ExportError beyond FP16_TOLERANCE."""
    onnx = _import_onnx()
    from hardscore_server.tools.fp16 import Fp16Error, convert_to_float16

    try:
        half = convert_to_float16(proto)
    except Fp16Error as exc:
        raise ExportError(str(exc)) from exc
    onnx.checker.check_model(half)
    path = tmp / "model_fp16.onnx"
    onnx.save_model(half, str(path), save_as_external_data=False)
    session16 = _ort_session(path)
    check_io(manifest, session16.get_inputs(), session16.get_outputs())
    rng = np.random.default_rng(seed)
    worst, scale = 0.0, 1.0
    for n in PARITY_BATCH_SIZES:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        want = session32.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float64)
        got = session16.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.dtype != np.float32 or not np.all(np.isfinite(got)):
            raise ExportError(f"fp16 parity: the float16 model gave {got.dtype} logits, "
                              f"finite: {bool(np.all(np.isfinite(got)))}")
        worst = max(worst, float(np.max(np.abs(got - want))))
        scale = max(scale, float(np.max(np.abs(want))))
    tolerance = FP16_TOLERANCE * scale
    log(f"fp16 parity float16 vs float32 model on ONNX Runtime CPU: max abs diff {worst:.3e} "
        f"(tolerance {FP16_TOLERANCE:.0e} x logit scale {scale:.3g} = {tolerance:.3e}); "
        "the CPU provider computes most float16 ops in float32 (float16 weights), "
        "CUDA/TensorRT in float16")
    if worst > tolerance:
        raise ExportError(f"fp16 parity check failed: max abs difference {worst:.3e} between "
                          f"the float16 and float32 models exceeds {tolerance:.3e}; nothing "
                          "was written")
    return path, worst, {
        "precision": "float16",
        "fp16_parity_max_abs_diff": f"{worst:.3e}",
        "fp16_parity_tolerance": f"{tolerance:.3e}",
    }


# --------------------------------------------------------------------------- CLI


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hardscore-export`` options to ``parser``."""
    parser.add_argument("--arch", choices=["resnet50"], default="resnet50", help="architecture")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="imagenet",
        help="imagenet: torchvision resnet50; cifar: 3x3 stride-1 stem for 32x32 images "
        "(huyvnphan/PyTorch_CIFAR10 layout)",
    )
    parser.add_argument(
        "--cifar-maxpool",
        choices=CIFAR_MAXPOOL_CHOICES,
        default="keep",
        help="cifar layout only: keep the stem max-pool (as huyvnphan/PyTorch_CIFAR10, "
        "default) or replace it by identity",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="PyTorch state dict file (.pt/.pth/.ckpt)")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="export seeded random weights (benchmarking only; recorded in the manifest)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        help="default: from the class names, the checkpoint, or 1000 (imagenet) / 10 (cifar)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--name", help="model name (default: resnet50-<layout>)")
    parser.add_argument("--version", default="1", help="model version (default: 1)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--class-names", help="comma-separated class names, in output order")
    names.add_argument("--class-names-file", type=Path, help="file with one class name per line")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input height and width in pixels (default 224 224 imagenet, 32 32 cifar)",
    )
    parser.add_argument("--mean", nargs="+", type=float, help="per-channel mean, pixel/255 units")
    parser.add_argument("--std", nargs="+", type=float, help="per-channel std, pixel/255 units")
    parser.add_argument(
        "--resize",
        choices=RESIZE_RULES,
        help="resize rule (default: resize_shorter_center_crop imagenet, resize cifar)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature > 0")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and parity")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="write a float16 model (float32 inputs and outputs), checked against the float32 "
        f"export within {FP16_TOLERANCE:.0%} of the logit scale",
    )


def _class_names_from_args(args: argparse.Namespace) -> list[str] | None:
    if args.class_names is not None:
        names = [n.strip() for n in args.class_names.split(",")]
    elif args.class_names_file is not None:
        try:
            text = Path(args.class_names_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ExportError(f"cannot read --class-names-file: {exc}") from exc
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        return None
    if any(not n for n in names):
        raise ExportError("--class-names contains an empty name")
    return names


def export_resnet50(args: argparse.Namespace, log: Any = print) -> ExportResult:
    """Run the ``hardscore-export`` pipeline for parsed ``args`` (see
    :func:`add_export_arguments`)."""
    torch = _import_torch()
    layout = args.layout
    defaults = _LAYOUT_DEFAULTS[layout]
    if args.checkpoint is None and not args.random_weights:
        raise ExportError(
            "no weights: pass --checkpoint FILE, or --random-weights to export seeded random "
            "weights for benchmarking (its scores are meaningless)"
        )
    class_names = _class_names_from_args(args)
    state_dict = None
    provenance = {"arch": args.arch, "layout": layout}
    if layout == "cifar":
        provenance["cifar_maxpool"] = args.cifar_maxpool
    if args.checkpoint is not None:
        state_dict = load_state_dict_file(args.checkpoint)
        provenance["checkpoint"] = Path(args.checkpoint).name
        provenance["checkpoint_sha256"] = sha256_file(args.checkpoint)
    else:
        provenance["checkpoint"] = "random"
        provenance["random_seed"] = str(args.seed)

    num_classes = args.num_classes
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        elif state_dict is not None and _checkpoint_num_classes(state_dict) is not None:
            num_classes = _checkpoint_num_classes(state_dict)
        else:
            num_classes = int(defaults["num_classes"])
    assert num_classes is not None
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(
            f"{len(class_names)} class names given but --num-classes is {num_classes}"
        )

    torch.manual_seed(args.seed)
    model = build_resnet50(layout, num_classes, cifar_maxpool=args.cifar_maxpool)
    if state_dict is not None:
        apply_state_dict(model, state_dict, source=f"checkpoint {Path(args.checkpoint).name}")

    input_size = tuple(args.input_size) if args.input_size else defaults["input_size"]
    return export_model(
        model,
        args.out,
        name=args.name or f"{args.arch}-{layout}",
        version=args.version,
        class_names=class_names,
        input_size=(int(input_size[0]), int(input_size[1])),
        mean=args.mean if args.mean is not None else defaults["mean"],
        std=args.std if args.std is not None else defaults["std"],
        resize=args.resize or defaults["resize"],
        temperature=args.temperature,
        random_weights=bool(args.random_weights),
        provenance=provenance,
        opset=args.opset,
        seed=args.seed,
        log=log,
        fp16=bool(getattr(args, "fp16", False)),
    )


def run_export(args: argparse.Namespace) -> int:
    """CLI entry point for parsed ``hardscore-export`` arguments; returns the exit status
    (0 success, 1 failure with the reason printed to stderr)."""
    try:
        result = export_resnet50(args)
    except (ExportError, ModelDirError) as exc:
        print(f"hardscore-export: error: {exc}", file=sys.stderr)
        return 1
    m = result.manifest
    print(
        f"exported {m.name} version {m.version} ({m.num_classes} classes, input "
        f"{m.input_channels}x{m.input_height}x{m.input_width}) to {result.model_dir}"
    )
    if m.random_weights:
        print("note: random weights; use this model for benchmarking only")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``hardscore-export``: exports a ResNet50 checkpoint to a model directory."""
    parser = argparse.ArgumentParser(
        prog="hardscore-export", description="Export a ResNet50 checkpoint to a model directory")
    add_export_arguments(parser)
    return run_export(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
