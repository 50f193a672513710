"""The one table from a request's failure to what each transport answers.

Domain errors state their meaning once (``pipeline.errors.Failure``); this module turns that
meaning into a gRPC status code and an HTTP status, so hardscore.v1, the Open Inference
Protocol over gRPC and over REST answer the same error alike. An exception that is not a
``RequestError`` is unexpected: INTERNAL / 500, and the transport logs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from hardscore_server.pipeline.errors import Failure, RequestError

GRPC_CODE: dict[Failure, grpc.StatusCode] = {
    Failure.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Failure.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Failure.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Failure.TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Failure.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
}
"""gRPC status code of each failure (the codes Triton answers on its gRPC port)."""

HTTP_STATUS: dict[Failure, int] = {
    Failure.INVALID: 400,
    Failure.NOT_FOUND: 404,
    Failure.OVERLOADED: 503,
    Failure.TIMED_OUT: 504,
    Failure.FORBIDDEN: 403,
}
"""HTTP status of each failure (Triton's on its REST port: 503 asks the client to come back)."""

HTTP_CODE_NAMES: dict[int, str] = {
    200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 500: "INTERNAL",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
"""The gRPC code name an HTTP status is counted under in ``hardscore_requests_total``."""


@dataclass(frozen=True)
class Answer:
    """How every transport answers one failed request."""

    grpc_code: grpc.StatusCode
    http_status: int
    detail: str
    """The message for the caller: the error's own text, or "internal error: ..." when
    unexpected."""
    expected: bool
    """False for an unexpected error (INTERNAL / 500): the transport logs its traceback."""


def failure_of(exc: BaseException) -> Failure | None:
    """What ``exc`` means to the caller; None for an unexpected error."""
    return exc.failure if isinstance(exc, RequestError) else None


def answer_to(exc: BaseException) -> Answer:
    """The gRPC code, HTTP status and message ``exc`` is answered with."""
    failure = failure_of(exc)
    if failure is None:
        return Answer(grpc.StatusCode.INTERNAL, 500,
                      f"internal error: {type(exc).__name__}: {exc}", expected=False)
    return Answer(GRPC_CODE[failure], HTTP_STATUS[failure], str(exc), expected=True)


def http_code_name(status: int) -> str:
    """The gRPC code name an HTTP reply is counted under (the number itself when unknown)."""
    return HTTP_CODE_NAMES.get(status, str(status))
