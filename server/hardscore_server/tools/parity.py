"""Parity checks of an exported model on ONNX Runtime's CPU provider, on seeded standard-normal
inputs at each of PARITY_BATCH_SIZES (which also exercises the dynamic batch axis).

ONNX vs PyTorch: max |difference| over all logits must be <= PARITY_TOLERANCE (1e-3, logit
units). ``--fp16``, float16 vs float32 ONNX model: <= FP16_TOLERANCE (1e-2) times the float32
logits' largest magnitude (at least 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardscore_server.tools.export_extra import ExportError, import_torch
from hardscore_server.tools.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

PARITY_TOLERANCE = 1e-3
"""Max allowed |ONNX Runtime - PyTorch| over all logits of the parity check."""
PARITY_BATCH_SIZES = (1, 4)
FP16_TOLERANCE = 1e-2
"""``--fp16``: max allowed |float16 model - float32 model| over all logits, as a fraction of
the float32 logits' largest magnitude (at least 1): 1% of the logit scale."""


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session for the model file ``path``, logging errors only."""
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
    torch = import_torch()
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


def check_parity(
    model: torch.nn.Module, session: Any, input_shape: tuple[int, int, int], *,
    tolerance: float, seed: int, log: Callable[[str], Any],
) -> float:
    """:func:`parity_check` at PARITY_BATCH_SIZES, logged; :class:`ExportError` above
    ``tolerance``. Returns the max abs difference (logit units)."""
    diff = parity_check(model, session, input_shape, seed=seed)
    log(
        f"parity ONNX Runtime vs PyTorch (batch sizes "
        f"{', '.join(str(b) for b in PARITY_BATCH_SIZES)}): max abs diff {diff:.3e} "
        f"(tolerance {tolerance:.0e})"
    )
    if diff > tolerance:
        raise ExportError(
            f"parity check failed: max abs difference {diff:.3e} between ONNX Runtime and "
            f"PyTorch exceeds {tolerance:.0e}; nothing was written"
        )
    return diff


def check_fp16_parity(
    session32: Any, session16: Any, input_shape: tuple[int, int, int], *, seed: int,
    log: Callable[[str], Any],
) -> tuple[float, float]:
    """The float16 session against the float32 one on the inputs of :func:`parity_check`,
    logged; :class:`ExportError` beyond FP16_TOLERANCE x the logit scale or for non-float32 or
    non-finite logits. Returns (max abs difference, tolerance applied), logit units."""
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
    return worst, tolerance
