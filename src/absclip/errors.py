"""User-facing errors.

An :class:`AbsclipError` carries one sentence that says what went wrong and how to fix it. The
CLI prints it without a traceback and exits with code 2; library callers can catch it."""

from __future__ import annotations


class AbsclipError(Exception):
    """A problem with the user's input (files, names, settings), explained in one sentence."""


class WeightsUnavailableError(AbsclipError):
    """Model weights could not be obtained (no network, missing file, unknown tag)."""


class BadImageError(AbsclipError):
    """An image file could not be read or decoded."""
