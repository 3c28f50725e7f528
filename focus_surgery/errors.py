"""One error family: everything focus-surgery refuses is a ``FocusSurgeryError`` (a ``ValueError``).

This module imports nothing from the package, so every floor (the loader included) may raise these.
The command line maps them to exit codes in ``report.py``: ``VerificationFailed`` 1, the others 2.
"""

from __future__ import annotations

from typing import Any


class FocusSurgeryError(ValueError):
    """Base of every error the package raises on purpose; the message is one line naming the file and the fix."""


class CheckpointError(FocusSurgeryError):
    """A file that is not a loadable checkpoint (missing, corrupt, hostile, of an unknown kind)."""


class ConversionError(FocusSurgeryError):
    """A conversion that would not be exact or is not possible for this input; nothing is changed or written."""


class VerificationFailed(FocusSurgeryError):
    """The float64 check of a conversion or of ``verify`` did not pass; nothing was written (exit code 1).

    Attributes:
        report (Any): The typed report of what was measured (``ConvertReport``, ``OnnxReport``, ...), or None.
    """

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


__all__ = ["CheckpointError", "ConversionError", "FocusSurgeryError", "VerificationFailed"]
