"""--max-memory: the estimate before a case, the settings it picks, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg

from medseg.inference.bundle import export_model

# Predicts one scan in a fresh process: its estimate (taken inside predict_volume) and
# its measured peak resident memory: the kernel's high-water mark of the process's
# memory (VmHWM; not ru_maxrss, which after exec keeps a forking parent's peak).
MEASURE = """
import json, sys
from medseg.inference.bundle import load_model
from medseg.inference.predict import PredictOptions, predict_volume
from medseg.io import read_volume
bundle = load_model(sys.argv[1])
image = read_volume(sys.argv[2])
report = {}
options = PredictOptions(mirroring=False, step=1.0, tile_batch=2)
predict_volume(bundle, image, options, report=report)
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) * 1024
print(json.dumps({"peak": peak, **report["memory"]}))
"""


def ct_like(path, shape, spacing, seed=0):
    """An int16 CT-like scan (body of soft tissue in air), LPS-like axes, written to ``path``."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    volume = np.full(shape, -1000, np.int16)
    volume[body] = 40
    volume += rng.normal(0, 20, size=shape).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


@pytest.fixture
def model(demo_models, tmp_path):
    root, plans, _, checkpoints = demo_models
    members = [{"configuration": "3d_fullres", "folds": [0, 1]}]
    return export_model(tmp_path / "model", plans, members, checkpoints)


def test_the_estimate_is_within_a_quarter_of_the_measured_peak(model, tmp_path):
    """A moderate CT-like scan (256 x 256 x 90, 5.9 M voxels, resampled onto the model's
    grid): the estimate taken before predicting is within 25% of the process's peak."""
    scan = ct_like(tmp_path / "ct.nii.gz", (256, 256, 90), (0.7, 0.7, 1.25))
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model), str(scan)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    above = m["peak"] - m["baseline_bytes"]
    assert above > 0.5 * m["baseline_bytes"], m  # the case, not the process, dominates
    print("estimate / measured peak:", m["estimate_bytes"] / m["peak"], m)
    assert abs(m["estimate_bytes"] / m["peak"] - 1) <= 0.25, m


def test_max_memory_refuses_a_case_that_cannot_fit_and_goes_on(model, demo_dataset, tmp_path):
    big = ct_like(tmp_path / "big.nii.gz", (512, 512, 200), (0.7, 0.7, 1.25))
    small = demo_dataset / "imagesTs" / "demo_100.nii.gz"
    out = tmp_path / "out"
    args = ["-m", model, "-i", big, small, "-o", out, "--engine", "torch", "--no-mirroring"]
    r = run_medseg("predict", *args, "--max-memory", "1.2")
    assert r.returncode == 1, r.stdout + r.stderr
    records = {
        x["case_id"]: x for x in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }
    refused = records["big"]
    assert refused["status"] == "failed"
    assert refused["error"].startswith(str(big))
    assert "too large for the memory allowed" in refused["error"]
    assert "--max-memory is 1.2 GB" in refused["error"] and "needs about" in refused["error"]
    assert records["demo_100"]["status"] == "ok"
    assert records["demo_100"]["memory"]["estimate_bytes"] <= 1.2e9
    assert not (out / "big.nii.gz").exists()


def test_max_memory_must_be_positive(model, demo_dataset, tmp_path):
    scan = demo_dataset / "imagesTs" / "demo_100.nii.gz"
    r = run_medseg("predict", "-m", model, "-i", scan, "-o", tmp_path / "o", "--max-memory", "0")
    assert r.returncode == 2 and "--max-memory must be a positive number" in r.stderr
    assert "Traceback" not in r.stderr
