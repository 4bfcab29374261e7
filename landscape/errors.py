"""User-facing errors.

A :class:`LandscapeError` is a mistake the user can fix (an unknown name, a
missing file, a malformed config). The CLI prints its message as one line and
exits non-zero, without a traceback; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class LandscapeError(Exception):
    """A user error: the message says what is wrong and what to do."""


class ConfigError(LandscapeError):
    """A malformed or inconsistent configuration."""


class DataError(LandscapeError):
    """A dataset that cannot be found or read."""


class CheckpointError(LandscapeError):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit the model."""


class TrainingDiverged(LandscapeError):
    """The training loss became NaN or infinite."""
