"""Errors of a request as a whole, raised by the domain code; each states its meaning once.

Every error a caller can cause is a ``RequestError`` whose ``failure`` says what it means to the
caller, whatever the transport; ``transport.statuses`` is the one table that turns a
``Failure`` into a gRPC status code and an HTTP status. A new error subclasses one of these (or
``RequestError`` with its own ``failure``) and every transport answers it alike. Per-sample
problems are not errors of the request: see ``preprocess.SampleError``.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Failure(enum.Enum):
    """What a failed request means to its caller."""

    INVALID = "the request cannot be served as sent: the caller must change it"
    NOT_FOUND = "what the request names does not exist here"
    OVERLOADED = "the server cannot take the request now: retry later, or elsewhere"
    TIMED_OUT = "the request's deadline passed before it was done: not computed"
    FORBIDDEN = "the caller's credentials do not allow this request"


class RequestError(Exception):
    """An error of one request as a whole; ``failure`` says what it means to the caller."""

    failure: ClassVar[Failure]


class InvalidRequest(RequestError, ValueError):
    """The request as a whole cannot be scored; the message names the field."""

    failure = Failure.INVALID


class NotFound(RequestError, LookupError):
    """What the request names does not exist here."""

    failure = Failure.NOT_FOUND


class UnknownModel(NotFound):
    """The request names a model this server does not serve."""


class ControlDenied(RequestError):
    """A model repository load or unload without an accepted control token (PERMISSION_DENIED
    / 403): inference tokens do not allow it."""

    failure = Failure.FORBIDDEN


class ModelLoadFailed(InvalidRequest):
    """A model repository load or unload was refused or failed; the message says why (a file
    missing, a wrong class count, a limit, the control mode). The versions serving before it
    serve on (INVALID_ARGUMENT / 400, as Triton answers a failed load)."""


class NoEmbeddings(InvalidRequest):
    """The request asks for embeddings and the served model has no embedding output
    (INVALID_ARGUMENT / 400: the caller must stop asking, or the model be re-exported)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {model!r} has no embedding output (its manifest.json has no 'embedding' "
            "key): re-export it with hardscore-export, which writes the 'embedding' output, "
            "or do not ask for embeddings")


class ReplyTooLarge(InvalidRequest):
    """The reply to a request would not fit in the message limit."""


def check_reply_fits(
    reply: int, limit: int, rows: int, stream_rpc: str | None, unit: str = "rows",
    smaller: str = "chunks",
) -> None:
    """Raises ReplyTooLarge unless a reply of ``reply`` bytes fits in ``limit`` bytes.

    The message says about how many of the ``rows`` (counted in ``unit``) would fit, and names
    ``stream_rpc``, the streaming RPC to send them with, or (None) asks for smaller ``smaller``
    (a stream's chunks, or requests where there is no stream).
    """
    if reply <= limit:
        return
    fit = max(1, rows * limit // reply)
    where = (f"send at most about {fit} {unit} per chunk with {stream_rpc}" if stream_rpc
             else f"send smaller {smaller} (at most about {fit} {unit} each)")
    raise ReplyTooLarge(
        f"the reply to these {rows} {unit} would be {reply} bytes, more than the server's "
        f"max_message_bytes ({limit}); {where}")


class DecodeBudgetExceeded(RequestError):
    """The request's images need more decode memory than the server grants now: more than the
    whole budget at once, or the budget stayed busy past the wait limit."""

    failure = Failure.OVERLOADED


class RequestBudgetBusy(RequestError):
    """The request's message does not fit the server's request budget now: too many bytes of
    other requests are in progress or waiting (``request_budget``)."""

    failure = Failure.OVERLOADED


class MessageReadTimeout(RequestBudgetBusy):
    """A request message did not arrive within the read timeout while it held one of the
    server's read slots (``message_read_timeout_s``): a slow sender holds a slot no longer."""


class QueueFull(RequestError):
    """The batcher's queue cannot take the request now."""

    failure = Failure.OVERLOADED


class ShuttingDown(QueueFull):
    """The batcher is draining and accepts nothing new."""


class DeadlineExpired(RequestError):
    """The request's deadline passed before it was computed."""

    failure = Failure.TIMED_OUT
