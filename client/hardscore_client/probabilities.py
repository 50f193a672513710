"""Predicted probabilities checked before they are sent, and renormalised where their precision
explains their row sums.

The server takes rows summing to 1 within PROBABILITY_SUM_TOLERANCE (1e-3) and scores them as
given. Probabilities stored in float16 (or float32 over thousands of classes) may be further
off than that from rounding alone: up to rounding_sum_tolerance of their dtype and class count
(2 * (C + 2) * eps, at most 0.05; float16 with 10 classes: 0.0234). Those are divided by their
row sums in float64 and sent as float64, with a ProbabilitiesRenormalisedWarning saying by how
much they were off.
Anything else that is not probabilities is refused here, before anything is sent, with the row
at fault and the fix (InputError).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hardscore_client.errors import InputError
from hardscore_wire.scores import (
    PROBABILITY_SUM_TOLERANCE,
    probabilities_problem,
    rounding_sum_tolerance,
)

AS_LOGITS = "score them with score_logits (CLI: --logits instead of --pred-probs)"
"""The fix offered for values far outside [0, 1]."""


class ProbabilitiesRenormalisedWarning(UserWarning):
    """Probabilities whose rows sum to 1 only within their dtype's rounding were divided by
    their row sums (in float64) before scoring; the message says by how much they were off."""


@dataclass(frozen=True)
class Renormalised:
    """What renormalising an array did: the dtype and classes it came in, its rows, how many
    of them were more than PROBABILITY_SUM_TOLERANCE off, the largest |row sum - 1| and the
    tolerance of that dtype."""

    dtype: str
    classes: int
    rows: int
    rows_off: int
    max_off: float
    tolerance: float

    @property
    def message(self) -> str:
        """One line: how far off the rows were, and what was done."""
        return (f"{self.dtype} probabilities of {self.classes} classes: {self.rows_off} of "
                f"{self.rows} rows sum to 1 only within {self.max_off:.3g} (largest |row sum - "
                f"1|; the server takes {PROBABILITY_SUM_TOLERANCE:g}, {self.dtype} rounding "
                f"explains up to {self.tolerance:.3g}): every row was divided by its sum in "
                "float64 before scoring")


def prepare_probabilities(
    probabilities: npt.ArrayLike, as_logits: str = AS_LOGITS,
) -> tuple[npt.NDArray[np.generic], Renormalised | None]:
    """The array to send for ``probabilities`` [N, C], and what renormalising did (None when
    it is sent as given).

    Rows within PROBABILITY_SUM_TOLERANCE of 1 are sent as given. Rows within the dtype's
    rounding_sum_tolerance are all divided by their sums in float64. Raises InputError naming
    the first row that is not probabilities (non-finite, outside [0, 1], off the sum), with
    ``as_logits`` as the fix for values far outside [0, 1]. Arrays that are not [N, C] with
    N, C >= 1 pass through for the server to refuse."""
    values = np.asarray(probabilities)
    if values.ndim != 2 or values.size == 0:
        return values, None
    tolerance = rounding_sum_tolerance(values.dtype, values.shape[1])
    problem = probabilities_problem(values, tolerance, as_logits=as_logits)
    if problem is not None:
        raise InputError(problem)
    sums = values.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0)
    if off.max() <= PROBABILITY_SUM_TOLERANCE:
        return values, None
    renormalised = values.astype(np.float64) / sums[:, None]
    return renormalised, Renormalised(
        dtype=str(values.dtype), classes=values.shape[1], rows=len(values),
        rows_off=int((off > PROBABILITY_SUM_TOLERANCE).sum()), max_off=float(off.max()),
        tolerance=tolerance)


def checked_probabilities(
    probabilities: npt.ArrayLike, stacklevel: int = 2,
) -> npt.NDArray[np.generic]:
    """prepare_probabilities' array; warns (ProbabilitiesRenormalisedWarning) when it was
    renormalised."""
    values, renormalised = prepare_probabilities(probabilities)
    if renormalised is not None:
        warnings.warn(renormalised.message, ProbabilitiesRenormalisedWarning,
                      stacklevel=stacklevel + 1)
    return values
