"""The model directory ``hardscore-export`` writes: the manifest's fields, its provenance
(what the caller gives plus torch version and export date, UTC YYYY-MM-DD; later the exporter,
opset and parity differences in logit units), then ``model.onnx`` and ``manifest.json``.

The manifest format and its reader are :mod:`hardscore_server.model.model_dir`; nothing here
imports torch.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from hardscore_server.model.model_dir import MODEL_FILE, ModelManifest, write_manifest
from hardscore_server.tools.onnx_export import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME


def export_provenance(
    arch: str, provenance: Mapping[str, str] | None, torch_version: str
) -> dict[str, str]:
    """``{"arch": arch}`` updated with ``provenance`` (values as strings), then the torch
    version and today's date (UTC), in that order."""
    record: dict[str, str] = {"arch": arch}
    record.update({str(k): str(v) for k, v in (provenance or {}).items()})
    record.update(
        {
            "torch_version": torch_version,
            "export_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        }
    )
    return record


def new_manifest(
    *,
    name: str,
    version: str,
    class_names: Sequence[str],
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: str,
    input_channels: int,
    temperature: float,
    random_weights: bool,
    provenance: Mapping[str, str],
    embedding_dim: int = 0,
) -> ModelManifest:
    """The manifest of an exported model (not validated yet): ``input_size`` is (height, width)
    in pixels, ``mean``/``std`` one value per channel in pixel/255 units; ``embedding_dim`` > 0
    records the ``embedding`` output of that width (0: none)."""
    height, width = (int(v) for v in input_size)
    return ModelManifest(
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
        provenance=dict(provenance),
        embedding_name=EMBEDDING_NAME if embedding_dim else None,
        embedding_dim=embedding_dim,
    )


def with_provenance(manifest: ModelManifest, extra: Mapping[str, str]) -> ModelManifest:
    """``manifest`` with ``extra`` added to (or replacing entries of) its provenance."""
    return replace(manifest, provenance={**manifest.provenance, **extra})


def write_model_dir(out_dir: Path, model_path: Path, manifest: ModelManifest) -> None:
    """Create ``out_dir`` if needed and write ``model.onnx`` (a copy of ``model_path``) and
    ``manifest.json`` there, replacing existing ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, out_dir / MODEL_FILE)
    write_manifest(out_dir, manifest)
