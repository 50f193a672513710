"""Errors of a request as a whole, raised by the domain code and mapped to a status by servicers.

Per-sample problems are not errors of the request: see ``preprocess.SampleError``. The batcher
raises its own (QueueFull, DeadlineExpired).
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The request as a whole cannot be scored (INVALID_ARGUMENT); the message names the field."""


class UnknownModel(LookupError):
    """The request names a model this server does not serve (NOT_FOUND)."""


class DecodeBudgetExceeded(Exception):
    """The request's images need more decode memory than the server grants (RESOURCE_EXHAUSTED):
    more than the whole budget at once, or the budget stayed busy past the wait limit."""
