"""Training on CPU with a tiny plan: learning, kill-and-resume, safe checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEDSEG

from medseg.dataset import load_dataset
from medseg.fingerprint.extract import extract_fingerprint
from medseg.nets.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_torch_weights,
    model_weights,
)
from medseg.planning.planner import PlannerSettings, plan_experiment
from medseg.planning.splits import make_splits
from medseg.prepare.preprocess import preprocess_dataset
from medseg.training.data import CaseStore, forced_foreground, sample_batch
from medseg.training.loop import TrainSettings, train

TINY = PlannerSettings(
    gpu_memory_gb=0.5,
    base_features=4,
    configurations=("3d_fullres",),
    patch_size={"3d_fullres": (8, 32, 32)},
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_dataset):
    """Preprocessed demo data, tiny plans and a 2-fold split, written once."""
    root = tmp_path_factory.mktemp("tiny")
    spec = load_dataset(demo_dataset)
    plans = plan_experiment(extract_fingerprint(spec), TINY)
    plans["configurations"]["3d_fullres"]["batch_size"] = 2
    preprocess_dataset(spec, plans, "3d_fullres", root / "pre", processes=1)
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "splits.json").write_text(json.dumps(splits))
    return root, plans, splits


def test_tiny_plan_learns(tiny, tmp_path):
    root, plans, splits = tiny
    settings = TrainSettings(
        "3d_fullres",
        0,
        device="cpu",
        epochs=4,
        iterations=12,
        val_iterations=2,
        workers=0,
        initial_lr=0.02,
    )
    last = train(plans, splits, root / "pre", tmp_path / "m", settings)
    history = [json.loads(line) for line in (tmp_path / "m" / "training_log.jsonl").open()]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and last == history[-1]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05
    for name in ("checkpoint_latest", "checkpoint_best", "checkpoint_final"):
        assert (tmp_path / "m" / f"{name}.safetensors").exists()
        meta = json.loads((tmp_path / "m" / f"{name}.json").read_text())
        assert meta["settings"]["seed"] == 0 and meta["configuration"]["patch_size"] == [8, 32, 32]
    assert (tmp_path / "m" / "progress.png").stat().st_size > 1000
    assert history[1]["learning_rate"] < history[0]["learning_rate"] == 0.02


def _train_cmd(root: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        *MEDSEG,
        "train",
        str(root / "pre"),
        str(root / "plans.json"),
        str(root / "splits.json"),
        "--config",
        "3d_fullres",
        "--fold",
        "1",
        "-o",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        str(epochs),
        "--iterations",
        "6",
        "--val-iterations",
        "2",
        "--workers",
        "1",
        "--no-validation",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny, tmp_path):
    root, _, _ = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(
        _train_cmd(root, tmp_path / "whole", 3), env=env, capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr
    log = tmp_path / "cut" / "training_log.jsonl"
    proc = subprocess.Popen(
        _train_cmd(root, tmp_path / "cut", 3),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert done == 2, f"killed after {done} epochs; the test needs a kill during epoch 2"
    assert not (tmp_path / "cut" / "checkpoint_final.safetensors").exists()
    refused = subprocess.run(
        _train_cmd(root, tmp_path / "cut", 3), env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(
        _train_cmd(root, tmp_path / "cut", 3, "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    a = model_weights(load_checkpoint(tmp_path / "whole" / "checkpoint_final.safetensors")[0])
    b = model_weights(load_checkpoint(tmp_path / "cut" / "checkpoint_final.safetensors")[0])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    lines = (tmp_path / "cut" / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


class Payload:
    """An arbitrary object: unpickling it could have run code."""


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects.*never unpickles"):
        load_torch_weights(path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pth"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "epoch": 3,
            "ema": np.float32(0.5),
            "log": [np.float64(1.5)],
        },
        plain,
    )  # as nnU-Net v2's checkpoints hold
    loaded = load_torch_weights(plain)  # tensors, plain containers and numpy numbers are fine
    assert loaded["epoch"] == 3 and float(loaded["ema"]) == 0.5
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(broken)


def test_batches_oversample_foreground_and_are_reproducible(tiny):
    root, plans, splits = tiny
    store = CaseStore(root / "pre")
    ids = splits["folds"][0]["train"]
    assert forced_foreground(3) == [False, False, True] and forced_foreground(2) == [False, True]
    image, label = sample_batch(store, ids, (8, 32, 32), 6, np.random.default_rng(5))
    again = sample_batch(store, ids, (8, 32, 32), 6, np.random.default_rng(5))
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1])
    assert image.shape == (6, 1, 8, 32, 32) and label.shape == (6, 1, 8, 32, 32)
    assert all((label[i] > 0).any() for i in (4, 5))  # the forced third holds foreground
    big, big_label = sample_batch(store, ids, (40, 96, 96), 2, np.random.default_rng(1))
    assert (big_label == -1).any()  # larger than the case: padded with -1
    two_d, _ = sample_batch(store, ids, (32, 32), 4, np.random.default_rng(2))
    assert two_d.shape == (4, 1, 32, 32)


def test_train_cli_then_fold_validation_in_original_geometry(tiny, demo_dataset, tmp_path):
    import nibabel as nib

    root, plans, splits = tiny
    out = tmp_path / "fold0"
    cmd = [
        *MEDSEG,
        "train",
        str(root / "pre"),
        str(root / "plans.json"),
        str(root / "splits.json"),
        "--config",
        "3d_fullres",
        "--fold",
        "0",
        "-o",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--iterations",
        "4",
        "--val-iterations",
        "1",
        "--workers",
        "1",
        "--dataset",
        str(demo_dataset),
        "--no-mirroring",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "epoch 0:" in result.stdout and "fold validation (3 cases)" in result.stdout
    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    assert metrics["n_cases"] == 3 and set(metrics["mean_dice"]) == {"organ", "lesion"}
    spec = load_dataset(demo_dataset)
    for case_id in splits["folds"][0]["val"]:
        original = nib.load(spec.case(case_id).label)
        predicted = nib.load(out / "validation" / f"{case_id}.nii.gz")
        assert predicted.shape == original.shape
        assert np.allclose(predicted.affine, original.affine, atol=1e-5)
        with np.load(out / "validation" / f"{case_id}.npz") as z:
            assert z["probabilities"].shape == (3, *original.shape)
            assert np.allclose(z["probabilities"].astype(np.float32).sum(0), 1, atol=1e-2)
        assert set(metrics["cases"][case_id]) == {"organ", "lesion"}


def test_resume_sets_a_stale_checkpoint_aside(tiny, tmp_path):
    """--resume with a checkpoint from another split starts over instead of mixing runs."""
    root, plans, splits = tiny
    settings = TrainSettings(
        "3d_fullres", 0, device="cpu", epochs=1, iterations=2, val_iterations=1, workers=0
    )
    train(plans, splits, root / "pre", tmp_path / "m", settings)
    other = {**splits, "folds": [splits["folds"][1], splits["folds"][0]]}
    train(plans, other, root / "pre", tmp_path / "m", settings, resume=True)
    assert (tmp_path / "m" / "checkpoint_latest.stale").exists()
    state = load_checkpoint(tmp_path / "m" / "checkpoint_latest.safetensors")[1]["state"]
    assert state["cases"]["val"] == sorted(other["folds"][0]["val"])
    # trained again from the start: the same weights as a fresh run on the other split
    train(plans, other, root / "pre", tmp_path / "fresh", settings)
    got = model_weights(load_checkpoint(tmp_path / "m" / "checkpoint_final.safetensors")[0])
    want = model_weights(load_checkpoint(tmp_path / "fresh" / "checkpoint_final.safetensors")[0])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_validation_only_needs_a_finished_training(tiny, demo_dataset, tmp_path):
    root, _, _ = tiny
    base = _train_cmd(root, tmp_path / "m", 1)
    base.remove("--no-validation")
    result = subprocess.run(
        [*base, "--validation-only", "--dataset", str(demo_dataset)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "no checkpoint_final" in result.stderr
    assert subprocess.run([*base, "--no-validation"], capture_output=True).returncode == 0
    result = subprocess.run(
        [*base, "--validation-only", "--dataset", str(demo_dataset), "--no-mirroring"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "epoch" not in result.stdout and "fold validation (3 cases)" in result.stdout
    metrics = tmp_path / "m" / "validation" / "metrics.json"
    first = json.loads(metrics.read_text())
    metrics.unlink()
    # the same stage on its own (the workflow's validate rule)
    validate = [
        *MEDSEG,
        "validate",
        str(root / "pre"),
        str(root / "plans.json"),
        str(root / "splits.json"),
        "--fold",
        "1",
        "-o",
        str(tmp_path / "m"),
        "--device",
        "cpu",
        "--dataset",
        str(demo_dataset),
        "--no-mirroring",
    ]
    result = subprocess.run(validate, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(metrics.read_text()) == first
    result = subprocess.run([*validate, "--checkpoint", "best"], capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(metrics.read_text())["checkpoint"] == (
        "checkpoint_best"
    )
