"""Errors of a request as a whole, raised by the domain code and mapped to a status by servicers.

Per-sample problems are not errors of the request: see ``preprocess.SampleError``. The batcher
raises its own (QueueFull, DeadlineExpired).
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The request as a whole cannot be scored (INVALID_ARGUMENT); the message names the field."""


class NotFound(LookupError):
    """What the request names does not exist here (NOT_FOUND; HTTP 404)."""


class UnknownModel(NotFound):
    """The request names a model this server does not serve (NOT_FOUND)."""
