"""Reorientation to canonical RAS and back, by axis permutation and flips only.

The forward function returns the reoriented volume and an
:class:`OrientationRecord`; the inverse is a function of that record alone, so a
prediction made on the canonical grid goes back to the original grid exactly
(bit-identical array, and the original affine restored from the record).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import inv_ornt_aff, io_orientation

from medseg.core.errors import GeometryError
from medseg.core.volume import Volume


@dataclass(frozen=True)
class OrientationRecord:
    """What :func:`to_canonical` did, enough to undo it.

    Attributes
    ----------
    axes
        For each canonical axis (R, A, S), the original array axis it came from.
    flips
        For each canonical axis, whether the original axis was reversed.
    original_shape
        Spatial shape ``(X, Y, Z)`` before reorientation.
    original_affine
        The original 4x4 affine, restored exactly by the inverse.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    original_shape: tuple[int, int, int]
    original_affine: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict:
        """A JSON-ready dict (floats round-trip exactly through ``json``)."""
        return {
            "axes": list(self.axes),
            "flips": list(self.flips),
            "original_shape": list(self.original_shape),
            "original_affine": [list(r) for r in self.original_affine],
        }

    @classmethod
    def from_dict(cls, d: dict) -> OrientationRecord:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                axes=tuple(int(a) for a in d["axes"]),  # type: ignore[arg-type]
                flips=tuple(bool(f) for f in d["flips"]),  # type: ignore[arg-type]
                original_shape=tuple(int(s) for s in d["original_shape"]),  # type: ignore[arg-type]
                original_affine=tuple(tuple(float(v) for v in r) for r in d["original_affine"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GeometryError(f"malformed orientation record {d!r}: {e}") from e

    @property
    def is_identity(self) -> bool:
        """True if the original volume was already in canonical orientation."""
        return self.axes == (0, 1, 2) and not any(self.flips)


def identity_record(volume: Volume) -> OrientationRecord:
    """A record that changes nothing (for pipelines that keep the stored axis order)."""
    return OrientationRecord(
        axes=(0, 1, 2),
        flips=(False, False, False),
        original_shape=volume.spatial_shape,
        original_affine=tuple(tuple(float(v) for v in r) for r in volume.affine),
    )


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation array ``(3, 2)`` that takes ``affine``'s axes to RAS.

    Row ``i`` is ``(target_axis, +1 or -1)`` for original axis ``i``; oblique
    axes go to the closest anatomical axis.
    """
    ornt = io_orientation(np.asarray(affine))
    if np.any(np.isnan(ornt)):
        raise GeometryError(f"cannot determine the orientation of affine\n{affine}")
    return ornt


def canonical_view(volume: Volume) -> tuple[np.ndarray, OrientationRecord]:
    """:func:`to_canonical`'s array as a view of ``volume.array`` (axes permuted and
    flipped, no copy), and the record that undoes it."""
    axes, flips = [0, 0, 0], [False, False, False]
    for src, (dst, sign) in enumerate(canonical_ornt(volume.affine)):
        axes[int(dst)] = src
        flips[int(dst)] = bool(sign < 0)
    record = OrientationRecord(
        axes=tuple(axes),  # type: ignore[arg-type]
        flips=tuple(flips),  # type: ignore[arg-type]
        original_shape=volume.spatial_shape,
        original_affine=tuple(tuple(float(v) for v in r) for r in volume.affine),
    )
    lead = volume.array.ndim - 3
    arr = np.transpose(volume.array, list(range(lead)) + [lead + a for a in axes])
    flip_axes = tuple(lead + i for i, f in enumerate(flips) if f)
    return (np.flip(arr, axis=flip_axes) if flip_axes else arr), record


def to_canonical(volume: Volume) -> tuple[Volume, OrientationRecord]:
    """Reorient ``volume`` to the closest canonical RAS orientation.

    Only permutes and flips the spatial axes (the last three); no interpolation,
    values and dtype unchanged. Returns the new volume and the record to undo it.
    """
    arr, record = canonical_view(volume)
    if record.is_identity:
        return volume, record
    affine = volume.affine @ inv_ornt_aff(canonical_ornt(volume.affine), volume.spatial_shape)
    return Volume(np.ascontiguousarray(arr), affine, volume.kind), record


def from_canonical(volume: Volume, record: OrientationRecord) -> Volume:
    """Undo :func:`to_canonical`: back to the original axis order and affine.

    ``volume`` is on the canonical grid (for example a prediction); the result
    has ``record.original_shape`` and exactly ``record.original_affine``.
    """
    expected = tuple(record.original_shape[a] for a in record.axes)
    if volume.spatial_shape != expected:
        raise GeometryError(
            f"volume has spatial shape {volume.spatial_shape}, but the orientation record "
            f"expects {expected} on the canonical grid"
        )
    lead = volume.array.ndim - 3
    arr = volume.array
    flip_axes = tuple(lead + i for i, f in enumerate(record.flips) if f)
    if flip_axes:
        arr = np.flip(arr, axis=flip_axes)
    inverse = np.argsort(record.axes)
    arr = np.transpose(arr, list(range(lead)) + [lead + int(a) for a in inverse])
    return Volume(np.ascontiguousarray(arr), np.array(record.original_affine), volume.kind)
