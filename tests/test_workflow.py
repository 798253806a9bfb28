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
        [str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, env=env,
    )


def test_workflow_checks_the_dataset(demo_dataset, tmp_path):
    result = snakemake(tmp_path, "--config", f"dataset={demo_dataset}", "output=out")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "dataset_check.json").read_text())
    assert report["n_cases"] == 6 and report["n_valid"] == 6
    assert (tmp_path / "out" / "logs" / "check_dataset.log").exists()
    assert (tmp_path / "out" / "benchmarks" / "check_dataset.tsv").exists()
    assert "6 of 6 cases valid" in result.stdout


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
