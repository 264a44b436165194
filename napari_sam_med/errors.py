"""The package's own error types (``ValueError`` subclasses, so callers that catch
``ValueError`` keep working)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the configuration."""
