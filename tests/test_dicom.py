"""DICOM series reading against SimpleITK, and clear handling of invalid series."""

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.core import DicomSeriesError
from medseg.geometry import LPS_TO_RAS, to_canonical
from medseg.io import read_dicom_series, read_volume, scan_series
from medseg.io.dicom_geometry import stack_slices

VALID = ["mr_hippocampus_crop_study1", "mr_hippocampus_crop_study2", "ct_abdomen_jpeg2000"]


def sitk_reference(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    arr = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))  # (X, Y, Z)
    return image, arr


@pytest.mark.parametrize("name", VALID)
def test_geometry_and_values_match_simpleitk(dicom_dir, name):
    folder = dicom_dir / name
    vol, info = read_dicom_series(folder)
    ref, ref_arr = sitk_reference(folder)
    assert vol.spatial_shape == ref.GetSize()
    assert np.allclose(vol.spacing, ref.GetSpacing(), atol=1e-4)
    lps = LPS_TO_RAS @ vol.affine  # back to ITK's LPS
    direction = lps[:3, :3] / np.array(vol.spacing)
    assert np.allclose(direction, np.array(ref.GetDirection()).reshape(3, 3), atol=1e-4)
    assert np.allclose(lps[:3, 3], ref.GetOrigin(), atol=1e-4)
    assert np.array_equal(vol.array[0].astype(np.float64), ref_arr.astype(np.float64))
    assert len(info.files) == len(info.sop_instance_uids) == vol.spatial_shape[2]


def test_jpeg2000_is_decoded_and_rescaled_to_hounsfield(dicom_dir):
    vol, info = read_dicom_series(dicom_dir / "ct_abdomen_jpeg2000")
    assert "JPEG 2000" in info.transfer_syntax
    assert vol.array.min() == -1024  # RescaleIntercept applied
    assert info.modality == "CT"


def test_slices_are_ordered_along_the_normal_whatever_the_file_order(dicom_dir, tmp_path):
    src = dicom_dir / "mr_hippocampus_crop_study1"
    # copy under names that sort in reverse of the anatomical order
    files = sorted(src.iterdir(), key=lambda p: int(p.stem))
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"z{len(files) - i:03d}.dcm")
    a, _ = read_dicom_series(src)
    b, _ = read_dicom_series(tmp_path)
    assert np.array_equal(a.array, b.array)
    assert np.array_equal(a.affine, b.affine)


def test_folder_with_two_series_needs_a_choice(dicom_dir, tmp_path):
    for name in ("mr_hippocampus_crop_study1", "ct_abdomen_jpeg2000"):
        for f in (dicom_dir / name).iterdir():
            shutil.copy(f, tmp_path / f"{name}_{f.name}")
    (tmp_path / "notes.txt").write_text("not dicom")
    series = scan_series(tmp_path)
    assert len(series) == 2
    with pytest.raises(DicomSeriesError, match="holds 2 series; choose one with --series") as e:
        read_dicom_series(tmp_path)
    for s in series:
        assert s.uid in str(e.value)
    mr = next(s for s in series if s.modality == "MR")
    vol, info = read_dicom_series(tmp_path, mr.uid)
    assert info.series_uid == mr.uid and vol.spatial_shape == (35, 51, 32)
    with pytest.raises(DicomSeriesError, match="no series with SeriesInstanceUID 1.2.3"):
        read_dicom_series(tmp_path, "1.2.3")


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DicomSeriesError, match="no DICOM images found"):
        read_dicom_series(tmp_path)


def test_single_dicom_file_reads_its_whole_series(dicom_dir):
    folder = dicom_dir / "mr_hippocampus_crop_study2"
    vol = read_volume(folder / "7.dcm")
    assert vol.spatial_shape == read_dicom_series(folder)[0].spatial_shape


def test_multiframe_object_equals_its_single_frame_series(dicom_dir):
    ref = dicom_dir / "seg_reference" / "24x38x3"
    mf, _ = read_dicom_series(ref / "multiframe")
    sf, _ = read_dicom_series(ref / "image")
    assert np.array_equal(mf.array, sf.array)
    assert np.allclose(mf.affine, sf.affine, atol=1e-6)


# --- the five kinds of invalid series -------------------------------------------------

INVALID = {
    "gantrytilting/001": r"gantry tilt of 14\.0 degrees.*not form a rectangular grid",
    "notavolume/001": r"not a volume: 4 of 4 images share a slice position.*echoes",
    "sliceincrement/001": r"1 slice\(s\) missing.*5 mm apart.*between 28\.107 mm and 38\.107 mm",
    "sliceincrement/002": r"gantry tilt of 15\.5 degrees",
    "sliceorientation/001": r"mixed slice orientations.*2 sagittal, 2 axial.*localizer",
}


@pytest.mark.parametrize("name, pattern", INVALID.items())
def test_invalid_series_give_clear_errors_naming_the_folder(dicom_dir, name, pattern):
    folder = dicom_dir / "invalid_series" / name
    with pytest.raises(DicomSeriesError, match=pattern) as e:
        read_dicom_series(folder)
    assert str(folder) in str(e.value)


def test_two_slice_series_matches_the_reference_conversion(dicom_dir):
    """'slicecount' (2 slices) is a valid, if thin, volume: read it and compare with the
    reference NIfTI. The reference stacks the slices in the opposite order, so compare
    after canonical reorientation, where both must agree exactly."""
    import nibabel as nib

    base = dicom_dir / "invalid_series" / "slicecount"
    vol, _ = read_dicom_series(base / "001")
    assert vol.spatial_shape == (256, 256, 2)
    ref = nib.load(base / "001_ground_truth.nii.gz")
    ours = to_canonical(vol)[0]
    theirs = nib.as_closest_canonical(ref)
    assert np.array_equal(ours.array[0], np.asanyarray(theirs.dataobj))
    assert np.allclose(ours.affine, theirs.affine, atol=1e-4)


def test_one_slice_is_not_a_volume(dicom_dir, tmp_path):
    src = next((dicom_dir / "mr_hippocampus_crop_study1").iterdir())
    shutil.copy(src, tmp_path / "only.dcm")
    with pytest.raises(DicomSeriesError, match="only one image"):
        read_dicom_series(tmp_path)


def test_image_without_position_is_refused(dicom_dir, tmp_path):
    for f in (dicom_dir / "mr_hippocampus_crop_study1").iterdir():
        ds = pydicom.dcmread(f)
        if f.name == "5.dcm":
            del ds.ImagePositionPatient
        ds.save_as(tmp_path / f.name)
    with pytest.raises(DicomSeriesError, match="5.dcm: missing or malformed ImagePositionPatient"):
        read_dicom_series(tmp_path)


# --- the stacking rules on exact numbers ---------------------------------------------

AXIAL = [1, 0, 0, 0, 1, 0]


def stack(z, orientation=AXIAL, xy=None, spacing=(0.5, 0.5), shape=(64, 64)):
    n = len(z)
    pos = np.zeros((n, 3))
    pos[:, 2] = z
    if xy is not None:
        pos[:, :2] = xy
    return stack_slices(pos, [orientation] * n, [spacing] * n, [shape] * n, where="S")


def test_stack_geometry_uses_mean_gap_and_first_position():
    s = stack([10.0, 2.0, 6.0, 4.0, 8.0])
    assert s.order == (1, 3, 2, 4, 0)
    assert s.slice_spacing == pytest.approx(2.0)
    assert np.allclose(s.affine_lps[:3, 3], [0, 0, 2.0])
    assert np.allclose(s.affine_lps[:3, :3], np.diag([0.5, 0.5, 2.0]))


def test_stack_tolerates_rounding_in_positions():
    s = stack([0.0, 2.0000004, 3.9999996, 6.0])
    assert s.slice_spacing == pytest.approx(2.0)


def test_stack_detects_uneven_spacing():
    with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
        stack([0.0, 2.0, 4.0, 7.0])


def test_stack_detects_tilt_and_reports_angle():
    z = np.arange(5) * 5.0
    xy = np.stack([np.zeros(5), z * np.tan(np.radians(10))], axis=1)
    with pytest.raises(DicomSeriesError, match="gantry tilt of 10.0 degrees"):
        stack(z, xy=xy)


def test_stack_detects_irregular_drift():
    z = np.arange(5) * 5.0
    xy = np.array([[0, 0], [0, 3], [0, 0], [0, 3], [0, 0]], float)
    with pytest.raises(DicomSeriesError, match="do not line up"):
        stack(z, xy=xy)


def test_stack_detects_mixed_sizes_and_spacings():
    pos = np.zeros((3, 3))
    pos[:, 2] = [0, 1, 2]
    with pytest.raises(DicomSeriesError, match="different image sizes"):
        stack_slices(pos, [AXIAL] * 3, [(1, 1)] * 3, [(64, 64), (64, 64), (32, 64)], where="S")
    with pytest.raises(DicomSeriesError, match="different pixel spacings"):
        stack_slices(pos, [AXIAL] * 3, [(1, 1), (1, 1), (2, 2)], [(8, 8)] * 3, where="S")


def test_stack_direction_follows_row_cross_column():
    # sagittal: rows along +y, columns along -z: normal = (0,1,0) x (0,0,-1) = (-1, 0, 0)
    pos = np.zeros((3, 3))
    pos[:, 0] = [5.0, 3.0, 4.0]
    s = stack_slices(pos, [[0, 1, 0, 0, 0, -1]] * 3, [(1, 1)] * 3, [(8, 8)] * 3, where="S")
    assert s.order == (0, 2, 1)  # ascending along the normal (-x)
    assert np.allclose(s.affine_lps[:3, 2], [-1, 0, 0])


def test_stack_counts_every_image_that_shares_a_position():
    with pytest.raises(DicomSeriesError, match="4 of 5 images share.*up to 2 images"):
        stack([0.0, 0.0, 1.0, 2.0, 2.0])
