"""Every domain error walked through both transports' one table (transport/statuses.py): each
``RequestError`` states its meaning once, and the gRPC code and HTTP status follow from it."""

from __future__ import annotations

import grpc
import pytest

# Imported for the errors they define (every RequestError subclass must be seen below).
import hardscore_server.pipeline.image_pipeline
import hardscore_server.transport.call_gate
from hardscore_server.pipeline.errors import (
    DeadlineExpired,
    DecodeBudgetExceeded,
    Failure,
    InvalidRequest,
    NotFound,
    QueueFull,
    ReplyTooLarge,
    RequestError,
    ShuttingDown,
    UnknownModel,
)
from hardscore_server.transport.statuses import GRPC_CODE, HTTP_STATUS, answer_to

DEFINED_IN = (hardscore_server.pipeline.image_pipeline, hardscore_server.transport.call_gate)


def every_request_error() -> list[type[RequestError]]:
    found: list[type[RequestError]] = []
    todo = [RequestError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return sorted(found, key=lambda kind: kind.__qualname__)


ERRORS = every_request_error()

PINNED = {  # what the docs promise (docs/inference-protocol.md, api.md): gRPC code, HTTP status
    InvalidRequest: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ReplyTooLarge: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    UnknownModel: (grpc.StatusCode.NOT_FOUND, 404),
    QueueFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    ShuttingDown: (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    DecodeBudgetExceeded: (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),  # REST said 500
    DeadlineExpired: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
}


def test_the_walk_sees_every_error_the_server_defines() -> None:
    names = {kind.__name__ for kind in ERRORS}
    assert set(PINNED) <= set(ERRORS)
    assert {"SampleFailed", "UnparseableMessage"} <= names
    assert len(DEFINED_IN) == 2


def test_every_failure_has_a_grpc_code_and_an_http_status() -> None:
    assert set(GRPC_CODE) == set(Failure) == set(HTTP_STATUS)
    assert len(set(HTTP_STATUS.values())) == len(Failure)  # no two meanings answered alike


@pytest.mark.parametrize("kind", ERRORS, ids=lambda kind: kind.__name__)
def test_each_domain_error_is_answered_alike_by_both_transports(
    kind: type[RequestError],
) -> None:
    exc = kind.__new__(kind)
    Exception.__init__(exc, f"a {kind.__name__} message")
    answer = answer_to(exc)
    assert answer.expected
    assert answer.detail == f"a {kind.__name__} message"
    assert isinstance(kind.failure, Failure)
    assert answer.grpc_code == GRPC_CODE[kind.failure]
    assert answer.http_status == HTTP_STATUS[kind.failure]
    if kind in PINNED:
        assert (answer.grpc_code, answer.http_status) == PINNED[kind]


def test_an_unexpected_error_is_internal_and_says_so() -> None:
    answer = answer_to(KeyError("boom"))
    assert not answer.expected
    assert (answer.grpc_code, answer.http_status) == (grpc.StatusCode.INTERNAL, 500)
    assert answer.detail == "internal error: KeyError: 'boom'"
