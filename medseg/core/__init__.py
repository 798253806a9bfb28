"""Layer 0: errors, enums and record types shared by every other layer."""

from medseg.core.errors import (
    DatasetError,
    DicomSeriesError,
    GeometryError,
    MedsegError,
    VolumeReadError,
)
from medseg.core.volume import Kind, Volume

__all__ = [
    "DatasetError",
    "DicomSeriesError",
    "GeometryError",
    "Kind",
    "MedsegError",
    "Volume",
    "VolumeReadError",
]
