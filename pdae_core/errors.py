"""Exceptions raised by pdae_core.

Every error a user can cause (bad file, bad column, bad checkpoint, missing data)
is one of these, with a message that names the file / column / value and says what
was expected, so that the CLI and the dashboard can show it without a traceback.
"""

from __future__ import annotations


class PDAEError(Exception):
    """Base class of every user-facing error in pdae_core."""


class DataError(PDAEError, ValueError):
    """The AnnData (or the file it came from) is not usable as given."""


class CheckpointError(PDAEError):
    """A checkpoint directory is missing, incomplete, tampered with or incompatible."""


class DatasetUnavailableError(PDAEError):
    """A named dataset is neither in the data directory nor downloadable."""
