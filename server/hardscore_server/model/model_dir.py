"""The model directory format: ``model.onnx`` plus ``manifest.json``.

A model directory is everything the server needs to serve one classifier:

- ``model.onnx``: one self-contained ONNX graph with one float32 input ``[N, C, H, W]`` (N
  dynamic) and an output ``[N, num_classes]`` of logits (pre-softmax scores).
- ``manifest.json``: how to feed it and how to name its outputs (see :class:`ModelManifest`).

JSON layout of ``manifest.json`` (format_version 1)::

    {
      "format_version": 1,
      "name": "digits-resnet",
      "version": "1",
      "class_names": ["0", "1", ...],
      "input": {"name": "images", "channels": 3, "height": 32, "width": 32,
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "resize"},
      "output": {"name": "logits"},
      "embedding": {"name": "embedding", "dim": 48},
      "temperature": 1.0,
      "random_weights": false,
      "provenance": {"architecture": "...", ...}
    }

``embedding``, ``temperature``, ``random_weights`` and ``provenance`` are optional when reading
(defaults: no embedding output, 1.0, false, {}); every other field is required and unknown
fields are rejected, so a typo is an error rather than a silently ignored setting. This module
needs neither torch nor onnx.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"

RESIZE_EXACT = "resize"
RESIZE_SHORTER_CENTER_CROP = "resize_shorter_center_crop"
RESIZE_RULES: tuple[str, ...] = (RESIZE_EXACT, RESIZE_SHORTER_CENTER_CROP)

INPUT_TYPE = "tensor(float)"

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "default_model"
"""The embedded default model (digits ResNet, trained by server/train_default_model.py)."""


class ModelDirError(ValueError):
    """A model directory is missing a file or its manifest/model is invalid or inconsistent."""


@dataclass(frozen=True)
class ModelManifest:
    """Contents of ``manifest.json``.

    Preprocessing contract: decode the image to RGB (or L when ``input_channels`` is 1) uint8,
    apply ``resize`` (bilinear), then x = (pixel / 255 - mean[c]) / std[c] as float32, NCHW.

    - ``class_names``: one per model output column, in output order; at least 2, unique.
    - ``input_channels``: 1 or 3; ``input_height`` / ``input_width``: pixels, > 0.
    - ``mean`` / ``std``: one value per channel, in units of pixel/255 (so usually in [0, 1]);
      std > 0.
    - ``resize``: ``"resize"`` = bilinear resize to exactly height x width (aspect ratio not
      kept); ``"resize_shorter_center_crop"`` = bilinear resize of the shorter side to
      :attr:`shorter_side` pixels, then center-crop height x width (torchvision ImageNet eval).
    - ``temperature``: > 0; probabilities are softmax(logits / temperature).
    - ``input_name`` / ``output_name``: ONNX graph input and output names.
    - ``random_weights``: true when the weights are random (benchmarking only, not a classifier).
    - ``provenance``: free-form strings (architecture, checkpoint sha256, accuracy, ...).
    - ``embedding``: the model's second output, its penultimate pooled features float32
      [N, dim] (``embedding_name``, ``embedding_dim`` >= 1), or None (``embedding_dim`` 0):
      the model has none (a manifest without the ``embedding`` key).
    """

    name: str
    version: str
    class_names: tuple[str, ...]
    input_channels: int
    input_height: int
    input_width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    temperature: float = 1.0
    input_name: str = "images"
    output_name: str = "logits"
    random_weights: bool = False
    provenance: dict[str, str] = field(default_factory=dict)
    embedding_name: str | None = None
    embedding_dim: int = 0

    @property
    def has_embedding(self) -> bool:
        """Whether the model has an embedding output (manifest key ``embedding``)."""
        return self.embedding_name is not None

    @property
    def num_classes(self) -> int:
        """Number of classes (= model output columns)."""
        return len(self.class_names)

    @property
    def shorter_side(self) -> int:
        """Target shorter side in pixels for ``resize_shorter_center_crop``:
        round(max(H, W) * 256 / 224), e.g. 256 for 224x224."""
        return round(max(self.input_height, self.input_width) * 256 / 224)

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as the JSON-ready dict written to ``manifest.json``."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "class_names": list(self.class_names),
            "input": {
                "name": self.input_name,
                "channels": self.input_channels,
                "height": self.input_height,
                "width": self.input_width,
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
                "resize": self.resize,
            },
            "output": {"name": self.output_name},
            **({"embedding": {"name": self.embedding_name, "dim": self.embedding_dim}}
               if self.embedding_name is not None else {}),
            "temperature": float(self.temperature),
            "random_weights": self.random_weights,
            "provenance": dict(self.provenance),
        }


# --------------------------------------------------------------------------- validation


def _err(message: str) -> ModelDirError:
    return ModelDirError(f"{MANIFEST_FILE}: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float)) and not isinstance(value, bool)


def validate_manifest(manifest: ModelManifest) -> None:
    """Check types and ranges of every field; raise :class:`ModelDirError` naming the field
    (by its JSON path in manifest.json) on the first problem."""
    for path, value in (
        ("name", manifest.name),
        ("version", manifest.version),
        ("input.name", manifest.input_name),
        ("output.name", manifest.output_name),
    ):
        if not isinstance(value, str) or not value.strip():
            raise _err(f"{path} must be a non-empty string, got {value!r}")

    names = manifest.class_names
    if not isinstance(names, tuple | list):
        raise _err(f"class_names must be a list of strings, got {type(names).__name__}")
    for i, class_name in enumerate(names):
        if not isinstance(class_name, str) or not class_name:
            raise _err(f"class_names[{i}] must be a non-empty string, got {class_name!r}")
    if len(names) < 2:
        raise _err(f"class_names has {len(names)} entries, expected at least 2")
    seen: set[str] = set()
    for class_name in names:
        if class_name in seen:
            raise _err(f"class_names contains {class_name!r} more than once")
        seen.add(class_name)

    channels = manifest.input_channels
    if not _is_int(channels) or channels not in (1, 3):
        raise _err(f"input.channels must be 1 or 3, got {channels!r}")
    for path, size in (
        ("input.height", manifest.input_height),
        ("input.width", manifest.input_width),
    ):
        if not _is_int(size) or size <= 0:
            raise _err(f"{path} must be a positive integer, got {size!r}")

    for path, values in (("input.mean", manifest.mean), ("input.std", manifest.std)):
        if not isinstance(values, tuple | list):
            raise _err(f"{path} must be a list of numbers, got {type(values).__name__}")
        if len(values) != channels:
            raise _err(f"{path} has {len(values)} values, expected {channels} (one per channel)")
        for i, v in enumerate(values):
            if not _is_number(v) or not math.isfinite(v):
                raise _err(f"{path}[{i}] must be a finite number, got {v!r}")
    for i, s in enumerate(manifest.std):
        if s <= 0:
            raise _err(f"input.std[{i}] must be > 0, got {s!r}")

    if manifest.resize not in RESIZE_RULES:
        raise _err(
            f"input.resize must be one of {', '.join(repr(r) for r in RESIZE_RULES)}, "
            f"got {manifest.resize!r}"
        )

    if manifest.embedding_name is None:
        if manifest.embedding_dim != 0:
            raise _err(f"embedding_dim is {manifest.embedding_dim!r} without an embedding name")
    else:
        if not isinstance(manifest.embedding_name, str) or not manifest.embedding_name.strip():
            raise _err(f"embedding.name must be a non-empty string, got "
                       f"{manifest.embedding_name!r}")
        if manifest.embedding_name in (manifest.output_name, manifest.input_name):
            raise _err(f"embedding.name {manifest.embedding_name!r} must differ from input.name "
                       "and output.name")
        dim = manifest.embedding_dim
        if not _is_int(dim) or dim < 1:
            raise _err(f"embedding.dim must be a positive integer, got {dim!r}")

    t = manifest.temperature
    if not _is_number(t) or not math.isfinite(t) or t <= 0:
        raise _err(f"temperature must be a finite number > 0, got {t!r}")
    if not isinstance(manifest.random_weights, bool):
        raise _err(f"random_weights must be true or false, got {manifest.random_weights!r}")
    if not isinstance(manifest.provenance, Mapping):
        raise _err(f"provenance must be an object, got {type(manifest.provenance).__name__}")
    for key, value in manifest.provenance.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _err(f"provenance.{key} must be a string, got {value!r}")


def _require_object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(f"{path} must be a JSON object, got {type(value).__name__}")
    return value


def _check_keys(obj: Mapping[str, Any], path: str, required: set[str], optional: set[str]) -> None:
    where = f"{path}." if path else ""
    for key in sorted(required):
        if key not in obj:
            raise _err(f"missing field {where}{key}")
    for key in obj:
        if key not in required and key not in optional:
            raise _err(f"unknown field {where}{key}")


def _number_list(value: object, path: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise _err(f"{path} must be a list of numbers, got {value!r}")
    for i, v in enumerate(value):
        if not _is_number(v):
            raise _err(f"{path}[{i}] must be a number, got {v!r}")
    return tuple(float(v) for v in value)


def parse_manifest(data: object) -> ModelManifest:
    """Build and validate a :class:`ModelManifest` from the decoded JSON of manifest.json."""
    top = _require_object(data, "the top level")
    if "format_version" not in top:
        raise _err("missing field format_version")
    fmt = top["format_version"]
    if not _is_int(fmt) or fmt != FORMAT_VERSION:
        raise _err(
            f"unsupported format_version {fmt!r} (this version of hardscore reads {FORMAT_VERSION})"
        )
    _check_keys(
        top,
        "",
        {"format_version", "name", "version", "class_names", "input", "output"},
        {"temperature", "random_weights", "provenance", "embedding"},
    )
    inp = _require_object(top["input"], "input")
    _check_keys(
        inp, "input", {"name", "channels", "height", "width", "mean", "std", "resize"}, set()
    )
    out = _require_object(top["output"], "output")
    _check_keys(out, "output", {"name"}, set())
    embedding: dict[str, Any] = {"name": None, "dim": 0}
    if "embedding" in top:
        embedding = _require_object(top["embedding"], "embedding")
        _check_keys(embedding, "embedding", {"name", "dim"}, set())

    class_names = top["class_names"]
    if not isinstance(class_names, list):
        raise _err(f"class_names must be a list of strings, got {type(class_names).__name__}")
    provenance = top.get("provenance", {})
    _require_object(provenance, "provenance")
    temperature = top.get("temperature", 1.0)
    if not _is_number(temperature):
        raise _err(f"temperature must be a number, got {temperature!r}")

    manifest = ModelManifest(
        name=top["name"],
        version=top["version"],
        class_names=tuple(class_names),
        input_channels=inp["channels"],
        input_height=inp["height"],
        input_width=inp["width"],
        mean=_number_list(inp["mean"], "input.mean"),
        std=_number_list(inp["std"], "input.std"),
        resize=inp["resize"],
        temperature=float(temperature),
        input_name=inp["name"],
        output_name=out["name"],
        random_weights=top.get("random_weights", False),
        provenance=dict(provenance),
        embedding_name=embedding["name"],
        embedding_dim=embedding["dim"],
    )
    validate_manifest(manifest)
    return manifest


# --------------------------------------------------------------------------- files


def load_manifest(model_dir: Path) -> ModelManifest:
    """Read and validate ``model_dir/manifest.json``; also require ``model_dir/model.onnx``.

    Raises :class:`ModelDirError` for a missing directory or file, invalid JSON, or any invalid
    field. It does not open the ONNX model: see :func:`check_io` for that.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist or is not a directory")
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelDirError(f"{MANIFEST_FILE} not found in model directory {model_dir}")
    if not (model_dir / MODEL_FILE).is_file():
        raise ModelDirError(f"{MODEL_FILE} not found in model directory {model_dir}")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{MANIFEST_FILE}: cannot read {manifest_path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelDirError(
            f"{MANIFEST_FILE}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return parse_manifest(data)


def _dumps(data: object, indent: int = 0) -> str:
    """Indented JSON (2 spaces) with lists of numbers (mean, std) kept on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(data, Mapping) and data:
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dumps(v, indent + 2)}"
            for k, v in data.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, list | tuple) and data:
        if all(_is_number(v) for v in data):
            return "[" + ", ".join(json.dumps(v) for v in data) + "]"
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 2) for v in data) + "\n" + pad + "]"
    return json.dumps(data, ensure_ascii=False)


def write_manifest(model_dir: Path, manifest: ModelManifest) -> None:
    """Validate ``manifest`` and write it to ``model_dir/manifest.json`` (atomically; the
    directory is created if needed). Raises :class:`ModelDirError` if the manifest is invalid."""
    validate_manifest(manifest)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    text = _dumps(manifest.to_json_dict()) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, model_dir / MANIFEST_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- model I/O


class NodeArgLike(Protocol):
    """What :func:`check_io` reads from ``onnxruntime.NodeArg``."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int | str | None]: ...

    @property
    def type(self) -> str: ...


def _static(dim: object) -> bool:
    return _is_int(dim)


def _fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_io(
    manifest: ModelManifest,
    inputs: Sequence[NodeArgLike],
    outputs: Sequence[NodeArgLike],
) -> None:
    """Check that the ONNX model's I/O matches the manifest.

    ``inputs`` / ``outputs`` are ``session.get_inputs()`` / ``session.get_outputs()`` of an
    ``onnxruntime.InferenceSession``. Dimensions that are str or None are dynamic and accepted.
    Raises :class:`ModelDirError` when the model has other than exactly one input, the named
    input/output is missing, the input is not ``tensor(float)``, not rank 4, has a fixed batch
    size, or static C/H/W differing from the manifest; or when the output is not rank 2 or has a
    static class count differing from ``len(class_names)``; or, for a manifest with an
    ``embedding``, when the model has no output of that name, or it is not float32 rank 2 with
    ``embedding.dim`` columns.
    """
    input_names = [i.name for i in inputs]
    output_names = [o.name for o in outputs]
    by_name = {i.name: i for i in inputs}
    if manifest.input_name not in by_name:
        raise ModelDirError(
            f"{MODEL_FILE}: has no input named {manifest.input_name!r} (manifest.json input.name); "
            f"its inputs are {input_names}"
        )
    if len(inputs) != 1:
        raise ModelDirError(
            f"{MODEL_FILE}: has {len(inputs)} inputs {input_names}; hardscore feeds exactly one "
            f"({manifest.input_name!r})"
        )
    node = by_name[manifest.input_name]
    label = f"{MODEL_FILE}: input {node.name!r}"
    if node.type != INPUT_TYPE:
        raise ModelDirError(f"{label} has type {node.type}, expected {INPUT_TYPE} (float32)")
    shape = list(node.shape)
    if len(shape) != 4:
        raise ModelDirError(
            f"{label} has rank {len(shape)} (shape {_fmt_shape(shape)}), expected 4 (N, C, H, W)"
        )
    batch = shape[0]
    if _static(batch):
        raise ModelDirError(
            f"{label} has a fixed batch size of {batch} (shape {_fmt_shape(shape)}); "
            "export it with a dynamic batch axis"
        )
    for dim, field_name, expected in (
        (shape[1], "channels", manifest.input_channels),
        (shape[2], "height", manifest.input_height),
        (shape[3], "width", manifest.input_width),
    ):
        if _static(dim) and dim != expected:
            raise ModelDirError(
                f"{label} has {field_name} {dim} (shape {_fmt_shape(shape)}), but manifest.json "
                f"input.{field_name} is {expected}"
            )

    out_by_name = {o.name: o for o in outputs}
    if manifest.output_name not in out_by_name:
        raise ModelDirError(
            f"{MODEL_FILE}: has no output named {manifest.output_name!r} "
            f"(manifest.json output.name); its outputs are {output_names}"
        )
    out = out_by_name[manifest.output_name]
    out_shape = list(out.shape)
    if len(out_shape) != 2:
        raise ModelDirError(
            f"{MODEL_FILE}: output {out.name!r} has rank {len(out_shape)} "
            f"(shape {_fmt_shape(out_shape)}), expected 2 (N, classes)"
        )
    n_out = out_shape[1]
    if _static(n_out) and n_out != manifest.num_classes:
        raise ModelDirError(
            f"{MODEL_FILE}: output {out.name!r} has {n_out} classes, but manifest.json "
            f"class_names has {manifest.num_classes} entries"
        )
    if manifest.embedding_name is not None:
        _check_embedding(manifest, out_by_name, output_names)


def _check_embedding(
    manifest: ModelManifest, out_by_name: Mapping[str, NodeArgLike], output_names: list[str]
) -> None:
    name = manifest.embedding_name
    emb = out_by_name.get(name or "")
    if emb is None:
        raise ModelDirError(
            f"{MODEL_FILE}: has no output named {name!r} (manifest.json embedding.name); its "
            f"outputs are {output_names}; re-export the model with hardscore-export, or remove "
            "the manifest's embedding key")
    shape = list(emb.shape)
    label = f"{MODEL_FILE}: embedding output {name!r}"
    if emb.type != INPUT_TYPE:
        raise ModelDirError(f"{label} has type {emb.type}, expected {INPUT_TYPE} (float32)")
    if len(shape) != 2:
        raise ModelDirError(
            f"{label} has rank {len(shape)} (shape {_fmt_shape(shape)}), expected 2 (N, dim)")
    if shape[1] != manifest.embedding_dim:
        raise ModelDirError(
            f"{label} has shape {_fmt_shape(shape)}, but manifest.json embedding.dim is "
            f"{manifest.embedding_dim} (the width must be static and equal)")
