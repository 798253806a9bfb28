"""The nnU-Net oracle harness: conversion to the v2 raw layout, and a real nnU-Net run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nnunet_oracle import (
    OracleRun,
    _run_step,
    dataset_folder_name,
    load_preprocessed_case,
    run_nnunet,
    to_nnunet_raw,
)

HIPPO_CASES = 8


def _write_msd(root: Path, n_cases: int = 2) -> Path:
    """A tiny 2-channel MSD dataset: 4D images (X, Y, Z, 2) float32, 3D uint8 labels."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    training = []
    for i in range(n_cases):
        case = f"case_{i:03d}"
        image = rng.normal(size=(6, 7, 5, 2)).astype(np.float32)
        label = rng.integers(0, 3, size=(6, 7, 5), dtype=np.uint8)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    meta = {
        "name": "Tiny",
        "modality": {"0": "T1", "1": "T2"},
        "labels": {"0": "background", "1": "core", "2": "edge"},
        "numTraining": n_cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_to_nnunet_raw_splits_msd_channels(tmp_path):
    source = _write_msd(tmp_path / "Task99_Tiny", n_cases=3)
    raw = to_nnunet_raw(source, tmp_path / "nnUNet_raw", 7, "Tiny", cases=["case_000", "case_002"])
    assert raw == tmp_path / "nnUNet_raw" / "Dataset007_Tiny"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "core": 1, "edge": 2}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    assert meta["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz",
        "case_000_0001.nii.gz",
        "case_002_0000.nii.gz",
        "case_002_0001.nii.gz",
    ]
    original = nib.load(source / "imagesTr" / "case_002.nii.gz")
    for c in range(2):
        channel = nib.load(raw / "imagesTr" / f"case_002_{c:04d}.nii.gz")
        assert channel.shape == (6, 7, 5)
        np.testing.assert_array_equal(channel.get_fdata(), original.get_fdata()[..., c])
        np.testing.assert_allclose(channel.affine, original.affine)
    label = raw / "labelsTr" / "case_002.nii.gz"
    assert label.is_symlink() and label.resolve() == (source / "labelsTr" / "case_002.nii.gz")


def test_to_nnunet_raw_from_v2_and_guards(tmp_path):
    source = _write_msd(tmp_path / "Task99_Tiny")
    first = to_nnunet_raw(source, tmp_path / "a", 7, "Tiny", reader=None)
    assert "overwrite_image_reader_writer" not in json.loads((first / "dataset.json").read_text())
    again = to_nnunet_raw(first, tmp_path / "b", 8, "Again", cases=["case_001"])
    meta = json.loads((again / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["labels"] == {"background": 0, "core": 1, "edge": 2}
    assert sorted(p.name for p in (again / "imagesTr").iterdir()) == [
        "case_001_0000.nii.gz",
        "case_001_0001.nii.gz",
    ]
    with pytest.raises(FileExistsError):
        to_nnunet_raw(source, tmp_path / "a", 7, "Tiny")
    with pytest.raises(ValueError, match="nope"):
        to_nnunet_raw(source, tmp_path / "c", 9, "Tiny", cases=["nope"])
    with pytest.raises(ValueError):
        dataset_folder_name(1000, "Tiny")


@pytest.fixture(scope="module")
def hippo_run(hippocampus: Path, tmp_path_factory) -> tuple[OracleRun, list[str]]:
    """nnU-Net fingerprint + plans + 3d_fullres preprocessing of 8 Hippocampus cases."""
    meta = json.loads((hippocampus / "dataset.json").read_text())
    cases = [Path(t["image"]).name.removesuffix(".nii.gz") for t in meta["training"]]
    cases = cases[:HIPPO_CASES]
    work = tmp_path_factory.mktemp("nnunet_oracle")
    raw = to_nnunet_raw(hippocampus, work / "nnUNet_raw", 4, "Hippocampus", cases=cases)
    return run_nnunet(raw, work, configurations=("3d_fullres",)), cases


@pytest.mark.slow
def test_nnunet_plans_and_fingerprint(hippo_run):
    run, _ = hippo_run
    assert run.plans["plans_name"] == "nnUNetPlans"
    assert run.plans["image_reader_writer"] == "NibabelIOWithReorient"
    patch = run.plans["configurations"]["3d_fullres"]["patch_size"]
    assert len(patch) == 3 and all(isinstance(p, int) for p in patch)
    assert len(run.fingerprint["spacings"]) == HIPPO_CASES
    assert len(run.fingerprint["shapes_after_crop"]) == HIPPO_CASES
    assert (run.preprocessed / "dataset_fingerprint.json").is_file()


@pytest.mark.slow
def test_nnunet_preprocessed_cases(hippo_run):
    run, cases = hippo_run
    for case in cases[:3]:
        data, seg, props = load_preprocessed_case(run, "3d_fullres", case)
        assert data.dtype == np.float32 and data.ndim == 4 and data.shape[0] == 1
        assert seg.shape == (1, *data.shape[1:])
        assert set(np.unique(seg).tolist()) <= {-1, 0, 1, 2}
        assert {"spacing", "bbox_used_for_cropping", "class_locations"} <= set(props)
    with pytest.raises(KeyError, match="3d_lowres"):
        load_preprocessed_case(run, "3d_lowres", cases[0])


def test_failures_say_what_ran_and_what_it_printed(tmp_path):
    with pytest.raises(RuntimeError, match=r"exit code 3(.|\n)*boom(.|\n)*bang"):
        code = "import sys; print('boom'); print('bang', file=sys.stderr); sys.exit(3)"
        _run_step([sys.executable, "-c", code], {})
    bad = tmp_path / "Task04_Hippocampus"
    bad.mkdir()
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        run_nnunet(bad, tmp_path / "work")
