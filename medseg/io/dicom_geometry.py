"""Decide whether a set of DICOM slices forms one regular volume, and its geometry.

Pure functions over the per-slice header values (no file access), so every
failure mode can be tested with exact numbers. Problems are reported as
:class:`DicomSeriesError` in words a radiographer recognises (gantry tilt,
missing slices, several images at one position, mixed orientations), never as a
silently wrong volume.

Coordinates are DICOM patient coordinates (LPS, mm).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from medseg.core.errors import DicomSeriesError

#: Direction cosines closer than this are the same orientation.
ORIENTATION_TOL = 1e-3
#: Slice gaps may differ from the mean gap by this fraction and still count as uniform.
SPACING_RTOL = 0.01
#: Slices may drift in-plane by this fraction of a pixel over the whole stack.
INPLANE_TOL_PIXELS = 0.1


@dataclass(frozen=True)
class SliceStack:
    """A validated stack: slice order and the voxel-to-LPS affine.

    ``order[k]`` is the index (into the inputs) of the slice at array position
    ``k``; array axes are (column index, row index, slice), and slices run
    along the normal ``row x column`` as SimpleITK's ImageSeriesReader does.
    """

    order: tuple[int, ...]
    affine_lps: np.ndarray
    slice_spacing: float


def _plane_name(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _fmt_mm(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") + " mm"


def _check_uniform(values: np.ndarray, what: str, where: str, rtol: float = 1e-4) -> None:
    ref = values[0]
    bad = np.any(np.abs(values - ref) > rtol * np.maximum(np.abs(ref), 1.0), axis=-1)
    if np.any(bad):
        counts = Counter(tuple(np.round(v, 4)) for v in values)
        listing = ", ".join(f"{list(k)} ({n} images)" for k, n in counts.most_common())
        raise DicomSeriesError(
            f"{where}: the images have different {what}: {listing}. They cannot be "
            "stacked into one volume; export each group as its own series."
        )


def _check_orientation(orientations: np.ndarray, where: str) -> None:
    if np.all(np.abs(orientations - orientations[0]) <= ORIENTATION_TOL):
        return
    groups: list[tuple[np.ndarray, int]] = []
    for o in orientations:
        for i, (ref, n) in enumerate(groups):
            if np.all(np.abs(o - ref) <= ORIENTATION_TOL):
                groups[i] = (ref, n + 1)
                break
        else:
            groups.append((o, 1))
    parts = [f"{n} {_plane_name(np.cross(o[:3], o[3:]))}" for o, n in groups]
    raise DicomSeriesError(
        f"{where}: mixed slice orientations in one series ({', '.join(parts)} images, "
        f"{len(groups)} different orientations). This is not one volume: the series holds "
        "several stacks (for example a localizer/scout or more than one imaging plane). "
        "Export or select one stack so that all images share one orientation."
    )


def _check_inplane_alignment(
    offsets: np.ndarray, along: np.ndarray, pixel: float, where: str
) -> None:
    """Slices must sit on a line along the normal; otherwise diagnose gantry tilt."""
    drift = np.linalg.norm(offsets, axis=1)
    if drift.max() <= max(INPLANE_TOL_PIXELS * pixel, 1e-3):
        return
    span = along[-1] - along[0]
    shear = (offsets[-1] - offsets[0]) / span
    linear = np.abs(offsets - offsets[0] - np.outer(along - along[0], shear)).max()
    if linear <= max(INPLANE_TOL_PIXELS * pixel, 1e-3):
        angle = float(np.degrees(np.arctan(np.linalg.norm(shear))))
        raise DicomSeriesError(
            f"{where}: gantry tilt of {angle:.1f} degrees. The slices were acquired with a "
            "tilted gantry, so each slice is shifted sideways relative to the previous "
            "one and the voxels do not form a rectangular grid. medseg does not resample "
            "tilted series (that would change the image). Reconstruct or export the series "
            "without tilt (or with tilt correction) at the scanner or PACS."
        )
    raise DicomSeriesError(
        f"{where}: the slices do not line up: their positions drift sideways by up to "
        f"{_fmt_mm(float(drift.max()))} instead of stacking straight along the slice "
        "normal. The series is not one regular volume; check it was exported completely "
        "and from a single acquisition."
    )


def _check_spacing(along: np.ndarray, where: str) -> float:
    gaps = np.diff(along)
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    if np.all(np.abs(gaps - spacing) <= SPACING_RTOL * spacing):
        return spacing
    step = float(gaps.min())
    multiples = gaps / step
    if np.all(np.abs(multiples - np.round(multiples)) <= 0.05):
        holes = [
            f"{int(round(m)) - 1} between {_fmt_mm(along[i])} and {_fmt_mm(along[i + 1])}"
            for i, m in enumerate(multiples)
            if round(m) >= 2
        ]
        n_missing = int(sum(round(m) - 1 for m in multiples))
        raise DicomSeriesError(
            f"{where}: {n_missing} slice(s) missing (the slices are {_fmt_mm(step)} apart, "
            f"but there are gaps: {'; '.join(holes)}, positions along the slice normal). "
            "The series was exported incompletely; export it again with all slices."
        )
    listing = ", ".join(_fmt_mm(g) for g in gaps[:12]) + (" ..." if len(gaps) > 12 else "")
    raise DicomSeriesError(
        f"{where}: uneven slice spacing (gaps between consecutive slices: {listing}). "
        "A volume needs equally spaced slices; check the series was exported completely "
        "and is not a mix of reconstructions."
    )


def stack_slices(
    positions: np.ndarray,
    orientations: np.ndarray,
    pixel_spacings: np.ndarray,
    shapes: np.ndarray,
    *,
    where: str,
) -> SliceStack:
    """Validate single-frame slices as one regular volume and compute its geometry.

    Parameters
    ----------
    positions
        ``(N, 3)`` ImagePositionPatient (LPS mm) of each slice.
    orientations
        ``(N, 6)`` ImageOrientationPatient (row cosines, then column cosines).
    pixel_spacings
        ``(N, 2)`` PixelSpacing (between rows, between columns) in mm.
    shapes
        ``(N, 2)`` (Rows, Columns).
    where
        Folder or series name used in error messages.

    Raises
    ------
    DicomSeriesError
        If the slices do not form one regularly sampled volume; the message
        says which problem (mixed orientations, several images per position,
        gantry tilt, missing slices, uneven spacing, too few slices).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    orientations = np.asarray(orientations, dtype=float).reshape(-1, 6)
    pixel_spacings = np.asarray(pixel_spacings, dtype=float).reshape(-1, 2)
    shapes = np.asarray(shapes, dtype=float).reshape(-1, 2)
    n = len(positions)
    if n == 0:
        raise DicomSeriesError(f"{where}: no images with position information")
    _check_uniform(shapes, "image sizes (rows, columns)", where, rtol=0)
    _check_orientation(orientations, where)
    _check_uniform(pixel_spacings, "pixel spacings", where)
    if n < 2:
        raise DicomSeriesError(
            f"{where}: only one image in the series; a single slice is not a 3D volume. "
            "Check that the whole series was exported."
        )
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    same = np.diff(along) <= 1e-3 * max(float(pixel_spacings[0].min()), 1.0)
    if np.any(same):
        shared = np.zeros(n, bool)
        shared[:-1] |= same
        shared[1:] |= same
        run = longest = 1
        for s in same:
            run = run + 1 if s else 1
            longest = max(longest, run)
        raise DicomSeriesError(
            f"{where}: not a volume: {int(shared.sum())} of {n} images share a slice "
            f"position with another (up to {longest} images at one position). The series "
            "holds several images per location (for example several echoes, phases, time "
            "points or repeated acquisitions). Split it so that each volume has one image "
            "per position."
        )
    sorted_pos = positions[order]
    offsets = (sorted_pos - sorted_pos[0]) - np.outer(along - along[0], normal)
    _check_inplane_alignment(offsets, along, float(pixel_spacings[0].min()), where)
    spacing = _check_spacing(along, where)
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacings[0, 1]
    affine[:3, 1] = col * pixel_spacings[0, 0]
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = sorted_pos[0]
    return SliceStack(tuple(int(i) for i in order), affine, spacing)
