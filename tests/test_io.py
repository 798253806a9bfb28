"""Volume file I/O: NIfTI, NRRD, MHA round trips, atomic writes, clear errors."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from medseg.core import Kind, MedsegError, Volume, VolumeReadError
from medseg.io import read_volume, write_volume

AFFINE = np.array([[0, -0.8, 0, 10.5], [-0.8, 0, 0, -3.25], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_image_round_trip_multichannel(tmp_path, suffix):
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(2, 5, 6, 7)).astype(np.float32), AFFINE, Kind.IMAGE)
    path = tmp_path / f"img{suffix}"
    write_volume(vol, path)
    back = read_volume(path)
    assert back.array.shape == (2, 5, 6, 7)
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.affine, vol.affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_round_trip_stays_integer(tmp_path, suffix):
    lab = np.zeros((5, 6, 7), np.int64)
    lab[1:3, 2:4, 3:6] = 2
    path = tmp_path / f"lab{suffix}"
    write_volume(Volume.label(lab, AFFINE), path)
    back = read_volume(path, Kind.LABEL)
    assert back.array.dtype == np.uint8  # stored compactly
    assert np.array_equal(back.array, lab)


def test_nifti_affine_matches_nibabel(tmp_path):
    path = tmp_path / "a.nii.gz"
    write_volume(Volume.image(np.zeros((3, 4, 5), np.int16), AFFINE), path)
    img = nib.load(path)
    assert np.allclose(img.affine, AFFINE)
    assert img.get_data_dtype() == np.int16
    assert int(img.header["sform_code"]) == 1


def test_msd_4d_image_is_read_channel_first(tmp_path):
    data = np.stack([np.full((3, 4, 5), c, np.float32) for c in range(4)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "x.nii.gz")
    vol = read_volume(tmp_path / "x.nii.gz")
    assert vol.array.shape == (4, 3, 4, 5)
    assert [float(vol.array[c].mean()) for c in range(4)] == [0, 1, 2, 3]


def test_float_label_file_with_fractions_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), tmp_path / "l.nii.gz")
    with pytest.raises(VolumeReadError, match="l.nii.gz.*non-integer"):
        read_volume(tmp_path / "l.nii.gz", Kind.LABEL)


def test_truncated_nifti_names_file_and_says_what_to_do(tmp_path):
    path = tmp_path / "broken.nii.gz"
    write_volume(Volume.image(np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(VolumeReadError, match=r"broken\.nii\.gz.*corrupt.*re-export"):
        read_volume(path)


def test_garbage_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(VolumeReadError, match="junk.nii.gz"):
        read_volume(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(VolumeReadError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(VolumeReadError, match="unsupported file type '.png'"):
        read_volume(tmp_path / "a.png")
    with pytest.raises(VolumeReadError, match="cannot write"):
        write_volume(Volume.image(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "a.png")


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.nii.gz"
    write_volume(Volume.image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    before = path.read_bytes()

    def explode(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nib, "save", explode)
    with pytest.raises(RuntimeError):
        write_volume(Volume.image(np.ones((2, 2, 2), np.int16), np.eye(4)), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_label_volume_rejected_for_dicom_folder(dicom_dir):
    with pytest.raises(MedsegError, match="cannot be read as a label"):
        read_volume(dicom_dir / "mr_hippocampus_crop_study1", Kind.LABEL)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "readable.nii.gz"
    write_volume(Volume.image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    from medseg.io.atomic import atomic_dir

    with atomic_dir(tmp_path / "folder") as folder:  # e.g. a model folder
        (folder / "a.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "folder") as folder:
        (folder / "b.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "readable.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        ".medseg-output.json",  # what kind of output it is: only such folders are replaced
        "a.json",
    ]
