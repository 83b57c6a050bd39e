"""The worker's error base: the errors a user's input or setup can cause, shown as one line."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of the worker's user-facing errors."""


class CliError(WorkerError):
    """An error to show the user as one line, without a traceback."""
