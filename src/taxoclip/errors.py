"""Errors a user can act on. Front ends print their message as one line, without a traceback."""
from __future__ import annotations

__all__ = ["TaxoclipError", "InputError", "DiskFull"]


class TaxoclipError(Exception):
    """Base of every error caused by input, configuration or the environment (not a bug)."""


class InputError(TaxoclipError, ValueError):
    """An input that cannot be used: a missing or unreadable file, a bad column, an empty folder."""


class DiskFull(TaxoclipError):
    """The disk (or quota) filled while writing `path`; the message says what was kept and how to go on."""

    def __init__(self, path, kept: str, then: str = "free some space and re-run the same command"):
        super().__init__(f"no space left on the device writing {path}; kept: {kept}; {then}")
        self.path, self.kept = str(path), kept
