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


class ReplyTooLarge(InvalidRequest):
    """The reply to a request would not fit in the message limit (INVALID_ARGUMENT)."""


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


class DecodeBudgetExceeded(Exception):
    """The request's images need more decode memory than the server grants (RESOURCE_EXHAUSTED):
    more than the whole budget at once, or the budget stayed busy past the wait limit."""
