"""One progress-callback type shared by the CLI (progress bar), Slicer (progress bar, Cancel) and tests.

A callback receives ``(fraction, message)`` with ``fraction`` in [0, 1]. It may raise
:class:`~HCCTwinLib.errors.CancelledError` (or return ``False``) to cancel the running step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from .errors import CancelledError

ProgressCallback = Callable[[float, str], Optional[bool]]


def report(callback: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``callback`` if given; a ``False`` return value cancels."""
    if callback is None:
        return
    if callback(min(max(float(fraction), 0.0), 1.0), message) is False:
        raise CancelledError(f"Cancelled by the user during: {message}")


class SubProgress:
    """Maps the [0, 1] progress of a sub-step onto ``[start, end]`` of a parent callback."""

    def __init__(self, callback: ProgressCallback | None, start: float, end: float):
        self.callback, self.start, self.end = callback, start, end

    def __call__(self, fraction: float, message: str) -> Optional[bool]:
        report(self.callback, self.start + (self.end - self.start) * fraction, message)
        return None
