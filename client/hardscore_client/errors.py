"""Errors of the data-set functions; the ``hardscore`` command maps them to exit codes."""

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


class MissingExtraError(WorkflowError):
    """An optional dependency (pyarrow, matplotlib) is not installed."""
