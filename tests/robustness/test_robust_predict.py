"""``medseg predict`` on inputs that must not give an answer, and outputs that must not land.

Per class: the exit code, a message naming the file and the problem, no traceback,
inputs byte-identical afterwards, no partial outputs, and in batches the good
cases still done.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg

from medseg.inference.bundle import export_model
from robustness.robust_tools import assert_clean_failure, tree_digest, write_nifti


@pytest.fixture(scope="module")
def model(demo_models, tmp_path_factory) -> Path:
    """A medseg model folder (tiny 3d_fullres, one fold) from the session's demo models."""
    _, plans, _, checkpoints = demo_models
    return export_model(
        tmp_path_factory.mktemp("model") / "model",
        plans,
        [{"configuration": "3d_fullres", "folds": [0]}],
        {"3d_fullres": {0: checkpoints["3d_fullres"][0]}},
    )


@pytest.fixture()
def scans(demo_dataset, tmp_path) -> Path:
    """A folder of three good demo scans (copies)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("imagesTs/demo_100", "imagesTs/demo_101", "imagesTr/demo_000"):
        shutil.copy(demo_dataset / f"{name}.nii.gz", folder / f"{Path(name).name}.nii.gz")
    return folder


def predict(model, inputs, out, *extra):
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return run_medseg(
        "predict",
        "-m",
        model,
        "-i",
        *inputs,
        "-o",
        out,
        "--device",
        "cpu",
        "--engine",
        "torch",
        "--no-mirroring",
        *extra,
    )


def manifest(out: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return {x["case_id"]: x for x in lines}


def _variant(good: Path, target: Path, change) -> Path:
    img = nib.load(good)
    data = change(np.asanyarray(img.dataobj).astype(np.float32))
    return write_nifti(target, data, img.affine)


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if ".tmp" in p.name], list(folder.rglob(".*"))


# -- inputs are read-only -------------------------------------------------------------------


def test_output_folder_equal_to_the_input_is_refused_before_anything(model, scans):
    before = tree_digest(scans)
    result = predict(model, scans, scans)
    assert_clean_failure(result, 2, str(scans), "also an input")
    assert tree_digest(scans) == before  # nothing written, nothing replaced
    assert sorted(p.name for p in scans.iterdir()) == sorted(before)


def test_output_inside_an_input_folder_or_a_dicom_study_is_refused(
    model, scans, dicom_dir, tmp_path
):
    before = tree_digest(scans)
    assert_clean_failure(predict(model, scans, scans / "out"), 2, "inside the input folder")
    assert tree_digest(scans) == before and not (scans / "out").exists()
    study = tmp_path / "study"
    shutil.copytree(dicom_dir / "mr_hippocampus_crop_study1", study)
    before = tree_digest(study)
    assert_clean_failure(predict(model, study, study / "seg"), 2, str(study), "inside")
    assert tree_digest(study) == before


def test_an_output_that_would_replace_an_input_file_is_refused(model, scans):
    before = tree_digest(scans)
    result = predict(model, scans / "demo_100.nii.gz", scans)
    assert_clean_failure(result, 2, "demo_100.nii.gz", "overwrite the input")
    assert tree_digest(scans) == before


def test_a_file_medseg_did_not_write_is_never_overwritten(model, scans, tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / "demo_100.nii.gz").write_bytes(b"a reference segmentation drawn by hand")
    result = predict(model, scans, out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    records = manifest(out)
    assert records["demo_100"]["status"] == "failed"
    assert "not written by medseg" in records["demo_100"]["error"]
    assert (out / "demo_100.nii.gz").read_bytes() == b"a reference segmentation drawn by hand"
    assert records["demo_101"]["status"] == records["demo_000"]["status"] == "ok"
    # a rerun replaces medseg's own outputs (a killed run's too: claimed before written)
    again = predict(model, scans / "demo_101.nii.gz", out)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_failed_case_releases_its_output_names(model, scans, tmp_path):
    bad = _variant(scans / "demo_100.nii.gz", tmp_path / "in" / "case.nii.gz", np.zeros_like)
    out = tmp_path / "out"
    first = predict(model, bad, out)
    assert first.returncode == 1 and manifest(out)["case"]["status"] == "failed"
    # someone puts their own file where the failed case's output would have gone
    (out / "case.nii.gz").write_bytes(b"somebody's file")
    shutil.copy(scans / "demo_100.nii.gz", bad)  # the input is fixed; the name is taken
    result = predict(model, bad, out)
    assert result.returncode == 1 and "not written by medseg" in manifest(out)["case"]["error"]
    assert (out / "case.nii.gz").read_bytes() == b"somebody's file"


def test_output_that_is_a_file_or_cannot_be_written(model, scans, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    assert_clean_failure(predict(model, scans, a_file), 2, str(a_file), "not a folder")
    assert a_file.read_text() == "not a folder"
    below_a_file = a_file / "out"
    assert_clean_failure(predict(model, scans, below_a_file), 2, str(a_file))


def test_output_folder_without_write_permission(model, scans, readonly_dir):
    result = predict(model, scans, readonly_dir / "out")
    assert_clean_failure(result, 2, str(readonly_dir / "out"))


# -- the sanity gate ------------------------------------------------------------------------


def test_batch_of_three_good_and_three_bad_scans(model, scans, tmp_path):
    good = scans / "demo_100.nii.gz"
    _variant(good, scans / "bad_nan.nii.gz", lambda a: np.where(a > a.mean(), np.nan, a))
    _variant(good, scans / "bad_constant.nii.gz", lambda a: np.full_like(a, 40.0))
    _variant(good, scans / "bad_two_channels.nii.gz", lambda a: np.stack([a, a], -1))
    before = tree_digest(scans)
    out = tmp_path / "out"
    # the default engine, as users run it
    result = run_medseg(
        "predict", "-m", model, "-i", scans, "-o", out, "--device", "cpu", "--no-mirroring"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    records = manifest(out)
    assert {k: r["status"] for k, r in records.items()} == {
        "demo_000": "ok",
        "demo_100": "ok",
        "demo_101": "ok",
        "bad_nan": "failed",
        "bad_constant": "failed",
        "bad_two_channels": "failed",
    }
    reasons = {k: records[k]["error"] for k in ("bad_nan", "bad_constant", "bad_two_channels")}
    assert "NaN or infinite" in reasons["bad_nan"]
    assert "one value (40)" in reasons["bad_constant"]
    assert "expects 1 channel(s)" in reasons["bad_two_channels"]
    assert "the input has 2" in reasons["bad_two_channels"]
    for case, reason in reasons.items():
        assert reason.startswith(str(scans / f"{case}.nii.gz")), reason
        assert not (out / f"{case}.nii.gz").exists()
        assert [f["code"] for f in records[case]["findings"] if f["refuse"]]
    for case in ("demo_000", "demo_100", "demo_101"):
        assert nib.load(out / f"{case}.nii.gz").shape == nib.load(scans / f"{case}.nii.gz").shape
    assert tree_digest(scans) == before
    _no_temporaries(out)
    assert "3 done, 0 skipped, 3 failed" in result.stdout


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        ("inf", lambda a: np.where(a > a.mean(), np.inf, a), "NaN or infinite"),
        ("zeros", np.zeros_like, "one value (0)"),
        (
            "almost_blank",
            lambda a: np.where(np.arange(a.size).reshape(a.shape) % 997 == 0, 5.0, 0),
            "almost blank",
        ),
        ("one_slice", lambda a: a[:, :, :1], "single slice"),
        ("two_d", lambda a: a[:, :, 0], "2D image"),
    ],
)
def test_scans_the_gate_refuses(model, scans, tmp_path, name, change, needle):
    bad = _variant(scans / "demo_100.nii.gz", tmp_path / "in" / f"{name}.nii.gz", change)
    before = tree_digest(bad)
    out = tmp_path / "out"
    result = predict(model, bad, out)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    record = manifest(out)[name]
    assert record["status"] == "failed" and needle in record["error"], record["error"]
    assert str(bad) in record["error"]
    assert not (out / f"{name}.nii.gz").exists() and tree_digest(bad) == before


def _header_variant(good: Path, target: Path, how: str) -> Path:
    img = nib.load(good)
    data, affine = np.asanyarray(img.dataobj), img.affine
    out = nib.Nifti1Image(data, affine)
    if how == "sform_qform":
        shifted = affine.copy()
        shifted[0, 3] += 20.0
        out.set_qform(shifted, code=1)
        nib.save(out, target)
        return target
    nib.save(out, target)  # uncompressed .nii: patch pixdim[2] in the raw header
    raw = bytearray(target.read_bytes())
    raw[76 + 4 * 2 : 80 + 4 * 2] = struct.pack("<f", 0.0)
    target.write_bytes(bytes(raw))
    return target


@pytest.mark.parametrize(
    ("how", "needle"), [("sform_qform", "sform and qform disagree"), ("pixdim", "pixdim[1..3]")]
)
def test_ambiguous_header_geometry_is_refused(model, scans, tmp_path, how, needle):
    (tmp_path / "in").mkdir()
    bad = _header_variant(scans / "demo_100.nii.gz", tmp_path / "in" / f"{how}.nii", how)
    before = tree_digest(bad)
    out = tmp_path / "out"
    result = predict(model, bad, out)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    record = manifest(out)[how]
    assert record["status"] == "failed" and needle in record["error"]
    assert str(bad) in record["error"]
    assert tree_digest(bad) == before


def test_far_spacing_is_predicted_with_a_warning(model, scans, tmp_path):
    img = nib.load(scans / "demo_100.nii.gz")
    coarse = img.affine.copy()
    coarse[:3, 2] *= 4.0  # slices 4x thicker than anything the model saw
    path = write_nifti(tmp_path / "in" / "thick.nii.gz", np.asanyarray(img.dataobj), coarse)
    out = tmp_path / "out"
    result = predict(model, path, out)
    assert result.returncode == 0, result.stdout + result.stderr
    record = manifest(out)["thick"]
    warnings = [f for f in record["findings"] if not f["refuse"]]
    assert record["status"] == "ok" and [f["code"] for f in warnings] == ["spacing"]
    assert "training median" in warnings[0]["message"]
    assert "warning" in result.stdout and "training median" in result.stdout


# -- clear messages instead of vague ones ---------------------------------------------------


def test_unreadable_files_say_what_is_wrong(model, tmp_path):
    (tmp_path / "in").mkdir()
    mhd = tmp_path / "in" / "scan.mhd"
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
        "ElementDataFile = scan.raw\n"
    )
    # (scan.raw is missing)
    other = tmp_path / "in" / "scan.xyz"
    other.write_text("not an image")
    out = tmp_path / "out"
    result = predict(model, [mhd, other], out)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    records = manifest(out)
    assert "SimpleITK cannot read" in records["scan"]["error"]
    assert str(mhd) in records["scan"]["error"]
    assert "unsupported file type '.xyz'" in records["scan_1"]["error"]


def test_truncated_uncompressed_dicom_slice(model, dicom_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(dicom_dir / "mr_hippocampus_crop_study1", study)
    victim = sorted(study.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-500])
    out = tmp_path / "out"
    result = predict(model, study, out)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    (record,) = manifest(out).values()
    assert str(victim) in record["error"] and "cut short" in record["error"]
    assert "pylibjpeg" not in record["error"]


# -- channel files (nnU-Net v2 layout) ------------------------------------------------------


@pytest.fixture(scope="module")
def two_channel(demo_models, tmp_path_factory) -> Path:
    """A 2-channel model folder (untrained weights: these tests are about the inputs)."""
    from test_inputs import two_channel_model

    return two_channel_model(demo_models, tmp_path_factory.mktemp("two_channel"))


@pytest.fixture()
def channel_folder(demo_module, tmp_path) -> Path:
    """A test folder in the nnU-Net layout: demo_100 and demo_101, 2 channel files each."""
    root = demo_module.write_dataset(tmp_path / "d", 0, 2, seed=5, layout="nnunet", channels=2)
    return root / "imagesTs"


def test_bad_channel_files_fail_their_case_and_the_batch_goes_on(
    two_channel, channel_folder, tmp_path
):
    c0, c1 = (channel_folder / f"demo_100_{c:04d}.nii.gz" for c in (0, 1))
    shutil.copy(c0, channel_folder / "lonely_0000.nii.gz")  # channel 1 missing
    img = nib.load(c1)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    moved = img.affine.copy()
    moved[:3, 3] += 5.0
    for name, array, affine in (
        ("moved", data, moved),
        ("cropped", data[:-2], img.affine),
        ("nan", np.where(data > data.mean(), np.nan, data), img.affine),
    ):
        shutil.copy(c0, channel_folder / f"{name}_0000.nii.gz")
        write_nifti(channel_folder / f"{name}_0001.nii.gz", array, affine)
    before = tree_digest(channel_folder)
    out = tmp_path / "out"
    result = predict(two_channel, channel_folder, out)
    assert_clean_failure(result, 1, "2 done, 0 skipped, 4 failed")
    records = manifest(out)
    assert {k: r["status"] for k, r in records.items()} == {
        "demo_100": "ok",
        "demo_101": "ok",
        "lonely": "failed",
        "moved": "failed",
        "cropped": "failed",
        "nan": "failed",
    }
    errors = {k: records[k]["error"] for k in ("lonely", "moved", "cropped", "nan")}
    assert errors["lonely"].startswith(
        f"{channel_folder / 'lonely_0001.nii.gz'}: channel file not found"
    )
    assert records["lonely"]["inputs"] == [str((channel_folder / "lonely_0000.nii.gz").resolve())]
    assert records["lonely"]["outputs"] == {} and records["lonely"]["seconds"] == {}
    for case in ("moved", "cropped"):
        assert errors[case].startswith(
            f"{channel_folder / f'{case}_0001.nii.gz'}: voxel grid differs from channel 0's"
        )
    assert "origin" in errors["moved"] and "shape" in errors["cropped"]
    assert errors["nan"].startswith(f"{channel_folder / 'nan_0001.nii.gz'} (channel 1) holds")
    assert "NaN or infinite" in errors["nan"]
    assert [f["code"] for f in records["nan"]["findings"] if f["refuse"]] == ["non_finite"]
    for case, error in errors.items():
        assert "\n" not in error  # one line
        assert not list(out.glob(f"{case}*"))
    for case in ("demo_100", "demo_101"):
        source = nib.load(channel_folder / f"{case}_0000.nii.gz")
        label = nib.load(out / f"{case}.nii.gz")
        assert label.shape == source.shape and np.allclose(label.affine, source.affine)
    assert tree_digest(channel_folder) == before
    _no_temporaries(out)


def test_an_output_that_would_replace_a_channel_file_is_refused(
    two_channel, channel_folder, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    for c in (0, 1):
        shutil.copy(channel_folder / f"demo_100_{c:04d}.nii.gz", folder / f"X_{c:04d}.nii.gz")
    numbered = tmp_path / "numbered"  # X_0001, X_0002: case numbers, so a case named X_0001
    numbered.mkdir()
    for c in (1, 2):
        shutil.copy(channel_folder / "demo_101_0000.nii.gz", numbered / f"X_{c:04d}.nii.gz")
    before = tree_digest(tmp_path)
    inputs = [folder / "X_0000.nii.gz", folder / "X_0001.nii.gz", *sorted(numbered.iterdir())]
    result = predict(two_channel, inputs, folder)
    assert_clean_failure(result, 2, str(folder / "X_0001.nii.gz"), "overwrite the input")
    assert tree_digest(tmp_path) == before
