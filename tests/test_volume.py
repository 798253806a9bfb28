import numpy as np
import pytest

from medseg.core import GeometryError, Kind, MedsegError, Volume
from medseg.core.volume import as_label_array


def test_image_is_channel_first_and_keeps_dtype():
    v = Volume.image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    assert v.array.shape == (1, 4, 5, 6)
    assert v.array.dtype == np.int16
    assert v.spatial_shape == (4, 5, 6)
    assert v.n_channels == 1
    assert v.kind is Kind.IMAGE


def test_label_requires_integer_and_converts_whole_floats_losslessly():
    v = Volume.label(np.array([[[0.0, 1.0], [2.0, 300.0]]]), np.eye(4))
    assert v.array.dtype == np.int16  # 300 does not fit uint8
    assert v.array.tolist() == [[[0, 1], [2, 300]]]
    with pytest.raises(MedsegError, match="non-integer"):
        Volume.label(np.array([[[0.0, 0.5]]]), np.eye(4))
    with pytest.raises(MedsegError, match="integer dtype"):
        Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), Kind.LABEL)


def test_as_label_array_keeps_integer_arrays_untouched():
    a = np.array([[[0, 7]]], dtype=np.int32)
    assert as_label_array(a) is a
    assert as_label_array(np.array([[[True]]])).dtype == np.uint8


def test_spacing_from_affine_columns():
    affine = np.array([[0, -0.8, 0, 1], [-0.8, 0, 0, 2], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    v = Volume.image(np.zeros((2, 3, 4)), affine)
    assert v.spacing == pytest.approx((0.8, 0.8, 2.5))


@pytest.mark.parametrize(
    "affine, msg",
    [
        (np.eye(3), "4x4"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_bad_affines_are_refused(affine, msg):
    with pytest.raises(GeometryError, match=msg):
        Volume.image(np.zeros((2, 2, 2)), affine)


def test_affine_is_read_only():
    v = Volume.image(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError):
        v.affine[0, 0] = 5


def test_with_array_checks_spatial_shape():
    v = Volume.image(np.zeros((2, 3, 4)), np.eye(4))
    assert v.with_array(np.ones((3, 2, 3, 4))).n_channels == 3
    with pytest.raises(MedsegError):
        v.with_array(np.ones((1, 2, 3, 5)))
