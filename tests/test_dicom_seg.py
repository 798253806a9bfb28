"""DICOM-SEG writing and reading on real series, validated by dciodvfy and dcmqi's SEGs.

The independent oracle for frame placement is :func:`frames_by_reference`: it
decodes a SEG with pydicom alone and puts each frame on the slice whose
SOPInstanceUID the frame references, so the tests do not trust highdicom or
``read_dicom_seg`` to place frames.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from dicom_tools import dciodvfy_errors, dciodvfy_warnings
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import medseg
from medseg.core import MedsegError
from medseg.core.errors import DicomSegError
from medseg.core.volume import Volume
from medseg.geometry import LPS_TO_RAS
from medseg.io import read_dicom_series, read_volume
from medseg.io.dicom_seg import write_dicom_seg
from medseg.io.dicom_seg_read import read_dicom_seg, read_dicom_seg_names, segment_label_values
from medseg.io.dicom_series import SeriesInfo

MR = ["mr_hippocampus_crop_study1", "mr_hippocampus_crop_study2"]
NAMES = {0: "background", 1: "anterior", 2: "posterior"}


class Written(NamedTuple):
    path: Path
    label: np.ndarray
    volume: Volume
    info: SeriesInfo


def ellipsoids(shape: tuple[int, int, int]) -> np.ndarray:
    """Two overlapping ellipsoids (labels 1, 2) with an empty slab of 3 slices through both."""
    x, y, z = (np.arange(n) / n for n in shape)
    x, y, z = np.meshgrid(x, y, z, indexing="ij")
    label = np.zeros(shape, np.uint8)
    label[((x - 0.35) / 0.2) ** 2 + ((y - 0.4) / 0.25) ** 2 + ((z - 0.45) / 0.3) ** 2 <= 1] = 1
    label[((x - 0.6) / 0.2) ** 2 + ((y - 0.6) / 0.2) ** 2 + ((z - 0.55) / 0.25) ** 2 <= 1] = 2
    mid = shape[2] // 2
    label[:, :, mid - 1 : mid + 2] = 0
    return label


def frames_by_reference(path: Path, info: SeriesInfo) -> np.ndarray:
    """Segment numbers ``(X, Y, Z)`` from a BINARY SEG, decoded by pydicom only."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    out = np.zeros((int(ds.Columns), int(ds.Rows), len(info.files)), np.uint16)
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = info.sop_instance_uids.index(uid)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[:, :, k][frame.T.astype(bool)] = number
    return out


def check_dciodvfy(path: Path) -> None:
    warnings = dciodvfy_warnings(path)
    print(f"dciodvfy {path.name}: {len(warnings)} warning(s)", *warnings, sep="\n  ")
    assert dciodvfy_errors(path) == []


def test_dciodvfy_helper_reports_errors(dicom_dir):
    """The CT as shipped is itself invalid (blank SOPInstanceUID): the helper must say so."""
    first = sorted((dicom_dir / "ct_abdomen_jpeg2000").iterdir())[0]
    assert any("SOPInstanceUID" in line for line in dciodvfy_errors(first))


@pytest.fixture(scope="module", params=MR)
def mr_seg(request, dicom_dir, tmp_path_factory) -> Written:
    volume, info = read_dicom_series(dicom_dir / request.param)
    label = ellipsoids(volume.spatial_shape)
    path = tmp_path_factory.mktemp(request.param) / "seg" / "prediction.dcm"
    write_dicom_seg(label, info, NAMES, path)
    return Written(path, label, volume, info)


@pytest.fixture(scope="module")
def ct_series(dicom_dir, tmp_path_factory) -> Path:
    """The JPEG 2000 CT with the Study/Series UIDs its anonymiser blanked put back.

    Only those two UIDs are set (pixel data untouched); the empty SOP Class /
    Instance UIDs stay empty, so the writer's fallback to the file meta
    information is exercised.
    """
    folder = tmp_path_factory.mktemp("ct_jpeg2000")
    study, series = generate_uid(entropy_srcs=["study"]), generate_uid(entropy_srcs=["series"])
    for f in sorted((dicom_dir / "ct_abdomen_jpeg2000").iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / f.name)
    return folder


def test_label_map_fixture_is_non_trivial(mr_seg):
    label = mr_seg.label
    per_slice = [set(np.unique(label[:, :, k])) for k in range(label.shape[2])]
    assert {0} in per_slice and {0, 1, 2} in per_slice and {0, 1} in per_slice
    mid = label.shape[2] // 2
    assert not label[:, :, mid - 1 : mid + 2].any()
    assert label[:, :, mid - 2].any() and label[:, :, mid + 2].any()


def test_mr_round_trip_is_exact(mr_seg):
    back = read_dicom_seg(mr_seg.path, mr_seg.info)
    assert back.shape == mr_seg.label.shape and np.issubdtype(back.dtype, np.integer)
    assert np.array_equal(back, mr_seg.label)
    assert read_dicom_seg_names(mr_seg.path) == {1: "anterior", 2: "posterior"}
    assert [p.name for p in mr_seg.path.parent.iterdir()] == ["prediction.dcm"]  # no temp left


def test_mr_seg_references_the_source_series(mr_seg):
    ds = pydicom.dcmread(mr_seg.path, stop_before_pixels=True)
    src = pydicom.dcmread(mr_seg.info.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    (ref_series,) = ds.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == mr_seg.info.series_uid
    referenced = [r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(mr_seg.info.sop_instance_uids)
    assert ds.StudyInstanceUID == src.StudyInstanceUID == mr_seg.info.study_uid
    assert ds.FrameOfReferenceUID == mr_seg.info.frame_of_reference_uid
    assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
    assert ds.SeriesInstanceUID != mr_seg.info.series_uid
    assert (ds.SeriesNumber, ds.SeriesDescription) == (300, "medseg segmentation")
    assert (ds.ContentLabel, ds.Manufacturer) == ("MEDSEG", "medseg")


def test_mr_segments_describe_labels_and_algorithm(mr_seg):
    ds = pydicom.dcmread(mr_seg.path, stop_before_pixels=True)
    segments = list(ds.SegmentSequence)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in segments] == [
        (1, "anterior"),
        (2, "posterior"),
    ]
    for s in segments:
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "medseg"
        (algorithm,) = s.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
            "medseg",
            medseg.__version__,
        )
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
        for seq in (s.SegmentedPropertyCategoryCodeSequence, s.SegmentedPropertyTypeCodeSequence):
            assert (seq[0].CodeValue, seq[0].CodingSchemeDesignator) == ("85756007", "SCT")
        assert not any(e.tag.is_private for e in s)  # labels 1, 2 = segments 1, 2: no mapping
    assert segment_label_values(ds) == {1: 1, 2: 2}


def test_mr_frames_lie_on_their_source_slices(mr_seg):
    ds = pydicom.dcmread(mr_seg.path, stop_before_pixels=True)
    info, label = mr_seg.info, mr_seg.label
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in info.files]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose(iop, sources[0].ImageOrientationPatient, atol=1e-6)
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    assert np.allclose(spacing, sources[0].PixelSpacing, atol=1e-6)
    frames = set()
    for item in ds.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = info.sop_instance_uids.index(uid)
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(ipp, sources[k].ImagePositionPatient, atol=1e-6)
        lps = LPS_TO_RAS @ mr_seg.volume.affine @ [0, 0, k, 1]  # the Volume's slice k origin
        assert np.allclose(ipp, lps[:3], atol=1e-4)
        frames.add((int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber), k))
    expected = {(v, k) for v in (1, 2) for k in range(label.shape[2]) if (label[..., k] == v).any()}
    assert frames == expected  # one frame per (segment, slice) holding it; empty ones omitted
    assert np.array_equal(frames_by_reference(mr_seg.path, info), label)
    # what dcmqi writes: the same functional groups, per frame and shared
    assert {e.keyword for e in ds.PerFrameFunctionalGroupsSequence[0]} >= {
        "DerivationImageSequence",
        "FrameContentSequence",
        "PlanePositionSequence",
        "SegmentIdentificationSequence",
    }
    assert {e.keyword for e in shared} >= {"PlaneOrientationSequence", "PixelMeasuresSequence"}


def test_mr_seg_passes_dciodvfy(mr_seg):
    check_dciodvfy(mr_seg.path)


@pytest.fixture(scope="module")
def study1(dicom_dir) -> tuple[Volume, SeriesInfo]:
    return read_dicom_series(dicom_dir / MR[0])


def test_label_values_that_are_not_segment_numbers_round_trip(study1, tmp_path):
    volume, info = study1
    label = ellipsoids(volume.spatial_shape) * np.uint8(4)  # values 0, 4, 8
    names = {4: "Läsion", 8: "edema", 11: "never present"}
    path = tmp_path / "noncontiguous.dcm"
    hippocampus = (codes.SCT.AnatomicalStructure, codes.SCT.Hippocampus)
    write_dicom_seg(label, info, names, path, property_codes={8: hippocampus})
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == list(names.values())
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in ds.SegmentSequence]
    assert types == ["Tissue", "Hippocampus", "Tissue"]
    assert segment_label_values(ds) == {1: 4, 2: 8, 3: 11}
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # non-ASCII segment label
    assert np.array_equal(read_dicom_seg(path, info), label)
    assert read_dicom_seg_names(path) == names
    check_dciodvfy(path)


def test_empty_label_map_is_a_valid_seg(study1, tmp_path):
    """A model that finds nothing still delivers a result.

    "Nothing segmented" is an answer a hospital user expects to see in PACS;
    a missing SEG looks like a failed job. All segments are described; as
    DICOM needs at least one frame, highdicom encodes every (empty) frame.
    """
    volume, info = study1
    path = tmp_path / "empty.dcm"
    write_dicom_seg(np.zeros(volume.spatial_shape, np.int16), info, NAMES, path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["anterior", "posterior"]
    assert int(ds.NumberOfFrames) >= 1
    back = read_dicom_seg(path, info)
    assert back.shape == volume.spatial_shape and not back.any()
    check_dciodvfy(path)


def test_undeclared_label_value_is_a_clear_error_and_writes_nothing(study1, tmp_path):
    volume, info = study1
    label = ellipsoids(volume.spatial_shape)
    label[0, 0, 0] = 3
    path = tmp_path / "out.dcm"
    write_dicom_seg(ellipsoids(volume.spatial_shape), info, NAMES, path)
    before = path.read_bytes()
    with pytest.raises(DicomSegError, match=r"label value 3 \(1 voxels\) not in label_names"):
        write_dicom_seg(label, info, NAMES, path)
    assert path.read_bytes() == before  # the earlier SEG is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]


@pytest.mark.parametrize(
    ("names", "shape_change", "message"),
    [
        ({0: "background"}, 0, "declares no foreground label"),
        ({"background": 0, "anterior": 1}, 0, "invert"),  # nnU-Net dataset.json direction
        ({1: "a\\b"}, 0, "not a valid DICOM long string"),
        (NAMES, 1, "does not match the series"),
    ],
)
def test_bad_input_is_a_clear_error(study1, tmp_path, names, shape_change, message):
    volume, info = study1
    x, y, z = volume.spatial_shape
    label = np.zeros((x, y, z + shape_change), np.uint8)
    with pytest.raises(MedsegError, match=message):
        write_dicom_seg(label, info, names, tmp_path / "out.dcm")
    with pytest.raises(DicomSegError, match="content_label"):
        write_dicom_seg(label, info, NAMES, tmp_path / "out.dcm", content_label="lower case")
    assert not any(tmp_path.iterdir())


def test_ct_jpeg2000_512x512x20(ct_series, tmp_path):
    volume, info = read_dicom_series(ct_series)
    assert volume.spatial_shape == (512, 512, 20) and "JPEG 2000" in info.transfer_syntax
    label = (volume.array[0] > 150).astype(np.uint8)  # bone and contrast: dense, every slice
    label[:, :, 5:8] = 0
    path = tmp_path / "ct_seg.dcm"
    start = time.perf_counter()
    write_dicom_seg(label, info, {1: "bone"}, path)
    written = time.perf_counter() - start
    back = read_dicom_seg(path, info)
    read = time.perf_counter() - start - written
    print(f"CT 512x512x20: write {written:.2f} s, read {read:.2f} s, {path.stat().st_size} B")
    assert np.array_equal(back, label)
    # the SOPInstanceUIDs are empty in the images: the file meta ones are referenced
    meta_uids = [pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in info.files]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced) == sorted(meta_uids)
    check_dciodvfy(path)


def test_series_with_blank_uids_is_a_clear_error(dicom_dir, tmp_path):
    """The CT as shipped has empty Study/Series UIDs: no SEG could reference it."""
    _, info = read_dicom_series(dicom_dir / "ct_abdomen_jpeg2000")
    label = np.zeros((512, 512, 20), np.uint8)
    with pytest.raises(DicomSegError, match="no StudyInstanceUID.*Export the series again"):
        write_dicom_seg(label, info, {1: "bone"}, tmp_path / "out.dcm")


def test_reads_dcmqi_reference_seg(dicom_dir):
    """dcmqi's ``label.seg`` reads back as the NRRD label map it was made from.

    Compared: geometry (the NRRD lies on the DICOM series' grid), the voxels,
    the segment names, and the frame placement against the pydicom-only oracle.
    """
    ref = dicom_dir / "seg_reference" / "24x38x3"
    volume, info = read_dicom_series(ref / "image")
    nrrd = read_volume(ref / "nrrd" / "label.nrrd")
    assert np.allclose(nrrd.affine, volume.affine, atol=1e-4)
    label = read_dicom_seg(ref / "seg" / "label.seg", info)
    assert label.shape == volume.spatial_shape
    assert np.array_equal(label, nrrd.array[0]) and label.sum() == 315
    assert np.array_equal(label, frames_by_reference(ref / "seg" / "label.seg", info))
    assert read_dicom_seg_names(ref / "seg" / "label.seg") == {1: "Liver"}


def test_reads_dcmqi_sparse_labelmap_seg(dicom_dir):
    """The LABELMAP test object holds the NRRD's slice-1 mask at slices 0 and 2 only."""
    ref = dicom_dir / "seg_reference"
    _, info = read_dicom_series(ref / "24x38x3" / "image")
    nrrd = read_volume(ref / "24x38x3" / "nrrd" / "label.nrrd").array[0]
    label = read_dicom_seg(ref / "sparse-labelmap-noppv.dcm", info)
    assert np.array_equal(label[:, :, 0], nrrd[:, :, 1])
    assert np.array_equal(label[:, :, 2], nrrd[:, :, 1])
    assert not label[:, :, 1].any()


def test_reads_dcmqi_ct_seg_and_rejects_overlaps_and_other_series(dicom_dir):
    ref = dicom_dir / "seg_reference"
    _, info = read_dicom_series(ref / "ct-3slice")
    liver = read_dicom_seg(ref / "liver.dcm", info)
    assert liver.shape == (512, 512, 3) and liver.any()
    assert np.array_equal(liver, frames_by_reference(ref / "liver.dcm", info))
    with pytest.raises(DicomSegError, match="overlap"):
        read_dicom_seg(ref / "partial_overlaps.dcm", info)
    _, small = read_dicom_series(ref / "24x38x3" / "image")
    with pytest.raises(DicomSegError, match="not on the grid of the series"):
        read_dicom_seg(ref / "liver.dcm", small)
