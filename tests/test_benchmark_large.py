"""``benchmarks/large.py --smoke``: the CT-scale benchmark runs end to end, both tools.

The smoke mode generates 96 x 96 x 40 CT-like volumes, runs medseg's and nnU-Net's
preprocessing on 3 of them, trains two tiny nnU-Net models (3 and 20 classes) for 2
iterations and predicts one CT with each through both tools. The printed table must
have every row, every figure a number (no tool failed or was killed), and the label
agreement a percentage.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import markdown_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "large.py"
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def test_large_benchmark_smoke(tmp_path):
    pytest.importorskip("nnunetv2")
    saved = tmp_path / "large.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--work", str(tmp_path / "work")]
        + ["--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = markdown_rows(done.stdout)
    metrics = ("wall (s)", "peak RSS (MB)")
    expected = [f"preprocess 3 cases: {m}" for m in (*metrics, "disk (MB)")]
    for k in (3, 20):
        what = f"predict 96x96x40, {k} classes"
        expected += [f"{what}: {m}" for m in metrics]
        agree = rows.get(f"{what}: labels agree")
        assert agree is not None, f"no agreement row for {k} classes in\n{done.stdout}"
        assert agree[0].endswith("%") and NUMBER.match(agree[0][:-1]), agree
        assert 0.0 <= float(agree[0][:-1]) <= 100.0
    for label in expected:
        assert label in rows, f"row {label!r} missing from\n{done.stdout}"
        medseg, nnunet, ratio = rows[label]
        assert NUMBER.match(medseg) and NUMBER.match(nnunet) and NUMBER.match(ratio), (
            label,
            rows[label],
        )
    figures = json.loads(saved.read_text())
    assert [p["classes"] for p in figures["predict"]] == [3, 20]
    assert all(isinstance(p["agreement"], float) for p in figures["predict"])
