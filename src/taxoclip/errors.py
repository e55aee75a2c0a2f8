"""Errors a user can act on. Front ends print their message as one line, without a traceback."""
from __future__ import annotations

__all__ = ["TaxoclipError", "InputError"]


class TaxoclipError(Exception):
    """Base of every error caused by input, configuration or the environment (not a bug)."""


class InputError(TaxoclipError, ValueError):
    """An input that cannot be used: a missing or unreadable file, a bad column, an empty folder."""
