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
