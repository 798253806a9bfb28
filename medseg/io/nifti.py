"""NIfTI (.nii, .nii.gz) reading and writing with nibabel.

NIfTI stores multi-channel images as ``(X, Y, Z, C)`` (the MSD convention);
medseg volumes are channel-first, so the channel axis moves on read and write.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.core.errors import VolumeReadError
from medseg.core.volume import Kind, Volume, as_label_array, smallest_int_dtype
from medseg.io.atomic import atomic_path


def read_nifti_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file's scaled data (X, Y, Z[, C]) and its RAS affine.

    Raises :class:`VolumeReadError` naming the file if it is missing, truncated
    or otherwise unreadable.
    """
    try:
        img = nib.load(str(path))
        # asanyarray applies scl_slope/scl_inter; keeps the stored dtype when unscaled
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    except FileNotFoundError as e:
        raise VolumeReadError(f"{path}: file not found") from e
    except Exception as e:  # nibabel, gzip and zlib raise many types for corrupt files
        raise VolumeReadError(
            f"{path}: cannot read this NIfTI file ({type(e).__name__}: {e}). The file is "
            "probably truncated or corrupt; re-export or re-download it."
        ) from e
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector intent
        data = data[:, :, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise VolumeReadError(f"{path}: expected a 3D or 4D image, got shape {data.shape}")
    return data, affine


def read_nifti(path: Path, kind: Kind) -> Volume:
    """Read a NIfTI file as an image ``(C, X, Y, Z)`` or a label ``(X, Y, Z)``."""
    data, affine = read_nifti_array(path)
    if kind is Kind.IMAGE:
        arr = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
        return Volume(np.ascontiguousarray(arr), affine, Kind.IMAGE)
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise VolumeReadError(f"{path}: a label must be 3D, got shape {data.shape}")
        data = data[..., 0]
    try:
        return Volume(as_label_array(data), affine, Kind.LABEL)
    except Exception as e:
        raise VolumeReadError(f"{path}: not a valid label map: {e}") from e


def write_nifti(volume: Volume, path: Path) -> None:
    """Write ``volume`` to ``path`` (.nii or .nii.gz) atomically.

    Labels are stored with the smallest integer type that holds them; float64
    images as float32; the affine goes into both sform and qform (code 1,
    scanner), units mm.
    """
    arr = volume.array
    if volume.kind is Kind.IMAGE:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    else:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        arr = arr.astype(smallest_int_dtype(lo, hi), copy=False)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(np.asarray(arr), np.asarray(volume.affine))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(np.asarray(volume.affine), code=1)
    img.set_qform(np.asarray(volume.affine), code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
