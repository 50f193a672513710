"""Checkpoints for ``hardscore-export``: read a PyTorch state-dict file, hash it, and load it
into a model, naming every missing, unexpected or mis-shaped tensor when it does not fit.

torch is imported inside the functions (the ``export`` extra).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardscore_server.tools.export_extra import ExportError, import_torch

if TYPE_CHECKING:
    import torch

# Wrappers that prefix parameter names: DataParallel/DDP ("module."), Lightning modules holding
# the network as self.model / self.net ("model.", "net."), torch.compile ("_orig_mod.").
_STRIPPABLE_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


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
    torch = import_torch()
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
    torch = import_torch()
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


def checkpoint_num_classes(state_dict: Mapping[str, Any]) -> int | None:
    """Rows of the classifier's ``fc.weight`` (any wrapper prefix), or None without one."""
    for key, value in state_dict.items():
        if re.fullmatch(r"(.*\.)?fc\.weight", key) and getattr(value, "ndim", 0) == 2:
            return int(value.shape[0])
    return None
