"""The medseg error hierarchy.

Every error a user can cause is a :class:`MedsegError`. Subclasses also inherit
the matching built-in exception so callers can catch either. Messages say what
was wrong, where (file or folder), and what to do about it.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of all errors raised deliberately by medseg."""


class VolumeReadError(MedsegError, OSError):
    """A volume file cannot be read or written (missing, corrupt, unsupported)."""


class DicomSeriesError(MedsegError, ValueError):
    """A DICOM folder does not hold one clean, regularly sampled volume."""


class GeometryError(MedsegError, ValueError):
    """An affine or orientation is invalid, or two geometries disagree."""


class DatasetError(MedsegError, ValueError):
    """A dataset folder or its ``dataset.json`` is malformed."""


class InvalidCaseError(MedsegError, ValueError):
    """A case failed the dataset checks during fingerprinting."""


class CheckpointError(MedsegError, ValueError):
    """A checkpoint is missing, damaged, or of a form medseg refuses to load."""


class AugmentError(MedsegError, ValueError):
    """Augmentation settings or batch tensors are inconsistent."""


class ModelError(MedsegError, ValueError):
    """A model folder is missing, incomplete or inconsistent."""


class InferenceError(MedsegError, ValueError):
    """Inputs to prediction are inconsistent (shapes, patch, network)."""


class DicomSegError(MedsegError, ValueError):
    """A DICOM-SEG cannot be written or read for these images."""


class RtStructError(MedsegError, ValueError):
    """An RTSTRUCT cannot be written for these images and labels."""


class RecordError(MedsegError, ValueError):
    """A record file is missing, malformed, or of the wrong kind or version."""


class EvaluationError(MedsegError, ValueError):
    """Predictions and references cannot be evaluated together (missing, mismatched)."""


class OutputError(MedsegError, ValueError):
    """An output would overwrite, replace or sit inside an input, or a file that is not
    medseg's own."""


class ReportError(MedsegError, RuntimeError):
    """A prediction's measurements or preview picture cannot be made or written."""


class InputRefusedError(MedsegError, ValueError):
    """An input failed the sanity checks (non-finite, blank, not 3D, ambiguous geometry...)."""


class PlanError(MedsegError, ValueError):
    """Planning options or plans that cannot be used (unknown configuration, scheme,
    network component)."""


class VolumeError(MedsegError, ValueError):
    """An array cannot be a volume of the kind asked for (shape, dtype, values)."""


class DeviceError(MedsegError, RuntimeError):
    """The requested compute device does not exist here."""


class TrainingError(MedsegError, ValueError):
    """A training run cannot start or continue as asked (fold, split, resume)."""


class UsageError(MedsegError, ValueError):
    """A command-line option has a value that cannot work."""


class PackageError(MedsegError, ValueError):
    """A model package (zip) cannot be written, or fails its checks (digest, member name,
    size, schema)."""
