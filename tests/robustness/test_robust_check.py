"""``medseg check`` (and fingerprint, info, convert) on training data that cannot be right.

Each bad dataset is built in a tmp folder from the demo generator with one fault; the
promises: exit 1, one problem line naming the case, the file and the problem, no
traceback, and the dataset untouched (hashes before and after).
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg

from robustness.robust_tools import assert_clean_failure, tree_digest, write_nifti

IMAGE = "imagesTr/demo_000.nii.gz"
LABEL = "labelsTr/demo_000.nii.gz"


@pytest.fixture()
def dataset(demo_module, tmp_path) -> Path:
    """A clean MSD-layout demo dataset of two training cases."""
    return demo_module.write_dataset(tmp_path / "Demo", 2, 0)


def _loaded(root: Path, rel: str = IMAGE) -> nib.Nifti1Image:
    return nib.load(root / rel)


def _replace_image(root: Path, array: np.ndarray, rel: str = IMAGE) -> None:
    """Write ``array`` over the case's file, keeping its affine."""
    affine = _loaded(root, rel).affine
    (root / rel).unlink()
    write_nifti(root / rel, array, affine)


def _problem_line(text: str, *needles: str) -> str:
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line holds all of {needles}:\n{text}"
    return lines[0]


def _check_refuses(root: Path, *needles: str, extra=()) -> str:
    """``medseg check`` exits 1 with a line ``demo_000: FILE: ...`` holding ``needles``."""
    before = tree_digest(root)
    result = run_medseg("check", root, "-j", "1", *extra)
    assert_clean_failure(result, 1)
    assert tree_digest(root) == before
    return _problem_line(result.stdout, *needles)


def test_clean_demo_dataset_passes(dataset):
    result = run_medseg("check", dataset, "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout


def test_all_zero_image_with_foreground_label(dataset):
    shape = _loaded(dataset).shape
    _replace_image(dataset, np.zeros(shape, np.int16))
    line = _check_refuses(dataset, f"demo_000: {IMAGE}:", "blank")
    assert f"its label ({LABEL}) has foreground" in line
    assert "cannot show what is labelled" in line


def test_constant_image(dataset):
    _replace_image(dataset, np.full(_loaded(dataset).shape, 7.0, np.float32))
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "one value (7)", "blank")


def test_nan_image(dataset):
    data = np.asanyarray(_loaded(dataset).dataobj).astype(np.float32)
    data[3:5, 3:5, 2] = np.nan
    _replace_image(dataset, data)
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "4 NaN or infinite voxel(s)")


def test_2d_image_file(dataset):
    data = np.asanyarray(_loaded(dataset).dataobj)[:, :, 0]
    _replace_image(dataset, data)
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "a 2D image")


def test_single_slice_image(dataset):
    data = np.asanyarray(_loaded(dataset).dataobj)
    mid = data.shape[2] // 2
    _replace_image(dataset, data[:, :, mid : mid + 1])
    label = np.asanyarray(_loaded(dataset, LABEL).dataobj)
    _replace_image(dataset, label[:, :, mid : mid + 1], LABEL)
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "single slice")
    _check_refuses(dataset, f"demo_000: {LABEL}:", "single slice")


def _write_sform_qform_disagreeing(path: Path) -> None:
    img = nib.load(path)
    data, affine = np.asanyarray(img.dataobj), img.affine
    shifted = affine.copy()
    shifted[0, 3] += 20.0
    out = nib.Nifti1Image(data, affine)
    out.set_sform(affine, 1)
    out.set_qform(shifted, 1)
    path.unlink()
    nib.save(out, path)


def test_sform_qform_disagreeing_by_20_mm(dataset):
    _write_sform_qform_disagreeing(dataset / IMAGE)
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "sform and qform disagree")


def _zero_pixdim(path: Path, qform_code: int, k: int = 1) -> None:
    """Set pixdim[k] to 0 in the stored header (nibabel would "fix" it on load and save)."""
    img = nib.load(path)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    out.set_sform(img.affine, 1)
    out.set_qform(img.affine, qform_code)
    path.unlink()
    nib.save(out, path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[76 + 4 * k : 80 + 4 * k] = struct.pack("<f", 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("qform_code", [0, 1])  # with 1, the qform is built from pixdim too
def test_pixdim_zero(dataset, qform_code):
    _zero_pixdim(dataset / IMAGE, qform_code)
    _check_refuses(dataset, f"demo_000: {IMAGE}:", "pixdim[1..3] = (0.0,")


def test_num_training_mismatch(dataset):
    meta_path = dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "numTraining": 5}))
    line = _check_refuses(dataset, "dataset.json: numTraining is 5, but 2 training case(s)")
    assert "set numTraining to 2" in line


def test_symlink_outside_the_dataset(dataset, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (dataset / IMAGE).rename(store / "demo_000.nii.gz")
    (dataset / IMAGE).symlink_to(store / "demo_000.nii.gz")
    line = _check_refuses(dataset, f"demo_000: {IMAGE}:", "outside the dataset folder")
    assert str(store.resolve()) in line and "--allow-outside-links" in line
    result = run_medseg("check", dataset, "-j", "1", "--allow-outside-links")
    assert result.returncode == 0, result.stdout + result.stderr
    # check says it once; the stages after it read linked files as they are
    result = run_medseg("fingerprint", dataset, "-o", tmp_path / "fp.json", "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    # a dataset folder that is itself a link is not "outside"
    alias = tmp_path / "alias"
    alias.symlink_to(dataset)
    (dataset / IMAGE).unlink()
    (store / "demo_000.nii.gz").rename(dataset / IMAGE)
    result = run_medseg("check", alias, "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_orientation_is_a_warning_and_exit_0(dataset):
    for rel in (IMAGE, LABEL):
        img = nib.load(dataset / rel)
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        out.set_sform(None, code=0)
        out.set_qform(None, code=0)
        (dataset / rel).unlink()
        nib.save(out, dataset / rel)
    result = run_medseg("check", dataset, "-j", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    _problem_line(result.stdout, "warning:", f"demo_000: {IMAGE}:", "no orientation")
    assert "2 valid" in result.stdout and "2 warning(s)" in result.stdout


def test_fingerprint_refuses_a_blank_image(dataset, tmp_path):
    _replace_image(dataset, np.zeros(_loaded(dataset).shape, np.int16))
    before = tree_digest(dataset)
    out = tmp_path / "fp.json"
    result = run_medseg("fingerprint", dataset, "-o", out, "-j", "1")
    assert_clean_failure(result, 2, "case demo_000", IMAGE, "blank")
    assert not out.exists() and tree_digest(dataset) == before
    result = run_medseg("fingerprint", dataset, "-o", out, "-j", "1", "--skip-invalid")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["excluded"][0]["case_id"] == "demo_000"


def test_info_and_convert_warn_about_sform_qform(dataset, tmp_path):
    path = dataset / IMAGE
    _write_sform_qform_disagreeing(path)
    result = run_medseg("info", path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["code"] == "sform_qform" and "the sform" in finding["message"]
    result = run_medseg("info", path)
    assert result.returncode == 0 and "warning" in result.stdout
    out = tmp_path / "converted.nii.gz"
    result = run_medseg("convert", path, out)
    assert result.returncode == 0, result.stdout + result.stderr
    line = _problem_line(result.stderr, "warning:", "sform and qform disagree")
    assert "Converted with the sform" in line
    assert np.allclose(nib.load(out).affine, nib.load(path).affine)
