"""The processing grid: canonical RAS with the axes reversed, ``(S, A, R)``.

nnU-Net v2 reads NIfTI (with reorientation) into this axis order, so working in
it makes every per-axis decision directly comparable with nnU-Net's, and lets
nnU-Net plans and models be used as they are. Models planned with nnU-Net's
default SimpleITK reader saw volumes in their stored axis order instead (axes
reversed, no reorientation): ``reorient=False`` reproduces that grid.
"""

from __future__ import annotations

import numpy as np

from medseg.core.volume import Kind, Volume
from medseg.geometry.orientation import (
    OrientationRecord,
    canonical_ornt,
    canonical_view,
    from_canonical,
    identity_record,
)


def reverse_spatial(array: np.ndarray) -> np.ndarray:
    """Reverse the order of the last three axes (a view)."""
    lead = array.ndim - 3
    return np.transpose(array, tuple(range(lead)) + (lead + 2, lead + 1, lead))


def to_processing(
    volume: Volume, reorient: bool = True
) -> tuple[np.ndarray, tuple[float, ...], OrientationRecord]:
    """The array on the processing grid (``(C, S, A, R)`` or ``(S, A, R)``), its spacing
    in mm in that order, and the orientation record that undoes it.

    The array is a view of ``volume.array`` (axes permuted and reversed, no copy):
    a NIfTI file's array as read (Fortran order) is then C-ordered on this grid.
    """
    if reorient:
        array, record = canonical_view(volume)
    else:
        array, record = volume.array, identity_record(volume)
    return reverse_spatial(array), processing_spacing(volume.affine, reorient), record


def processing_spacing(affine: np.ndarray, reorient: bool = True) -> tuple[float, ...]:
    """Voxel size (mm) on the processing grid of a volume with ``affine``, without moving
    its array: the spacing :func:`to_processing` would return."""
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    if reorient:
        canonical = [0.0, 0.0, 0.0]
        for src, (dst, _) in enumerate(canonical_ornt(affine)):
            canonical[int(dst)] = float(spacing[src])
        spacing = canonical
    return tuple(float(s) for s in reversed(spacing))


def from_processing(array: np.ndarray, record: OrientationRecord, kind: Kind) -> Volume:
    """Back from the processing grid to the original array order and affine, exactly.

    ``array`` is ``(..., S, A, R)``: a label ``(S, A, R)`` for ``Kind.LABEL``, or
    channels first (e.g. probabilities) for ``Kind.IMAGE``.
    """
    canonical = np.ascontiguousarray(reverse_spatial(array))
    return from_canonical(Volume(canonical, np.array(record.original_affine), kind), record)
