"""medseg.io.nifti inflates unscaled .nii.gz itself: the arrays are nibabel's, bit for bit.

Anything unusual (scaling, several gzip members, truncation, trailing bytes) goes
through nibabel as before, so its values and its errors are unchanged.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

import medseg.io.nifti as nifti_module
from medseg.core.errors import VolumeReadError
from medseg.io.nifti import read_nifti_array

AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def _save(array: np.ndarray, path, **scaling) -> None:
    img = nib.Nifti1Image(array, AFFINE)
    if scaling:
        img.header.set_slope_inter(scaling["slope"], scaling["inter"])
    nib.save(img, str(path))


def _nibabel(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(-3000, 3000, dtype=np.int16).reshape(10, 20, 30),
        np.random.default_rng(0).random((7, 5, 3, 2), dtype=np.float32),
        np.arange(60, dtype=np.uint8).reshape(3, 4, 5),
        np.arange(60, dtype=">i2").reshape(3, 4, 5),
    ],
)
def test_inflated_array_is_nibabels(tmp_path, monkeypatch, array):
    monkeypatch.setattr(nifti_module, "GZIP_CHUNK", 97)  # many small steps
    path = tmp_path / "x.nii.gz"
    _save(array, path)
    got, affine = read_nifti_array(path)
    expected = _nibabel(path)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(affine, nib.load(str(path)).affine)
    assert got.flags.writeable and got.flags.f_contiguous


def test_scaled_and_multi_member_files_read_as_nibabel_reads_them(tmp_path):
    scaled = tmp_path / "scaled.nii.gz"
    _save(np.arange(24, dtype=np.int16).reshape(2, 3, 4), scaled, slope=0.5, inter=-3.0)
    np.testing.assert_array_equal(read_nifti_array(scaled)[0], _nibabel(scaled))
    two = tmp_path / "two.nii.gz"
    raw = tmp_path / "x.nii"
    _save(np.arange(24, dtype=np.int16).reshape(2, 3, 4), raw)
    data = raw.read_bytes()
    two.write_bytes(gzip.compress(data[:200]) + gzip.compress(data[200:]))
    np.testing.assert_array_equal(read_nifti_array(two)[0], _nibabel(raw))


def test_truncated_and_trailing_bytes(tmp_path):
    path = tmp_path / "x.nii.gz"
    _save(np.random.default_rng(1).integers(0, 99, (20, 20, 20), dtype=np.int16), path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(VolumeReadError, match="corrupt"):
        read_nifti_array(path)
    path.write_bytes(good + b"\x00" * 8)  # padding after the member: nibabel decides
    try:
        expected = _nibabel(path)
    except Exception:
        with pytest.raises(VolumeReadError):
            read_nifti_array(path)
    else:
        np.testing.assert_array_equal(read_nifti_array(path)[0], expected)
