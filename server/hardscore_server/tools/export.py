"""``hardscore-export``: turn a PyTorch classifier into a hardscore model directory.

This module is the command line and the order of the steps; each step has its module:
build the model (:mod:`.torch_models`: torchvision ResNet50 in the ImageNet or CIFAR layout,
or any ``torch.nn.Module`` through :func:`export_model`), load the checkpoint
(:mod:`.checkpoints`), export to ONNX with a dynamic batch axis (:mod:`.onnx_export`: input
``images`` [N, C, H, W] float32, outputs ``logits`` [N, classes] and ``embedding`` [N, D]
float32, the input of the model's final ``Linear`` flattened: the pooled features, 2048 for
ResNet50), check ONNX Runtime against PyTorch on seeded random inputs (:mod:`.parity`: batch 1
and 4, max abs difference <= 1e-3 on the logits, <= 1e-3 of the scale on the embeddings), then
write ``model.onnx`` and ``manifest.json`` (:mod:`.model_dir_writer`; its ``embedding`` key
names the output and D). With ``--fp16`` the model written is the float16 conversion
(:mod:`.fp16`; float32 inputs and outputs), checked against the float32 export within
FP16_TOLERANCE. Nothing is written to the output directory unless every step passes.

torch, torchvision and onnx are imported inside functions: they are the ``export`` extra and
the server must not need them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardscore_server.model.model_dir import (
    MODEL_FILE,
    RESIZE_EXACT,
    RESIZE_RULES,
    ModelDirError,
    ModelManifest,
    check_io,
    validate_manifest,
)
from hardscore_server.tools.checkpoints import (
    apply_state_dict,
    checkpoint_num_classes,
    load_state_dict_file,
    sha256_file,
)
from hardscore_server.tools.export_extra import ExportError, import_onnx, import_torch
from hardscore_server.tools.model_dir_writer import (
    export_provenance,
    new_manifest,
    with_provenance,
    write_model_dir,
)
from hardscore_server.tools.onnx_export import (
    DEFAULT_OPSET,
    example_input,
    export_onnx,
    save_float16,
)
from hardscore_server.tools.parity import (
    FP16_TOLERANCE,
    PARITY_TOLERANCE,
    Fp16Parity,
    check_fp16_parity,
    check_parity,
    ort_session,
)
from hardscore_server.tools.torch_models import (
    CIFAR_MAXPOOL_CHOICES,
    LAYOUT_DEFAULTS,
    LAYOUTS,
    build_resnet50,
    classifier_head,
    with_embedding,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ExportResult:
    """Outcome of a successful export: the written directory, its manifest, and the parity
    check's max |ONNX Runtime - PyTorch| over all logits (logit units)."""

    model_dir: Path
    manifest: ModelManifest
    parity_max_abs_diff: float
    fp16_parity_max_abs_diff: float | None = None
    """``--fp16`` only: max |float16 - float32 export| over all logits (logit units)."""
    embedding_parity_max_abs_diff: float | None = None
    """Max |ONNX Runtime - PyTorch| over all embedding values; None without an embedding."""
    fp16_embedding_parity_max_abs_diff: float | None = None
    """``--fp16`` with an embedding: max |float16 - float32 export| over all embedding values."""


# --------------------------------------------------------------------------- export


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
    embedding: bool = True,
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
    With ``embedding`` (the default) and a model that has a final ``Linear`` layer
    (:func:`~hardscore_server.tools.torch_models.classifier_head`), its input is exported as
    the second output ``embedding`` [N, D] and recorded in the manifest; a model without one
    is exported without embeddings (logged).
    """
    torch = import_torch()
    import_onnx()
    model = model.eval()
    head = classifier_head(model) if embedding else None
    if embedding and head is None:
        log("no final Linear layer found: exporting without the embedding output")
    embedding_dim = int(getattr(head, "in_features", 0)) if head is not None else 0
    manifest = new_manifest(
        name=name, version=version, class_names=class_names, input_size=input_size, mean=mean,
        std=std, resize=resize, input_channels=input_channels, temperature=temperature,
        random_weights=random_weights,
        provenance=export_provenance(type(model).__name__, provenance, str(torch.__version__)),
        embedding_dim=embedding_dim,
    )
    validate_manifest(manifest)  # fail before the slow part

    input_shape = (input_channels, manifest.input_height, manifest.input_width)
    example = example_input(model, input_shape, len(manifest.class_names))
    wrapped: Any = with_embedding(model, head) if head is not None else None
    try:
        if wrapped is not None:
            _check_embedding_shape(wrapped, example, embedding_dim)
        return _export_checked(
            wrapped or model, example, Path(out_dir), manifest, input_shape,
            opset=opset, parity_tolerance=parity_tolerance, seed=seed, log=log, fp16=fp16)
    finally:
        if wrapped is not None:
            wrapped.remove()


def _check_embedding_shape(wrapped: Any, example: Any, dim: int) -> None:
    """Refuses a classifier layer whose input is not [N, in_features] once flattened."""
    torch = import_torch()
    with torch.no_grad():
        _, features = wrapped(example)
    if list(features.shape) != [example.shape[0], dim]:
        raise ExportError(
            f"the embedding (the final Linear layer's input, flattened) has shape "
            f"{list(features.shape)}, expected [N, {dim}]; export with embedding=False")


def _export_checked(
    model: Any, example: Any, out_dir: Path, manifest: ModelManifest,
    input_shape: tuple[int, int, int], *, opset: int, parity_tolerance: float, seed: int,
    log: Any, fp16: bool,
) -> ExportResult:
    """torch -> ONNX in a temporary directory, the checks, then the model directory."""
    embedding = manifest.has_embedding
    with tempfile.TemporaryDirectory(prefix="hardscore-export-") as tmp:
        exported = export_onnx(model, example, Path(tmp), opset=opset, name=manifest.name,
                               version=manifest.version, embedding=embedding)
        session = ort_session(exported.path)
        check_io(manifest, session.get_inputs(), session.get_outputs())
        diff, emb_diff = check_parity(
            model, session, input_shape, tolerance=parity_tolerance, seed=seed, log=log,
            embedding=embedding)
        record = {"exporter": exported.exporter, "onnx_opset": str(exported.opset),
                  "parity_max_abs_diff": f"{diff:.3e}"}
        if emb_diff is not None:
            record["embedding_parity_max_abs_diff"] = f"{emb_diff:.3e}"
        manifest = with_provenance(manifest, record)
        model_path, fp16_parity = exported.path, None
        if fp16:
            model_path, fp16_parity, fp16_record = _float16_model(
                exported.proto, session, Path(tmp), manifest, input_shape, seed, log)
            manifest = with_provenance(manifest, fp16_record)
        write_model_dir(out_dir, model_path, manifest)
    log(f"wrote {out_dir / MODEL_FILE} ({(out_dir / MODEL_FILE).stat().st_size} bytes)")
    return ExportResult(
        model_dir=out_dir, manifest=manifest, parity_max_abs_diff=diff,
        fp16_parity_max_abs_diff=None if fp16_parity is None else fp16_parity.worst,
        embedding_parity_max_abs_diff=emb_diff,
        fp16_embedding_parity_max_abs_diff=(
            None if fp16_parity is None else fp16_parity.embedding_worst))


def _float16_model(
    proto: Any, session32: Any, tmp: Path, manifest: ModelManifest,
    input_shape: tuple[int, int, int], seed: int, log: Any,
) -> tuple[Path, Fp16Parity, dict[str, str]]:
    """Writes the float16 conversion of ``proto`` to ``tmp``, checks it against the float32
    session (:func:`~hardscore_server.tools.parity.check_fp16_parity`, the embedding output
    too); returns its path, the parity and what the manifest records. Raises ExportError
    beyond FP16_TOLERANCE."""
    path = save_float16(proto, tmp)
    session16 = ort_session(path)
    check_io(manifest, session16.get_inputs(), session16.get_outputs())
    parity = check_fp16_parity(session32, session16, input_shape, seed=seed, log=log,
                               embedding=manifest.has_embedding)
    record = {
        "precision": "float16",
        "fp16_parity_max_abs_diff": f"{parity.worst:.3e}",
        "fp16_parity_tolerance": f"{parity.tolerance:.3e}",
    }
    if parity.embedding_worst is not None and parity.embedding_tolerance is not None:
        record["fp16_embedding_parity_max_abs_diff"] = f"{parity.embedding_worst:.3e}"
        record["fp16_embedding_parity_tolerance"] = f"{parity.embedding_tolerance:.3e}"
    return path, parity, record


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
        # argparse %-formats help strings: the percent sign is written "%%".
        help="write a float16 model (float32 inputs and outputs), checked against the float32 "
        f"export within {FP16_TOLERANCE * 100:g}%% of the logit scale",
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


def _weights_from_args(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The checkpoint's state dict (None for ``--random-weights``) and the provenance that
    records the architecture, layout and where the weights came from."""
    state_dict = None
    provenance = {"arch": args.arch, "layout": args.layout}
    if args.layout == "cifar":
        provenance["cifar_maxpool"] = args.cifar_maxpool
    if args.checkpoint is not None:
        state_dict = load_state_dict_file(args.checkpoint)
        provenance["checkpoint"] = Path(args.checkpoint).name
        provenance["checkpoint_sha256"] = sha256_file(args.checkpoint)
    else:
        provenance["checkpoint"] = "random"
        provenance["random_seed"] = str(args.seed)
    return state_dict, provenance


def _num_classes(
    args: argparse.Namespace, class_names: list[str] | None,
    state_dict: Mapping[str, Any] | None,
) -> int:
    """``--num-classes``, else the number of class names, else the checkpoint's classifier
    rows, else the layout's default."""
    if args.num_classes is not None:
        return int(args.num_classes)
    if class_names is not None:
        return len(class_names)
    from_checkpoint = checkpoint_num_classes(state_dict) if state_dict is not None else None
    if from_checkpoint is not None:
        return from_checkpoint
    return int(LAYOUT_DEFAULTS[args.layout]["num_classes"])


def export_resnet50(args: argparse.Namespace, log: Any = print) -> ExportResult:
    """Run the ``hardscore-export`` pipeline for parsed ``args`` (see
    :func:`add_export_arguments`)."""
    torch = import_torch()
    defaults = LAYOUT_DEFAULTS[args.layout]
    if args.checkpoint is None and not args.random_weights:
        raise ExportError(
            "no weights: pass --checkpoint FILE, or --random-weights to export seeded random "
            "weights for benchmarking (its scores are meaningless)"
        )
    class_names = _class_names_from_args(args)
    state_dict, provenance = _weights_from_args(args)
    num_classes = _num_classes(args, class_names, state_dict)
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(
            f"{len(class_names)} class names given but --num-classes is {num_classes}"
        )

    torch.manual_seed(args.seed)
    model = build_resnet50(args.layout, num_classes, cifar_maxpool=args.cifar_maxpool)
    if state_dict is not None:
        apply_state_dict(model, state_dict, source=f"checkpoint {Path(args.checkpoint).name}")

    input_size = tuple(args.input_size) if args.input_size else defaults["input_size"]
    return export_model(
        model,
        args.out,
        name=args.name or f"{args.arch}-{args.layout}",
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
