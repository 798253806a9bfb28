"""Formats read through SimpleITK: NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd).

ITK arrays come as ``(Z, Y, X[, C])`` with an LPS geometry; medseg volumes are
``(C, X, Y, Z)`` with a RAS affine, so axes are reversed and x, y flipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.core.errors import VolumeReadError
from medseg.core.volume import Kind, Volume, as_label_array, smallest_int_dtype
from medseg.geometry.affine import LPS_TO_RAS, affine_from_components, components_from_affine
from medseg.io.atomic import atomic_path


def _affine_of(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return LPS_TO_RAS @ affine_from_components(image.GetSpacing(), direction, image.GetOrigin())


def read_itk(path: Path, kind: Kind) -> Volume:
    """Read a SimpleITK-readable file as an image ``(C, X, Y, Z)`` or label ``(X, Y, Z)``."""
    if not path.exists():
        raise VolumeReadError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise VolumeReadError(
            f"{path}: SimpleITK cannot read this file ({str(e).strip().splitlines()[-1]}). "
            "The file may be corrupt, or its format is not supported."
        ) from e
    if image.GetDimension() != 3:
        raise VolumeReadError(
            f"{path}: a {image.GetDimension()}D image; medseg reads and segments 3D volumes. "
            "Give the whole volume or series."
        )
    arr = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C])
    n_comp = image.GetNumberOfComponentsPerPixel()
    arr = np.moveaxis(arr, -1, 0) if n_comp > 1 else arr[None]  # (C, Z, Y, X)
    arr = np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)))  # (C, X, Y, Z)
    affine = _affine_of(image)
    if kind is Kind.IMAGE:
        return Volume(arr, affine, Kind.IMAGE)
    if arr.shape[0] != 1:
        raise VolumeReadError(f"{path}: a label must have one component, got {arr.shape[0]}")
    try:
        return Volume(as_label_array(arr[0]), affine, Kind.LABEL)
    except Exception as e:
        raise VolumeReadError(f"{path}: not a valid label map: {e}") from e


def write_itk(volume: Volume, path: Path) -> None:
    """Write ``volume`` with SimpleITK (format from the suffix), atomically."""
    arr = volume.array
    if volume.kind is Kind.LABEL:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        arr = arr.astype(smallest_int_dtype(lo, hi), copy=False)[None]
    is_vector = arr.shape[0] > 1
    zyx = np.transpose(arr, (3, 2, 1, 0)) if is_vector else np.transpose(arr[0], (2, 1, 0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(zyx), isVector=is_vector)
    spacing, direction, origin = components_from_affine(LPS_TO_RAS @ volume.affine)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction.ravel()])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
