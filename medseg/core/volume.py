"""The one type for image and label volumes: array + affine + kind.

Conventions
-----------
* ``affine`` maps a voxel index ``(i, j, k, 1)`` to world coordinates in
  millimetres in the **RAS+** patient frame (+x towards the patient's right,
  +y anterior, +z superior), the NIfTI / nibabel convention. DICOM and ITK use
  LPS (+x left, +y posterior); the readers convert.
* Images are channel-first: ``array.shape == (C, X, Y, Z)``.
* Labels are ``(X, Y, Z)`` with an integer dtype; they are never interpolated
  like images, and their dtype never changes by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from medseg.core.errors import GeometryError, VolumeError


class Kind(str, Enum):
    """Whether a volume holds intensities (image) or class indices (label)."""

    IMAGE = "image"
    LABEL = "label"


def _checked_affine(affine: np.ndarray) -> np.ndarray:
    a = np.array(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GeometryError(f"an affine must be a 4x4 matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError(f"the affine holds NaN or infinite values:\n{a}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"the affine's last row must be [0, 0, 0, 1], got {a[3]}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError(f"the affine is singular (a voxel axis has zero length):\n{a}")
    a.setflags(write=False)
    return a


def as_label_array(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as an integer label array, without changing any value.

    Integer and boolean arrays keep their values (bool becomes uint8). A float
    array is accepted only if every value is a whole number; it is then cast to
    the smallest integer type that holds its range.

    Raises
    ------
    MedsegError
        If the array holds non-integer values (for example an interpolated or
        probability map saved as a label).
    """
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise VolumeError(f"a label array must be numeric, got dtype {a.dtype}")
    if a.size and not np.all(np.isfinite(a)):
        raise VolumeError("a label array holds NaN or infinite values")
    if a.size and not np.array_equal(a, np.round(a)):
        raise VolumeError(
            "a label array holds non-integer values (is it an image or a probability map?)"
        )
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    return a.astype(smallest_int_dtype(lo, hi))


def smallest_int_dtype(lo: float, hi: float) -> np.dtype:
    """The smallest of uint8, int16, int32, int64 that holds ``[lo, hi]``."""
    for dt in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise VolumeError(f"label values [{lo}, {hi}] do not fit any integer type")


@dataclass(frozen=True, eq=False)
class Volume:
    """An image or label volume with its geometry.

    Parameters
    ----------
    array
        ``(C, X, Y, Z)`` for images, ``(X, Y, Z)`` integer for labels.
    affine
        4x4 voxel-index to RAS+ world (mm) matrix.
    kind
        :class:`Kind.IMAGE` or :class:`Kind.LABEL`.
    """

    array: np.ndarray
    affine: np.ndarray
    kind: Kind

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", _checked_affine(self.affine))
        kind = Kind(self.kind)
        object.__setattr__(self, "kind", kind)
        arr = np.asarray(self.array)
        if kind is Kind.IMAGE and arr.ndim != 4:
            raise VolumeError(
                f"an image volume must be channel-first (C, X, Y, Z), got shape {arr.shape}"
            )
        if kind is Kind.LABEL:
            if arr.ndim != 3:
                raise VolumeError(f"a label volume must be (X, Y, Z), got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, np.integer):
                raise VolumeError(
                    f"a label volume must have an integer dtype, got {arr.dtype}; "
                    "use medseg.core.volume.as_label_array to convert whole-number floats"
                )
        object.__setattr__(self, "array", arr)

    @classmethod
    def image(cls, array: np.ndarray, affine: np.ndarray) -> Volume:
        """An image; a 3D array is given one channel axis in front."""
        arr = np.asarray(array)
        return cls(arr[None] if arr.ndim == 3 else arr, affine, Kind.IMAGE)

    @classmethod
    def label(cls, array: np.ndarray, affine: np.ndarray) -> Volume:
        """A label; whole-number float arrays are converted to an integer dtype."""
        return cls(as_label_array(array), affine, Kind.LABEL)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``, the last three axes."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        """Number of channels (1 for labels)."""
        return int(self.array.shape[0]) if self.kind is Kind.IMAGE else 1

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (lengths of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry and kind with another array of the same spatial shape."""
        arr = np.asarray(array)
        if tuple(arr.shape[-3:]) != self.spatial_shape:
            raise VolumeError(
                f"new array has spatial shape {arr.shape[-3:]}, expected {self.spatial_shape}"
            )
        return Volume(arr, self.affine, self.kind)
