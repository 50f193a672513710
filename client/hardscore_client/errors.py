"""Errors of the client's functions; the ``hardscore`` command maps them to exit codes."""

from __future__ import annotations


class WorkflowError(Exception):
    """A data-set function cannot go on; the message says why. Base of the others."""

    exit_code: int = 1
    """Exit status of the ``hardscore`` command when this error ends it."""


class InputError(WorkflowError, ValueError):
    """Bad input: a table of an unknown format or with the wrong columns, labels that are not
    the model's classes, servers serving different classes."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A folder, table or list file that does not exist."""


class ServerUnavailableError(WorkflowError):
    """No server answered."""


class ConnectionFailed(ServerUnavailableError):
    """The first connection to a server did not come up within the client's connect_timeout.

    The message is one line naming the address, the likely cause and the fix; ``cause`` is a
    token for programs: resolve, refused, timeout, connect, http1, tls_required, not_tls,
    untrusted, hostname, client_certificate, tls, unknown.
    """

    exit_code = 3

    def __init__(self, message: str, target: str = "", cause: str = "unknown") -> None:
        super().__init__(message)
        self.target = target
        self.cause = cause


class MissingExtraError(WorkflowError):
    """An optional dependency (pyarrow, matplotlib) is not installed."""
