"""Parity checks of an exported model on ONNX Runtime's CPU provider, on seeded standard-normal
inputs at each of PARITY_BATCH_SIZES (which also exercises the dynamic batch axis).

ONNX vs PyTorch: max |difference| over all logits must be <= PARITY_TOLERANCE (1e-3, logit
units); over all embedding values (a model exported with its ``embedding`` output) <=
EMBEDDING_PARITY_TOLERANCE (1e-3) times the PyTorch embeddings' largest magnitude (at least 1).
``--fp16``, float16 vs float32 ONNX model: <= FP16_TOLERANCE (1e-2) times the float32 output's
largest magnitude (at least 1), for the logits and for the embeddings alike.

Why the embeddings' tolerances are relative: embeddings are activations, not logits; their
scale depends on the model and its weights (the pooled features of a random-weights ResNet50
reach the tens), and float32 (and float16) rounding errors grow with the values' magnitude.
1e-3 of the scale is about 8000 float32 ulps: far above reordered-sum noise, far below a
wrong tensor. 1e-2 of the scale is about 10 float16 ulps (2^-10 relative): what float16
weights and activations through ~50 layers give, as for the logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardscore_server.tools.export_extra import ExportError, import_torch
from hardscore_server.tools.onnx_export import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

PARITY_TOLERANCE = 1e-3
"""Max allowed |ONNX Runtime - PyTorch| over all logits of the parity check."""
EMBEDDING_PARITY_TOLERANCE = 1e-3
"""Max allowed |ONNX Runtime - PyTorch| over all embedding values, as a fraction of the
PyTorch embeddings' largest magnitude (at least 1)."""
PARITY_BATCH_SIZES = (1, 4)
FP16_TOLERANCE = 1e-2
"""``--fp16``: max allowed |float16 model - float32 model| over all logits (and embedding
values), as a fraction of the float32 output's largest magnitude (at least 1): 1% of the
scale."""


@dataclass(frozen=True)
class OutputParity:
    """One output's parity: max |difference| and the reference's largest magnitude (>= 1)."""

    worst: float
    scale: float


@dataclass(frozen=True)
class Fp16Parity:
    """``--fp16`` parity: the logits' max |difference| and tolerance applied, and the same for
    the embeddings (None for a model without them), in the output's units."""

    worst: float
    tolerance: float
    embedding_worst: float | None = None
    embedding_tolerance: float | None = None


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session for the model file ``path``, logging errors only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _compare(got: np.ndarray, want: np.ndarray, what: str, n: int) -> OutputParity:
    if got.shape != want.shape:
        raise ExportError(
            f"parity check: ONNX Runtime {what} shape {list(got.shape)} != PyTorch "
            f"{list(want.shape)} at batch size {n}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if not np.isfinite(diff):
        raise ExportError(f"parity check: non-finite {what} at batch size {n}")
    return OutputParity(diff, max(1.0, float(np.max(np.abs(want)))))


def _worse(a: OutputParity | None, b: OutputParity) -> OutputParity:
    return b if a is None else OutputParity(max(a.worst, b.worst), max(a.scale, b.scale))


def parity_check(
    model: torch.nn.Module,
    session: Any,
    input_shape: tuple[int, int, int],
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    seed: int = 0,
    embedding: bool = False,
) -> tuple[float, OutputParity | None]:
    """Max |ONNX Runtime - PyTorch| over all logits, on standard-normal inputs drawn with
    ``seed`` at each batch size (also checks the dynamic batch axis); with ``embedding``
    (``model`` returns (logits, embedding)) also the embeddings' parity, else None."""
    torch = import_torch()
    rng = np.random.default_rng(seed)
    worst = 0.0
    emb: OutputParity | None = None
    names = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    for n in batch_sizes:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        expected = [t.detach().cpu().numpy() for t in (out if embedding else (out,))]
        got = session.run(names, {INPUT_NAME: x})
        worst = max(worst, _compare(got[0], expected[0], "logits", n).worst)
        if embedding:
            emb = _worse(emb, _compare(got[1], expected[1], "embedding", n))
    return worst, emb


def check_parity(
    model: torch.nn.Module, session: Any, input_shape: tuple[int, int, int], *,
    tolerance: float, seed: int, log: Callable[[str], Any], embedding: bool = False,
) -> tuple[float, float | None]:
    """:func:`parity_check` at PARITY_BATCH_SIZES, logged; :class:`ExportError` above
    ``tolerance`` (logits) or EMBEDDING_PARITY_TOLERANCE x scale (embeddings). Returns the
    max abs differences of the logits and (with ``embedding``, else None) the embeddings."""
    diff, emb = parity_check(model, session, input_shape, seed=seed, embedding=embedding)
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
    if emb is None:
        return diff, None
    emb_tolerance = EMBEDDING_PARITY_TOLERANCE * emb.scale
    log(f"parity of the embedding output: max abs diff {emb.worst:.3e} (tolerance "
        f"{EMBEDDING_PARITY_TOLERANCE:.0e} x embedding scale {emb.scale:.3g} = "
        f"{emb_tolerance:.3e})")
    if emb.worst > emb_tolerance:
        raise ExportError(
            f"parity check failed: max abs difference {emb.worst:.3e} between the ONNX Runtime "
            f"and PyTorch embeddings exceeds {emb_tolerance:.3e}; nothing was written")
    return diff, emb.worst


def check_fp16_parity(
    session32: Any, session16: Any, input_shape: tuple[int, int, int], *, seed: int,
    log: Callable[[str], Any], embedding: bool = False,
) -> Fp16Parity:
    """The float16 session against the float32 one on the inputs of :func:`parity_check`,
    logged; :class:`ExportError` beyond FP16_TOLERANCE x the output's scale or for non-float32
    or non-finite outputs (the logits, and with ``embedding`` the embeddings)."""
    rng = np.random.default_rng(seed)
    names = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    found: list[OutputParity | None] = [None] * len(names)
    for n in PARITY_BATCH_SIZES:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        wants = session32.run(names, {INPUT_NAME: x})
        gots = session16.run(names, {INPUT_NAME: x})
        for i, (name, want, got) in enumerate(zip(names, wants, gots, strict=True)):
            if got.dtype != np.float32 or not np.all(np.isfinite(got)):
                raise ExportError(f"fp16 parity: the float16 model gave {got.dtype} {name}, "
                                  f"finite: {bool(np.all(np.isfinite(got)))}")
            want = want.astype(np.float64)
            found[i] = _worse(found[i], OutputParity(
                float(np.max(np.abs(got - want))), max(1.0, float(np.max(np.abs(want))))))
    results: list[tuple[float, float]] = []
    for name, parity in zip(names, found, strict=True):
        assert parity is not None
        tolerance = FP16_TOLERANCE * parity.scale
        if name == OUTPUT_NAME:
            log(f"fp16 parity float16 vs float32 model on ONNX Runtime CPU: max abs diff "
                f"{parity.worst:.3e} (tolerance {FP16_TOLERANCE:.0e} x logit scale "
                f"{parity.scale:.3g} = {tolerance:.3e}); "
                "the CPU provider computes most float16 ops in float32 (float16 weights), "
                "CUDA/TensorRT in float16")
        else:
            log(f"fp16 parity of the {name} output: max abs diff {parity.worst:.3e} "
                f"(tolerance {FP16_TOLERANCE:.0e} x {name} scale {parity.scale:.3g} = "
                f"{tolerance:.3e})")
        if parity.worst > tolerance:
            raise ExportError(f"fp16 parity check failed: max abs difference {parity.worst:.3e} "
                              f"between the float16 and float32 models' {name} exceeds "
                              f"{tolerance:.3e}; nothing was written")
        results.append((parity.worst, tolerance))
    if embedding:
        return Fp16Parity(*results[0], *results[1])
    return Fp16Parity(*results[0])
