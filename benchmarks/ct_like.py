"""Deterministic CT-like volumes for benchmarks: body, bone, air and labelled organs.

:func:`make_case` draws one case from ``(index, z, n_classes, seed)`` with a numpy
``Generator`` seeded by ``[seed, index, z, n_classes]``, so the same arguments give the
same arrays. A case is stored as ``(X, Y, Z)`` arrays with a NON-RAS affine as a DICOM
series converts to NIfTI (LPS-like: x and y flipped, ``aff2axcodes`` gives
``('L', 'P', 'S')``), spacing 0.7 x 0.7 x 1.25 mm by default:

- air (-1000 HU) outside a body (ellipse cylinder, soft tissue ~40 HU) with a
  subcutaneous fat ring (-100 HU), a bright rib-like bone ring (~700 HU) and a spine
  (~400 HU) behind, all extruded along z;
- ``n_classes - 1`` organs (labels 1..K-1): ellipsoids inside the body, each with its
  own mean HU, later labels painted over earlier ones;
- Gaussian noise (sigma 15 HU), then rounding to int16.

All sizes are in mm relative to the field of view, so a 96 x 96 x 40 smoke volume
looks like a 512 x 512 x 300 one, just coarser. :func:`write_dataset` writes cases in
the MSD layout (``imagesTr``, ``labelsTr``, ``dataset.json``) that both medseg and
``tests/nnunet_oracle.py to_nnunet_raw`` read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: Default voxel size (mm) of a generated case, x, y, z.
SPACING_MM = (0.7, 0.7, 1.25)
#: Slice thicknesses (mm) and in-plane range (mm) of :func:`varied_spacing`.
SLICE_MM = (1.25, 2.0, 2.5, 3.0, 5.0)
IN_PLANE_MM = (0.6, 0.9)
NOISE_HU = 15.0


@dataclass(frozen=True)
class CaseSpec:
    """What to generate for one case: its id, slices, voxel size (mm) and in-plane size."""

    case_id: str
    index: int
    z: int
    spacing: tuple[float, float, float] = SPACING_MM
    size: int = 512


def lps_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Affine of an LPS-stored grid (x, y flipped in RAS), centred in-plane on the origin."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre = affine[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    affine[:3, 3] = [-centre[0], -centre[1], -40.0]
    return affine


def varied_spacing(index: int, seed: int = 0) -> tuple[float, float, float]:
    """A clinical-looking voxel size for case ``index``: in-plane 0.6-0.9 mm, slices from
    :data:`SLICE_MM` (cycled, so every thickness occurs among consecutive cases)."""
    rng = np.random.default_rng([seed, index, 7])
    in_plane = round(float(rng.uniform(*IN_PLANE_MM)), 3)
    return (in_plane, in_plane, SLICE_MM[(index + seed) % len(SLICE_MM)])


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _body(size: int, spacing: Sequence[float], rng: np.random.Generator):
    """2-D HU map (X, Y) of one slice, the body mask and its semi-axes (mm)."""
    half = (size - 1) / 2
    x = (np.arange(size) - half)[:, None] * spacing[0]
    y = (np.arange(size) - half)[None, :] * spacing[1]
    fov = size * min(spacing[0], spacing[1])
    rx, ry = fov * rng.uniform(0.40, 0.45), fov * rng.uniform(0.29, 0.33)
    body = _ellipse(x, y, 0, 0, rx, ry)
    muscle = _ellipse(x, y, 0, 0, rx * 0.92, ry * 0.9)
    ring = _ellipse(x, y, 0, 0, rx * 0.82, ry * 0.8) & ~_ellipse(x, y, 0, 0, rx * 0.78, ry * 0.75)
    spine = _ellipse(x, y, 0, ry * 0.55, rx * 0.09, ry * 0.13)  # posterior: +y is P (LPS)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = -100.0
    hu[muscle] = 40.0
    hu[ring] = 700.0
    hu[spine] = 400.0
    return hu, muscle & ~ring & ~spine, (rx, ry)


def _organ_boxes(shape, spacing, semi, n_organs: int, rng: np.random.Generator):
    """(centre voxel, radii in voxels) of each organ, inside the body's inner part."""
    extent_z = shape[2] * spacing[2]
    organs = []
    for _ in range(n_organs):
        r_mm = np.array([semi[0] * rng.uniform(0.12, 0.26), semi[1] * rng.uniform(0.14, 0.3), 0.0])
        r_mm[2] = min(extent_z * 0.4, rng.uniform(25, 70))
        c_mm = np.array(
            [
                rng.uniform(-0.55, 0.55) * semi[0],
                rng.uniform(-0.45, 0.3) * semi[1],
                rng.uniform(-0.9, 0.9) * (extent_z / 2 - r_mm[2]),
            ]
        )
        centre = (np.asarray(shape) - 1) / 2 + c_mm / np.asarray(spacing)
        organs.append((centre, np.maximum(r_mm / np.asarray(spacing), 1.0)))
    return organs


def _paint_organ(hu, label, inside, centre, radii, value: int, mean_hu: float) -> None:
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, hu.shape)
    if np.any(hi <= lo):
        return
    grids = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    mask = (dist <= 1.0) & inside[lo[0] : hi[0], lo[1] : hi[1], None]
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    hu[box][mask] = mean_hu
    label[box][mask] = value


def make_case(
    index: int,
    z: int,
    n_classes: int,
    seed: int = 0,
    *,
    size: int = 512,
    spacing: Sequence[float] = SPACING_MM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CT-like case.

    Parameters
    ----------
    index : int
        Case number; with ``seed``, ``z`` and ``n_classes`` it seeds the generator.
    z : int
        Slices (third array axis).
    n_classes : int
        Label values 0..n_classes-1 (background included), at most 255.
    seed : int
        Dataset seed.
    size : int
        In-plane voxels (the array is ``size x size x z``).
    spacing : sequence of 3 floats
        Voxel size in mm along the array axes.

    Returns
    -------
    image : ndarray, int16, (X, Y, Z)
        Hounsfield-like values.
    label : ndarray, uint8, (X, Y, Z)
    affine : ndarray, (4, 4)
        Voxel to RAS+ mm, LPS-stored (see :func:`lps_affine`).
    """
    if not 2 <= n_classes <= 255:
        raise ValueError(f"n_classes must be 2..255, got {n_classes}")
    rng = np.random.default_rng([seed, index, z, n_classes])
    shape = (size, size, z)
    slice_hu, inside, semi = _body(size, spacing, rng)
    hu = np.empty(shape, np.float32)
    hu[...] = slice_hu[:, :, None]
    label = np.zeros(shape, np.uint8)
    organs = _organ_boxes(shape, spacing, semi, n_classes - 1, rng)
    for value, (centre, radii) in enumerate(organs, start=1):
        mean_hu = 40.0 + ((value * 47) % 180) - 60.0  # -20..160 HU, distinct per organ
        _paint_organ(hu, label, inside, centre, radii, value, mean_hu)
    for k in range(z):  # slice-wise, so noise costs one slice of float32 at a time
        noise = rng.standard_normal((size, size), dtype=np.float32)
        hu[:, :, k] += NOISE_HU * noise
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, lps_affine(shape, spacing)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def write_image(image: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write an int16 image (or uint8 label) as NIfTI with qform and sform set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(image, affine, path)
    return path


def write_dataset(out: Path, cases: Sequence[CaseSpec], n_classes: int, seed: int = 0) -> Path:
    """Write ``cases`` as an MSD-layout CT dataset under ``out`` and return ``out``."""
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for spec in cases:
        image, label, affine = make_case(
            spec.index, spec.z, n_classes, seed, size=spec.size, spacing=spec.spacing
        )
        name = f"{spec.case_id}.nii.gz"
        write_image(image, affine, out / "imagesTr" / name)
        write_image(label, affine, out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    labels = {"0": "background", **{str(k): f"organ{k}" for k in range(1, n_classes)}}
    meta = {
        "name": out.name,
        "description": "CT-like volumes generated by medseg's benchmarks/ct_like.py",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": 0,
        "generator": {"script": "benchmarks/ct_like.py", "seed": seed},
        "training": training,
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
