"""RTSTRUCT writing: the pure contour functions on hand-made arrays, then a real MR series
checked by dciodvfy and read back by two readers: one here (pydicom, even-odd filling by
voxel centre, each contour placed by the image it references) and plastimatch, an
independent one. Last, ``medseg predict --formats rtstruct`` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from conftest import run_medseg
from dicom_tools import dciodvfy_errors, dciodvfy_warnings
from skimage.draw import polygon2mask

from medseg.core.errors import RtStructError
from medseg.core.palette import PALETTE
from medseg.inference.bundle import load_model
from medseg.io import read_dicom_series, read_volume
from medseg.io.dicom_geometry import stack_slices
from medseg.io.dicom_series import SeriesInfo
from medseg.io.rtstruct import (
    RtStructMetadata,
    index_to_patient,
    mask_contours,
    roi_plan,
    write_rtstruct,
)

MR = "mr_hippocampus_crop_study1"
NAMES = {0: "background", 1: "ring", 2: "corner", 3: "absent"}
PLASTIMATCH = "plastimatch"


def even_odd(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill contours ``(N, 2)`` of ``(i, j)`` points by voxel centre, even-odd (XOR)."""
    out = np.zeros(shape, bool)
    for c in contours:
        out ^= polygon2mask(shape, c)
    return out


def polygon_area(c: np.ndarray) -> float:
    """Signed area (shoelace): the sign gives the winding."""
    x, y = c[:, 0], c[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# ---------------------------------------------------------------- pure contour functions


def test_square_is_an_octagon_half_a_voxel_out():
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:5] = True  # 3 x 3 voxels
    (c,) = mask_contours(mask)
    expected = {(0.5, 2), (0.5, 4), (1, 4.5), (3, 4.5), (3.5, 4), (3.5, 2), (3, 1.5), (1, 1.5)}
    assert {tuple(p) for p in c.tolist()} == expected  # straight-run points dropped
    assert len(c) == 8 and not np.array_equal(c[0], c[-1])  # closed implicitly
    assert abs(polygon_area(c)) == 9 - 4 / 8  # the voxel area, less 1/8 voxel per corner
    assert np.array_equal(even_odd([c], mask.shape), mask)


def test_a_hole_is_a_contour_inside_with_the_other_winding():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False
    contours = mask_contours(mask)
    assert len(contours) == 2
    outer, inner = sorted(contours, key=lambda c: -abs(polygon_area(c)))
    assert {tuple(p) for p in inner.tolist()} == {(2.5, 3), (3, 3.5), (3.5, 3), (3, 2.5)}
    assert np.sign(polygon_area(outer)) == -np.sign(polygon_area(inner))
    assert np.array_equal(even_odd(contours, mask.shape), mask)  # the hole survives
    assert even_odd([outer], mask.shape)[3, 3]  # a reader that drops holes fills it


def test_separate_blobs_and_corner_neighbours_are_separate_contours():
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # at the border: closed along the outer voxel edges
    mask[5, 5] = mask[6, 6] = True  # touching at a corner only (4-connected foreground)
    contours = mask_contours(mask)
    assert len(contours) == 3
    assert min(float(c.min()) for c in contours) == -0.5
    assert np.array_equal(even_odd(contours, mask.shape), mask)


def test_empty_slice_has_no_contours_and_3d_is_refused():
    assert mask_contours(np.zeros((4, 5), np.uint8)) == []
    with pytest.raises(RtStructError, match="2D mask"):
        mask_contours(np.zeros((2, 2, 2)))


def test_random_masks_round_trip_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((12, 9)) < 0.45
        assert np.array_equal(even_odd(mask_contours(mask), mask.shape), mask)


def test_index_to_patient_follows_dicom_geometry():
    # sagittal: columns run anterior -> posterior (+y), rows run head -> feet (-z)
    orientation, spacing = [0, 1, 0, 0, 0, -1], [2.0, 0.5]  # PixelSpacing: rows, columns
    p = index_to_patient([[2, 3]], [10, 20, 30], orientation, spacing)
    assert np.allclose(p, [[10, 20 + 2 * 0.5, 30 - 3 * 2.0]])


def test_index_to_patient_agrees_with_the_series_affine_for_an_oblique_stack():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    row, col = q[:, 0], q[:, 1]
    normal = np.cross(row, col)
    origin, spacing = np.array([-12.5, 40.0, 7.25]), [0.7, 1.3]
    positions = [origin + k * 2.5 * normal for k in range(3)]
    stack = stack_slices(
        positions, [np.r_[row, col]] * 3, [spacing] * 3, [(5, 4)] * 3, where="test"
    )
    ij = rng.uniform(-0.5, 4.5, size=(10, 2))
    for k in range(3):
        expected = (stack.affine_lps @ np.c_[ij, np.full(10, k), np.ones(10)].T).T[:, :3]
        got = index_to_patient(ij, positions[stack.order[k]], np.r_[row, col], spacing)
        assert np.allclose(got, expected)


def test_roi_plan_and_metadata_are_checked():
    assert roi_plan({0: "bg", 4: "b", 1: "a"}) == [(1, "a"), (4, "b")]
    with pytest.raises(RtStructError, match="invert that one"):
        roi_plan({"liver": 1})
    with pytest.raises(RtStructError, match="no foreground label"):
        roi_plan({0: "background"})
    with pytest.raises(RtStructError, match="RTROIInterpretedType"):
        RtStructMetadata(interpreted_types={1: "LIVER"})
    assert len(set(PALETTE)) == len(PALETTE) and (0, 0, 0) not in PALETTE


# ---------------------------------------------------------------- a real MR series


class Written(NamedTuple):
    path: Path
    label: np.ndarray
    info: SeriesInfo
    affine: np.ndarray


def structures(shape: tuple[int, int, int]) -> np.ndarray:
    """1: an off-centre ellipsoid with a tube-shaped hole; 2: an ellipsoid cut by three
    faces of the volume plus a block on the y = 0 face (asymmetric along every axis)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    label = np.zeros(shape, np.uint8)
    ring = ((x - 10) / 7) ** 2 + ((y - 15) / 10) ** 2 + ((z - 12) / 8) ** 2 <= 1
    label[ring & (((x - 10) / 3) ** 2 + ((y - 15) / 4) ** 2 > 1)] = 1
    nx, ny, nz = shape
    label[((x - nx + 1) / 8) ** 2 + ((y - ny + 11) / 12) ** 2 + ((z - nz + 1) / 10) ** 2 <= 1] = 2
    label[20:24, 0:5, 3:6] = 2
    return label


@pytest.fixture(scope="module")
def mr_rtstruct(dicom_dir, tmp_path_factory) -> Written:
    volume, info = read_dicom_series(dicom_dir / MR)
    label = structures(volume.spatial_shape)
    path = tmp_path_factory.mktemp("rtstruct") / "out" / "structures.dcm"
    write_rtstruct(label, info, NAMES, path, RtStructMetadata(interpreted_types={1: "ORGAN"}))
    return Written(path, label, info, volume.affine)


def test_fixture_is_non_trivial(mr_rtstruct):
    label = mr_rtstruct.label
    assert (label == 1).sum() > 1000 and (label == 2).sum() > 500 and not (label == 3).any()
    assert label[:, 0, :].any() and label[-1].any() and label[:, :, -1].any()  # borders
    for axis in range(3):  # no flip of the fixture is the fixture: orientation shows
        assert not np.array_equal(np.flip(label == 2, axis), label == 2)


def test_dciodvfy_finds_no_error(mr_rtstruct):
    warnings = dciodvfy_warnings(mr_rtstruct.path)
    print(f"dciodvfy: {len(warnings)} warning(s)", *warnings, sep="\n  ")
    assert dciodvfy_errors(mr_rtstruct.path) == []


def test_header_references_the_series_in_its_study(mr_rtstruct, dicom_dir):
    ds = pydicom.dcmread(mr_rtstruct.path)
    info = mr_rtstruct.info
    source = pydicom.dcmread(info.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == info.study_uid and ds.SeriesInstanceUID != info.series_uid
    for key in ("PatientName", "PatientID", "StudyDate", "StudyID", "AccessionNumber"):
        assert ds[key].value == source[key].value
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == info.frame_of_reference_uid
    (study,) = frame.RTReferencedStudySequence
    (series,) = study.RTReferencedSeriesSequence
    assert study.ReferencedSOPInstanceUID == info.study_uid
    assert series.SeriesInstanceUID == info.series_uid
    refs = [r.ReferencedSOPInstanceUID for r in series.ContourImageSequence]
    assert sorted(refs) == sorted(info.sop_instance_uids)
    rois = [(r.ROINumber, r.ROIName) for r in ds.StructureSetROISequence]
    assert rois == [(1, "ring"), (2, "corner"), (3, "absent")]
    colours = [tuple(r.ROIDisplayColor) for r in ds.ROIContourSequence]
    assert colours == list(PALETTE[:3])
    assert "ContourSequence" not in ds.ROIContourSequence[2]  # listed, no contours
    types = [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence]
    assert types == ["ORGAN", "", ""]
    assert [p.name for p in mr_rtstruct.path.parent.iterdir()] == ["structures.dcm"]


def read_back(path: Path, info: SeriesInfo) -> dict[int, np.ndarray]:
    """ROI number -> mask ``(X, Y, Z)``: each contour placed on the image it references,
    mapped to that image's (column, row) indices with its own header, filled even-odd."""
    ds = pydicom.dcmread(path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in info.files]
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    masks = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            k = info.sop_instance_uids.index(uid)
            h = headers[k]
            o = np.asarray(h.ImageOrientationPatient, float).reshape(2, 3)
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            rel = points - np.asarray(h.ImagePositionPatient, float)
            assert np.allclose(rel @ np.cross(o[0], o[1]), 0, atol=1e-3)  # in its plane
            ij = np.c_[rel @ o[0] / float(h.PixelSpacing[1]), rel @ o[1] / float(h.PixelSpacing[0])]
            mask[:, :, k] ^= polygon2mask(shape[:2], ij)
        masks[int(roi.ReferencedROINumber)] = mask
    return masks


def test_contours_fill_back_to_the_label_map_exactly(mr_rtstruct):
    masks = read_back(mr_rtstruct.path, mr_rtstruct.info)
    for value in (1, 2, 3):
        assert np.array_equal(masks[value], mr_rtstruct.label == value)


def require_plastimatch() -> str:
    """plastimatch's path; skip the test without it, or fail it in CI (``CI=true``)."""
    exe = shutil.which(PLASTIMATCH)
    if exe is None:
        message = "plastimatch (Debian/Ubuntu package plastimatch; make tools) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must read RTSTRUCT output back with it")
        pytest.skip(message)
    return exe


def plastimatch_masks(rtstruct: Path, series: Path, out: Path, *extra: str) -> dict[str, Path]:
    """plastimatch's rasterisation of each structure on the series' own grid: the series is
    converted to an image by plastimatch first (its --fixed does not take DICOM folders)."""
    exe = require_plastimatch()

    def convert(*args) -> None:
        run = subprocess.run(
            [exe, "convert", *map(str, args)], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    grid, masks = out / "series.mha", out / "masks"
    convert("--input", series, "--output-img", grid)
    convert("--input", rtstruct, "--fixed", grid, "--output-prefix", masks, "--prefix-format",
            "nii.gz", *extra)  # fmt: skip
    return {p.name.removesuffix(".nii.gz"): p for p in masks.glob("*.nii.gz")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_plastimatch_reads_the_structures_back(mr_rtstruct, dicom_dir, tmp_path):
    """Even-odd filling (--xor-contours): Dice 1.0 per structure, holes kept, on the
    series' grid in the same voxel order (no flip of the asymmetric structure matches)."""
    files = plastimatch_masks(mr_rtstruct.path, dicom_dir / MR, tmp_path, "--xor-contours")
    assert sorted(files) == ["corner", "ring"]  # plastimatch drops ROIs without contours
    for value, name in ((1, "ring"), (2, "corner")):
        volume = read_volume(files[name])
        assert np.allclose(volume.affine, mr_rtstruct.affine, atol=1e-4)
        mask, expected = volume.array[0] > 0, mr_rtstruct.label == value
        score = dice(mask, expected)
        print(f"plastimatch --xor-contours: {name} Dice {score:.4f}")
        assert score >= 0.95
        for axis in range(3):
            assert dice(np.flip(mask, axis), expected) < 0.5


def test_plastimatch_default_merging_fills_the_holes(mr_rtstruct, dicom_dir, tmp_path):
    """Without --xor-contours plastimatch ORs contours: exactly the ring's hole is filled."""
    files = plastimatch_masks(mr_rtstruct.path, dicom_dir / MR, tmp_path)
    ring = read_volume(files["ring"]).array[0] > 0
    corner = read_volume(files["corner"]).array[0] > 0
    assert np.array_equal(corner, mr_rtstruct.label == 2)
    extra = ring & (mr_rtstruct.label != 1)
    assert extra.any() and np.array_equal(ring & ~extra, mr_rtstruct.label == 1)
    print(f"plastimatch (OR): ring Dice {dice(ring, mr_rtstruct.label == 1):.4f}")


def test_label_map_that_does_not_fit_is_refused(mr_rtstruct, tmp_path):
    label = mr_rtstruct.label
    with pytest.raises(RtStructError, match="does not match the series"):
        write_rtstruct(label[:, :, :-1], mr_rtstruct.info, NAMES, tmp_path / "a.dcm")
    with pytest.raises(RtStructError, match=r"label values \[7\] are not in label_names"):
        write_rtstruct(np.where(label == 2, 7, label), mr_rtstruct.info, NAMES, tmp_path / "b")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- medseg predict


@pytest.mark.slow
def test_predict_writes_an_rtstruct_for_dicom_inputs_only(
    untrained_model, dicom_dir, hippocampus, tmp_path
):
    out = tmp_path / "out"
    nifti = sorted((hippocampus / "imagesTr").glob("*.nii.gz"))[0]
    series = dicom_dir / MR
    r = run_medseg(
        "predict", "-m", untrained_model, "-i", series, nifti, "-o", out,
        "--device", "cpu", "--formats", "nifti", "rtstruct", "--engine", "torch", "--no-mirroring",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    records = {x["case_id"]: x for x in map(json.loads, (out / "manifest.jsonl").open())}
    assert set(records[MR]["outputs"]) == {"nifti", "rtstruct"}
    case = nifti.name.removesuffix(".nii.gz")
    assert set(records[case]["outputs"]) == {"nifti"} and records[case]["status"] == "ok"
    path = out / f"{MR}.rtstruct.dcm"
    assert records[MR]["outputs"]["rtstruct"] == str(path.resolve())
    assert dciodvfy_errors(path) == []
    _, info = read_dicom_series(series)
    ds = pydicom.dcmread(path)
    assert ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].SeriesInstanceUID == info.series_uid  # fmt: skip
    names = load_model(untrained_model, "cpu").label_names
    rois = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    assert rois == {v: name for v, name in names.items() if v}  # one ROI per label
    label = np.asarray(read_volume(out / f"{MR}.nii.gz").array[0])
    assert label.any()
    for value, mask in read_back(path, info).items():
        assert np.array_equal(mask, label == value)
