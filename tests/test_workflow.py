"""The Snakemake workflow, run for real on generated data."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [
            str(bin_dir / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(workdir),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def test_workflow_prepares_every_planned_configuration(demo_dataset, tmp_path):
    result = snakemake(tmp_path, "--config", f"dataset={demo_dataset}", "output=out", "folds=3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    report = json.loads((out / "dataset_check.json").read_text())
    assert report["n_cases"] == 6 and report["n_valid"] == 6
    plans = json.loads((out / "plans.json").read_text())
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}  # all that planning creates
    for name in plans["configurations"]:
        done = json.loads((out / "preprocessed" / name / "preprocess.json").read_text())
        assert len(done["cases"]) == 6
    assert len(json.loads((out / "splits.json").read_text())["folds"]) == 3
    for rule in ("check_dataset", "fingerprint", "plan", "split", "preprocess_3d_fullres"):
        assert (out / "logs" / f"{rule}.log").exists(), rule
        assert (out / "benchmarks" / f"{rule}.tsv").exists(), rule
    assert "6 of 6 cases valid" in result.stdout  # the closing summary


def test_workflow_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", "--config", "dataset=x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "no dataset configured" in result.stdout + result.stderr


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
