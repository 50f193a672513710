"""The ``export`` extra (torch, torchvision, onnx), imported on first use, and the error that
every ``hardscore-export`` step raises.

The server must not need the extra: nothing here imports it at module level, and a missing
package becomes an :class:`ExportError` whose message says what to install.
"""

from __future__ import annotations

from typing import Any

MISSING_EXTRA = "hardscore-export needs the 'export' extra: pip install 'hardscore[export]'"


class ExportError(RuntimeError):
    """The export cannot proceed or its result failed a check; the message says why."""


def import_torch() -> Any:
    """The ``torch`` module; :class:`ExportError` (``MISSING_EXTRA``) if it is not installed."""
    try:
        import torch
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return torch


def import_torchvision() -> Any:
    """The ``torchvision`` module (torch checked first); :class:`ExportError` if missing."""
    import_torch()
    try:
        import torchvision
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return torchvision


def import_onnx() -> Any:
    """The ``onnx`` module; :class:`ExportError` (``MISSING_EXTRA``) if it is not installed."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(MISSING_EXTRA) from exc
    return onnx
