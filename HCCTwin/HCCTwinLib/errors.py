"""Exception types. Every error a user can cause names the problem and what to do about it."""


class HCCTwinError(Exception):
    """Base class of all errors raised on purpose by HCCTwin."""


class InputError(HCCTwinError, ValueError):
    """Input data (image, table, clinical value) is unusable; the message says why and what to do."""


class ClinicalValueError(InputError):
    """A clinical value is missing, out of range, or apparently given in the wrong unit."""


class CancelledError(HCCTwinError):
    """A long-running step was cancelled by the user through the progress callback."""
