"""DICOM in, DICOM-SEG out, with a model trained (briefly, on CPU) on Hippocampus."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg
from dicom_tools import dciodvfy_errors, require_dciodvfy

from medseg.dataset import load_dataset
from medseg.dataset.layout import DatasetSpec
from medseg.fingerprint.extract import extract_fingerprint
from medseg.inference.bundle import export_model
from medseg.io import read_dicom_series
from medseg.io.dicom_seg_read import read_dicom_seg, read_dicom_seg_names
from medseg.planning.planner import PlannerSettings, plan_experiment
from medseg.planning.splits import make_splits
from medseg.prepare.preprocess import preprocess_dataset
from medseg.training.loop import TrainSettings, train

pytestmark = pytest.mark.slow

SERIES = ("mr_hippocampus_crop_study1", "mr_hippocampus_crop_study2")
INVALID = ("gantrytilting", "notavolume", "sliceincrement", "sliceorientation")


@pytest.fixture(scope="module")
def hippocampus_model(tmp_path_factory, hippocampus):
    """A small 3d_fullres model trained for a minute on 24 Hippocampus cases."""
    root = tmp_path_factory.mktemp("hippo_model")
    full = load_dataset(hippocampus)
    spec = DatasetSpec(**{**full.__dict__, "training": full.training[:24]})
    plans = plan_experiment(
        extract_fingerprint(spec, processes=2),
        PlannerSettings(
            base_features=8, configurations=("3d_fullres",), patch_size={"3d_fullres": (32, 32, 32)}
        ),
    )
    plans["configurations"]["3d_fullres"]["batch_size"] = 4
    preprocess_dataset(spec, plans, "3d_fullres", root / "pre", processes=2)
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    settings = TrainSettings(
        "3d_fullres",
        0,
        device="cpu",
        epochs=3,
        iterations=15,
        val_iterations=2,
        workers=1,
        initial_lr=0.02,
    )
    train(plans, splits, root / "pre", root / "fold_0", settings)
    return export_model(
        root / "model",
        plans,
        [{"configuration": "3d_fullres", "folds": [0]}],
        {"3d_fullres": {0: root / "fold_0" / "checkpoint_final.safetensors"}},
    )


def test_dicom_series_to_nifti_and_dicom_seg(hippocampus_model, dicom_dir, tmp_path):
    """medseg's own model, DICOM in: geometry, dciodvfy, read-back, names, manifest.

    This minute-long training mostly predicts background on these crops, so the
    read-back with real content is tested with the nnU-Net interop model, which
    predicts both structures there (test_nnunet_interop.py::
    test_dicom_seg_holds_the_predicted_labels)."""
    require_dciodvfy()
    out = tmp_path / "out"
    inputs = [dicom_dir / s for s in SERIES]
    r = run_medseg("predict", "-m", hippocampus_model, "-i", *inputs, "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in SERIES:
        volume, info = read_dicom_series(dicom_dir / name)
        label = nib.load(out / f"{name}.nii.gz")
        assert label.shape == volume.spatial_shape  # the series' geometry
        assert np.allclose(label.affine, volume.affine, atol=1e-5)
        seg_path = out / f"{name}.seg.dcm"
        assert dciodvfy_errors(seg_path) == []
        assert np.array_equal(read_dicom_seg(seg_path, info), np.asanyarray(label.dataobj))
        assert read_dicom_seg_names(seg_path) == {1: "Anterior", 2: "Posterior"}
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "ok"]


def test_batch_folder_with_invalid_series_continues(hippocampus_model, dicom_dir, tmp_path):
    hospital = tmp_path / "export"
    for name in SERIES:
        shutil.copytree(dicom_dir / name, hospital / "patient_a" / name)
    for name in INVALID:
        shutil.copytree(
            dicom_dir / "invalid_series" / name,
            hospital / "broken" / name,
            ignore=shutil.ignore_patterns("*.nii.gz"),
        )
    shutil.copytree(dicom_dir / "ct_abdomen_jpeg2000", hospital / "patient_b" / "ct")
    out = tmp_path / "out"
    r = run_medseg(
        "predict",
        "-m",
        hippocampus_model,
        "-i",
        hospital,
        "-o",
        out,
        "--device",
        "cpu",
        "--formats",
        "nifti",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [x for x in lines if x["status"] == "ok"]
    failed = {x["case_id"]: x["error"] for x in lines if x["status"] == "failed"}
    assert sorted(x["case_id"] for x in ok) == [f"patient_a_{s}" for s in SERIES]
    assert any("gantry tilt" in e for e in failed.values())
    assert any("not a volume" in e for e in failed.values())
    assert any("slice(s) missing" in e for e in failed.values())
    assert any("mixed slice orientations" in e for e in failed.values())
    assert failed["patient_b_ct"] == (
        f"{hospital / 'patient_b' / 'ct'}: wrong modality: the model expects MR, this series is CT"
    )
    for x in ok:
        assert (out / f"{x['case_id']}.nii.gz").exists()
    for case_id in failed:
        assert not (out / f"{case_id}.nii.gz").exists()
