"""The medseg command line, run as a real subprocess where it matters."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg

from medseg.cli.main import main
from medseg.io import read_dicom_series


def test_help_teaches_every_command():
    result = run_medseg("--help")
    assert result.returncode == 0
    import argparse

    from medseg.cli.main import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(actions[0].choices)
    assert len(names) == 21 and {
        "predict",
        "select",
        "export",
        "export-model",
        "install-model",
        "curves",
        "previous-stage",
        "status",
        "serve",
    } <= set(names)
    for command in names:
        assert command in result.stdout
        sub = run_medseg(command, "--help")
        assert sub.returncode == 0 and "Examples:" in sub.stdout


def test_check_hippocampus_reports_200_valid(hippocampus):
    result = run_medseg("check", hippocampus, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 cases checked" in result.stdout and "200 valid" in result.stdout


def test_check_reports_problems_and_exits_nonzero(demo_module, tmp_path):
    root = demo_module.write_dataset(tmp_path / "d", 3, 0)
    (root / "labelsTr" / "demo_001.nii.gz").unlink()
    report = tmp_path / "report.json"
    result = run_medseg("check", root, "--report", report)
    assert result.returncode == 1
    assert "demo_001: labelsTr/demo_001.nii.gz: file not found" in result.stdout
    assert "2 valid, 1 with 1 problem(s)" in result.stdout
    assert json.loads(report.read_text())["problems"][0]["case"] == "demo_001"


def test_info_dicom_json(dicom_dir):
    result = run_medseg("info", dicom_dir / "ct_abdomen_jpeg2000", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["shape"] == [512, 512, 20]
    assert facts["modality"] == "CT" and facts["orientation"] == "LPS"
    assert facts["intensity_range"] == [-1024.0, 1839.0]
    assert facts["spacing_mm"] == pytest.approx([0.9765625, 0.9765625, 2.0])


def test_info_on_invalid_series_is_a_clear_error(dicom_dir):
    result = run_medseg("info", dicom_dir / "invalid_series" / "notavolume" / "001")
    assert result.returncode == 2
    assert "error:" in result.stderr and "not a volume" in result.stderr
    assert "Traceback" not in result.stderr


def test_convert_dicom_to_nifti_keeps_geometry(dicom_dir, tmp_path):
    folder = dicom_dir / "mr_hippocampus_crop_study2"
    out = tmp_path / "study2.nii.gz"
    result = run_medseg("convert", folder, out)
    assert result.returncode == 0, result.stderr
    vol, _ = read_dicom_series(folder)
    img = nib.load(out)
    assert np.allclose(img.affine, vol.affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(img.dataobj), vol.array[0])


def test_convert_canonical_and_label(demo_dataset, tmp_path):
    src = demo_dataset / "labelsTr" / "demo_000.nii.gz"
    out = tmp_path / "lab.nrrd"
    assert main(["convert", str(src), str(out), "--label", "--canonical"]) == 0
    result = run_medseg("info", out, "--json")
    facts = json.loads(result.stdout)
    assert facts["orientation"] == "RAS" and facts["values"] == [0, 1, 2]


def test_missing_input_is_an_error_not_a_traceback(tmp_path):
    result = run_medseg("convert", tmp_path / "nope.nii.gz", tmp_path / "out.nii.gz")
    assert result.returncode == 2
    assert "nope.nii.gz: file not found" in result.stderr
    assert not (tmp_path / "out.nii.gz").exists()
