"""Errors of the client's functions; the ``hardscore`` command maps them to exit codes (the
table in docs/api.md: 0 done, 1 error, 2 bad usage, 3 cannot reach the server, and the codes
below)."""

from __future__ import annotations

EXIT_PARTIAL = 4
"""Exit status of score-dir / score-images when some images were scored and others skipped."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""
EXIT_BROKEN_PIPE = 141
"""Exit status, without a message, when the reader of stdout went away (``| head``): 128 +
SIGPIPE, as shells report it for tools that SIGPIPE ends."""


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
