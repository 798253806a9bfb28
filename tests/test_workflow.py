"""The Snakemake workflow, run for real on generated data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import MEDSEG, ROOT

from medseg.nets.checkpoint import load_checkpoint, model_weights

TINY = {
    "processes": 2,
    "configurations": ["3d_fullres"],
    "folds": 2,
    "device": "cpu",
    "planner": {
        "gpu_memory_gb": 0.5,
        "base_features": 4,
        "patch_size": {"3d_fullres": [8, 32, 32]},
    },
    "training": {
        "epochs": 3,
        "iterations": 6,
        "val_iterations": 1,
        "workers": 0,
        "threads": 1,
        "mirroring": False,
        "mem_mb": 2000,
        "runtime": 10,
    },
}


def snakemake(workdir: Path, *args: str, wait: bool = True):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        str(bin_dir / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    if not wait:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def tiny_config(tmp_path: Path, dataset: Path, output: str = "out") -> Path:
    config = {
        **TINY,
        "dataset": str(dataset),
        "output": output,
        "test": {
            "images": str(dataset / "imagesTs"),
            "labels": str(dataset / "labelsTs"),
            "formats": ["nifti"],
            "mirroring": False,
        },
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_whole_workflow_on_a_tiny_config(demo_dataset, tmp_path):
    result = snakemake(tmp_path, "--configfile", str(tiny_config(tmp_path, demo_dataset)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert json.loads((out / "dataset_check.json").read_text())["n_valid"] == 6
    plans = json.loads((out / "plans.json").read_text())
    assert list(plans["configurations"]) == ["3d_fullres"]
    for fold in (0, 1):
        folder = out / "models" / "3d_fullres" / f"fold_{fold}"
        assert load_checkpoint(folder / "checkpoint_final.safetensors")[1]["state"]["epoch"] == 2
        metrics = json.loads((folder / "validation" / "metrics.json").read_text())
        assert metrics["n_cases"] == 3 and set(metrics["mean_dice"]) == {"organ", "lesion"}
        assert len(folder.joinpath("training_log.jsonl").read_text().splitlines()) == 3
    selection = json.loads((out / "cv" / "selection.json").read_text())
    assert selection["chosen"] == "3d_fullres" and selection["cases"] == 6
    assert json.loads((out / "model" / "model.json").read_text())["members"][0]["folds"] == [0, 1]
    lines = [
        json.loads(x) for x in (out / "predictions" / "manifest.jsonl").read_text().splitlines()
    ]
    assert [x["status"] for x in lines] == ["ok", "ok"]
    for x in lines:
        pred = nib.load(x["outputs"]["nifti"])
        src = nib.load(x["input"])
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    test = json.loads((out / "predictions" / "summary.json").read_text())
    assert test["n_cases"] == 2
    for png in ("qc.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    rules = (
        "check_dataset",
        "fingerprint",
        "plan",
        "split",
        "preprocess_3d_fullres",
        "train_3d_fullres_fold_0",
        "train_3d_fullres_fold_1",
        "validate_3d_fullres_fold_0",
        "validate_3d_fullres_fold_1",
        "select",
        "export",
        "predict_test",
        "evaluate_test",
        "qc",
        "curves",
    )
    for rule in rules:
        assert (out / "logs" / f"{rule}.log").exists(), rule
        assert (out / "benchmarks" / f"{rule}.tsv").exists(), rule
    assert "cross-validation Dice" in result.stdout and "(chosen)" in result.stdout


def _dry_run_jobs(workdir: Path, config: Path) -> set[str]:
    """The rules ``snakemake -n`` would run now."""
    result = snakemake(workdir, "-n", "--configfile", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    return {rule for rule in ("predict_test", "evaluate_test", "qc") if f"rule {rule}:" in text}


@pytest.mark.slow
def test_workflow_on_a_two_channel_nnunet_dataset(demo_module, tmp_path):
    """nnU-Net v2 raw layout, 2 channels, imagesTs/CASE_000X.nii.gz and labelsTs/CASE.nii.gz:
    one prediction per test case, named and placed like its reference, every case scored;
    and the test folders are inputs (a change reruns the test stage)."""
    data = demo_module.write_dataset(
        tmp_path / "Dataset", 4, 2, seed=1, layout="nnunet", channels=2
    )
    config = {
        **TINY,
        "dataset": str(data),
        "output": "out",
        "training": {**TINY["training"], "epochs": 1, "iterations": 4},
        "test": {
            "images": str(data / "imagesTs"),
            "labels": str(data / "labelsTs"),
            "formats": ["nifti"],
            "mirroring": False,
        },
    }
    path = tmp_path / "nnunet.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out, cases = tmp_path / "out", ["demo_100", "demo_101"]
    lines = [json.loads(x) for x in (out / "predictions/manifest.jsonl").read_text().splitlines()]
    assert sorted(x["case_id"] for x in lines) == cases
    for x in lines:
        channels = [data / "imagesTs" / f"{x['case_id']}_{c:04d}.nii.gz" for c in (0, 1)]
        assert x["status"] == "ok" and x["inputs"] == [str(p.resolve()) for p in channels]
        pred, src = nib.load(out / "predictions" / f"{x['case_id']}.nii.gz"), nib.load(channels[0])
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == [
        f"{c}.nii.gz" for c in cases
    ]
    test = json.loads((out / "predictions" / "summary.json").read_text())
    assert test["n_cases"] == 2 and test["n_missing"] == 0
    assert sorted(c["case"] for c in test["cases"]) == cases
    assert "2 of 2 folds" in result.stdout
    assert _dry_run_jobs(tmp_path, path) == set()
    # the test folders are inputs: a new case, or a label rewritten, reruns what depends on them
    for c in (0, 1):
        shutil.copy(
            data / "imagesTs" / f"demo_101_{c:04d}.nii.gz",
            data / "imagesTs" / f"demo_102_{c:04d}.nii.gz",
        )
    assert _dry_run_jobs(tmp_path, path) == {"predict_test", "evaluate_test", "qc"}
    for c in (0, 1):
        (data / "imagesTs" / f"demo_102_{c:04d}.nii.gz").unlink()
    os.utime(data / "imagesTs", (time.time() - 3600,) * 2)  # as before the copy
    assert _dry_run_jobs(tmp_path, path) == set()
    label = data / "labelsTs" / "demo_100.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)
    assert _dry_run_jobs(tmp_path, path) == {"evaluate_test", "qc"}


def _digest(out: Path) -> dict[str, str]:
    """What must be identical between an interrupted-and-rerun and an uninterrupted run."""
    digests = {}
    for fold in (0, 1):
        weights = model_weights(
            load_checkpoint(
                out / "models" / "3d_fullres" / f"fold_{fold}" / "checkpoint_final.safetensors"
            )[0]
        )
        h = hashlib.sha256()
        for k in sorted(weights):
            h.update(k.encode() + weights[k].numpy().tobytes())
        digests[f"weights_{fold}"] = h.hexdigest()
    predictions = sorted((out / "predictions").glob("*.nii.gz"))
    assert len(predictions) == 2  # the demo's test cases: never an empty comparison
    for f in predictions:
        digests[f.name] = hashlib.sha256(np.asanyarray(nib.load(f).dataobj).tobytes()).hexdigest()
    selection = json.loads((out / "cv" / "selection.json").read_text())
    digests["selection"] = json.dumps(selection["candidates"], sort_keys=True)
    return digests


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_same_outputs(demo_dataset, tmp_path):
    whole = snakemake(tmp_path, "--configfile", str(tiny_config(tmp_path, demo_dataset, "a")))
    assert whole.returncode == 0, whole.stderr[-3000:]
    config = tiny_config(tmp_path, demo_dataset, "b")
    local = ("--profile", str(ROOT / "pipelines/profiles/local"), "--cores", "2")
    proc = snakemake(tmp_path, *local, "--configfile", str(config), wait=False)
    log = tmp_path / "b" / "models" / "3d_fullres" / "fold_0" / "training_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
    proc.wait()
    assert not (tmp_path / "b" / "cv" / "selection.json").exists()
    rerun = snakemake(tmp_path, *local, "--configfile", str(config))  # the same command
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert _digest(tmp_path / "b") == _digest(tmp_path / "a")


def test_summary_says_which_planned_configurations_were_trained(tmp_path):
    from medseg.cli.summary import trained_status

    config = {
        "spacing": [1.0, 1.0, 1.0],
        "patch_size": [8, 8, 8],
        "batch_size": 2,
        "architecture": {"arch_kwargs": {"n_stages": 3}},
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
    }
    cascade = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    configurations = {
        "3d_fullres": config,
        "2d": config,
        "3d_lowres": config,
        "3d_cascade_fullres": cascade,
    }
    plans = {
        "dataset_name": "X",
        "configurations": configurations,
        "channel_names": ["CT"],
        "labels": [[0, "background"], [1, "organ"]],
        "transpose_forward": [0, 1, 2],
    }
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "splits.json").write_text(json.dumps({"folds": [{"val": []}, {"val": []}]}))
    for name, folds in (("3d_fullres", (0, 1, 7)), ("3d_lowres", (1,))):
        for fold in folds:
            folder = tmp_path / "models" / name / f"fold_{fold}"
            folder.mkdir(parents=True)
            (folder / "checkpoint_final.safetensors").write_bytes(b"")
    (tmp_path / "models" / "2d" / "fold_0").mkdir(parents=True)  # started, nothing finished
    assert trained_status(tmp_path, plans) == {
        "3d_fullres": "2 of 2 folds",  # fold_7 is not one of this split's folds
        "2d": "0 of 2 folds",
        "3d_lowres": "1 of 2 folds",
        "3d_cascade_fullres": "not trained",
    }
    (tmp_path / "models" / "2d" / "fold_0").rmdir()
    (tmp_path / "models" / "2d").rmdir()
    assert trained_status(tmp_path, plans)["2d"] == "not trained"
    result = subprocess.run([*MEDSEG, "summary", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cells = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if line.count("│") == 8
    ]
    rows = {row[0]: row[-1] for row in cells if row[0]}  # first line of each table row
    assert rows == {
        "3d_fullres": "2 of 2 folds",
        "2d": "not trained",
        "3d_lowres": "1 of 2 folds",
        "3d_cascade_fullres": rows["3d_cascade_fullres"],
    }
    assert rows["3d_cascade_fullres"].startswith("not trained")


def test_workflow_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", "--config", "dataset=x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_slurm_profile_dry_run(demo_dataset, tmp_path):
    """The slurm profile plans the jobs (with a cluster's training keys: the SLURM run in
    test_slurm.py shows they reach medseg train)."""
    path = tiny_config(tmp_path, demo_dataset)
    config = yaml.safe_load(path.read_text())
    config["training"].update(checkpoint_minutes=20, retries=4)
    path.write_text(yaml.safe_dump(config))
    result = snakemake(
        tmp_path,
        "-n",
        "--profile",
        str(ROOT / "pipelines/profiles/slurm"),
        "--configfile",
        str(path),
        "--config",
        "device=cuda",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "slurm_partition=cpu" in result.stdout


def test_workflow_stops_on_a_broken_dataset(demo_module, tmp_path):
    root = demo_module.write_dataset(tmp_path / "d", 2, 0)
    (root / "imagesTr" / "demo_001.nii.gz").write_bytes(b"broken")
    result = snakemake(tmp_path, "--config", f"dataset={root}", "output=out")
    assert result.returncode != 0
    assert not (tmp_path / "out" / "dataset_check.json").exists()
    log = (tmp_path / "out" / "logs" / "check_dataset.log").read_text()
    assert "demo_001: imagesTr/demo_001.nii.gz: cannot read" in log


def test_unknown_config_key_fails_at_load(tmp_path):
    result = snakemake(tmp_path, "-n", "--config", "dataset=x", "epochz=3")
    assert result.returncode != 0
    assert "epochz" in result.stdout + result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "no dataset configured" in result.stdout + result.stderr
