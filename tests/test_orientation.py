"""Canonical (RAS) reorientation: permutations and flips only, bit-exact round trips."""

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.core import Volume
from medseg.geometry import OrientationRecord, from_canonical, orientation_code, to_canonical
from medseg.io import read_dicom_series


def random_signed_permutation_affine(rng: np.random.Generator) -> np.ndarray:
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    affine = np.eye(4)
    affine[:3, :3] = 0
    for src, dst in enumerate(perm):
        affine[dst, src] = signs[src] * rng.uniform(0.3, 5.0)
    affine[:3, 3] = rng.uniform(-300, 300, 3)
    return affine


@pytest.mark.parametrize("seed", range(40))
def test_round_trip_is_bit_exact_for_random_signed_permutations(seed):
    rng = np.random.default_rng(seed)
    affine = random_signed_permutation_affine(rng)
    shape = tuple(int(s) for s in rng.integers(2, 9, 3))
    image = Volume.image(rng.normal(size=(2, *shape)).astype(np.float32), affine)
    label = Volume.label(rng.integers(0, 4, shape).astype(np.uint8), affine)
    for vol in (image, label):
        canon, record = to_canonical(vol)
        assert orientation_code(canon.affine) == "RAS"
        assert canon.array.dtype == vol.array.dtype
        # the record survives JSON exactly
        record = OrientationRecord.from_dict(json.loads(json.dumps(record.to_dict())))
        back = from_canonical(canon, record)
        assert back.array.shape == vol.array.shape
        assert np.array_equal(back.array, vol.array)
        assert back.array.dtype == vol.array.dtype
        assert np.array_equal(back.affine, vol.affine)  # bit-exact, not approx
        assert back.kind is vol.kind


@pytest.mark.parametrize("seed", range(10))
def test_canonical_matches_nibabel_as_closest_canonical(seed):
    rng = np.random.default_rng(100 + seed)
    affine = random_signed_permutation_affine(rng)
    data = rng.integers(0, 1000, (3, 4, 5)).astype(np.int16)
    ours = to_canonical(Volume.image(data, affine))[0]
    ref = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    assert np.array_equal(ours.array[0], np.asanyarray(ref.dataobj))
    assert np.allclose(ours.affine, ref.affine, atol=1e-9)


def test_world_position_of_every_voxel_is_preserved():
    rng = np.random.default_rng(7)
    affine = random_signed_permutation_affine(rng)
    data = rng.normal(size=(4, 5, 6))
    vol = Volume.image(data, affine)
    canon, _ = to_canonical(vol)
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = affine @ np.array([*ijk, 1.0])
        cijk = np.linalg.solve(canon.affine, world)[:3]
        cijk = tuple(int(round(c)) for c in cijk)
        assert canon.array[(0, *cijk)] == data[ijk]


def test_oblique_affine_goes_to_closest_axes_without_interpolation():
    angle = np.radians(20)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.0, 2.0])  # x axis points mostly left
    data = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    canon, record = to_canonical(Volume.label(data, affine))
    assert record.flips == (True, False, False)
    assert np.array_equal(canon.array, data[::-1])
    assert np.array_equal(from_canonical(canon, record).array, data)


def test_from_canonical_rejects_wrong_shape():
    vol = Volume.image(np.zeros((2, 3, 4)), np.diag([-1.0, 1.0, 1.0, 1.0]))
    canon, record = to_canonical(vol)
    with pytest.raises(Exception, match="spatial shape"):
        from_canonical(Volume.image(np.zeros((2, 3, 5)), canon.affine), record)


def test_real_lps_dicom_round_trip(dicom_dir):
    vol, _ = read_dicom_series(dicom_dir / "ct_abdomen_jpeg2000")
    assert orientation_code(vol.affine) == "LPS"
    canon, record = to_canonical(vol)
    assert orientation_code(canon.affine) == "RAS"
    assert record.flips == (True, True, False)
    # LPS -> RAS reverses the first two axes: the first canonical voxel is the last column/row
    nx, ny, _ = vol.spatial_shape
    assert canon.array[0, 0, 0, 0] == vol.array[0, nx - 1, ny - 1, 0]
    back = from_canonical(canon, record)
    assert np.array_equal(back.array, vol.array)
    assert np.array_equal(back.affine, vol.affine)
