"""Errors a user can cause. The CLI prints them as one line and exits with ``exit_code``."""

from __future__ import annotations


class HwbenchError(Exception):
    """Base of every user-facing error: bad input, missing hardware, unreadable files."""

    exit_code: int = 2


class UsageError(HwbenchError):
    """An argument or option value that cannot be used (exit code 2)."""


class PatternError(HwbenchError):
    """A gate-pattern file that cannot be used; names the file and the offending field."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source, self.field = source, field
        where = f"{source}: field '{field}'" if field else str(source)
        super().__init__(f"{where}: {message}")
