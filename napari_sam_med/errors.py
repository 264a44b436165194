"""The package's error types for bad input: all are ``ValueError`` subclasses.

Every fault caused by a file, a prompt or an argument the user gave is raised as
:class:`SamMedError` (or a subclass named after the concept: ``VolumeError``,
``CheckpointError``, ``ManifestError``, :class:`PromptError`, :class:`OutputExistsError`), with
a message naming the file or the value and what was expected. Catch ``SamMedError`` to handle
all of them; ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SamMedError(ValueError):
    """Bad input to napari-sam-med: the message names the file or value and the fault."""


class PromptError(SamMedError):
    """A prompt (points, labels, box, mask) has the wrong shape, type or values."""


class VolumeError(SamMedError):
    """A volume, label or DICOM file cannot be used; the message names the file and the fault."""


class OutputExistsError(VolumeError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class CheckpointError(SamMedError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the configuration."""


class ManifestError(SamMedError):
    """A manifest (or a command line standing in for one) is malformed."""
