"""Conversions between 4x4 affines and (spacing, direction, origin).

All affines here map voxel indices to RAS+ world millimetres unless a name says
LPS. ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the
array axes, as in ITK (``GetDirection`` reshaped row-major).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

#: Flips x and y: converts a point or affine between LPS (DICOM, ITK) and RAS (NIfTI).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_components(
    spacing: np.ndarray, direction: np.ndarray, origin: np.ndarray
) -> np.ndarray:
    """Build a 4x4 affine from spacing ``(3,)`` mm, direction ``(3, 3)`` and origin ``(3,)``."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


def components_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split an affine into spacing ``(3,)``, direction ``(3, 3)`` and origin ``(3,)``."""
    a = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    return spacing, a[:3, :3] / spacing, a[:3, 3].copy()


def orientation_code(affine: np.ndarray) -> str:
    """Closest anatomical axis code of each array axis, e.g. ``"RAS"`` or ``"LPS"``."""
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def grid_mismatch(
    affine_a: np.ndarray,
    affine_b: np.ndarray,
    shape: tuple[int, int, int],
    tol_voxels: float = 0.01,
) -> str | None:
    """Describe how two voxel grids of ``shape`` disagree, or None if they agree.

    The grids agree if every corner voxel centre lies within ``tol_voxels`` of
    the smallest voxel size in both; this one test covers spacing, direction
    and origin, measured where a difference matters most (the far corners).
    """
    a, b = np.asarray(affine_a, float), np.asarray(affine_b, float)
    corners = np.array(
        [
            [i, j, k, 1]
            for i in (0, shape[0] - 1)
            for j in (0, shape[1] - 1)
            for k in (0, shape[2] - 1)
        ],
        dtype=float,
    )
    worst = float(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1).max())
    sa, da, oa = components_from_affine(a)
    sb, db, ob = components_from_affine(b)
    tol = tol_voxels * float(min(sa.min(), sb.min()))
    if worst <= tol:
        return None
    parts = []
    if not np.allclose(sa, sb, rtol=1e-4, atol=0):
        parts.append(f"spacing {_vec(sa)} vs {_vec(sb)} mm")
    if not np.allclose(oa, ob, rtol=0, atol=tol):
        parts.append(f"origin {_vec(oa)} vs {_vec(ob)} mm")
    if not np.allclose(da, db, rtol=0, atol=1e-4):
        parts.append(
            f"orientation {orientation_code(a)} vs {orientation_code(b)}"
            + (" (direction cosines differ)" if orientation_code(a) == orientation_code(b) else "")
        )
    return f"{'; '.join(parts) or 'geometry'}; voxels misplaced by up to {worst:.3g} mm"


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
