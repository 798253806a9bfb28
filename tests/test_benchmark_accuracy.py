"""``benchmarks/accuracy.py --smoke``: the accuracy benchmark runs end to end, both tools.

The smoke mode plans and preprocesses 20 Hippocampus cases with nnU-Net, shares its
(reduced) plans and one 5-fold split with medseg, trains nnU-Net's nnUNetTrainer and
``medseg train`` for 2 x 2 iterations with seed 0, predicts the 4 validation cases with
each tool and scores both with medseg's Dice. The printed table must have a row for each
tool and seed, the seed means, the spreads and the difference, every Dice a number in
[0, 1] (the difference in [-1, 1]) and every training time a positive number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import markdown_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accuracy.py"
TOOLS = ("nnU-Net", "medseg")


def _dice(cells: list[str], low: float = 0.0) -> list[float]:
    values = [float(c) for c in cells[:3]]
    assert all(math.isfinite(v) and low <= v <= 1.0 for v in values), cells
    return values


def test_accuracy_benchmark_smoke(tmp_path, hippocampus):
    pytest.importorskip("nnunetv2")
    saved = tmp_path / "accuracy.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--work", str(tmp_path / "work")]
        + ["--save", str(saved), "--dataset", str(hippocampus)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = markdown_rows(done.stdout)
    assert "run" in rows and rows["run"][2] == "mean fg Dice", done.stdout
    for tool in TOOLS:
        cells = rows.get(f"{tool} seed 0")
        assert cells is not None, f"no row for {tool} in\n{done.stdout}"
        _dice(cells)
        assert float(cells[3]) > 0, cells
        _dice(rows[f"{tool} seed mean"])
        assert _dice(rows[f"{tool} seed spread (max - min)"]) == [0.0, 0.0, 0.0]  # one seed
    _dice(rows["medseg - nnU-Net (seed means)"], low=-1.0)
    figures = json.loads(saved.read_text())
    assert sorted(r["tool"] for r in figures["runs"]) == sorted(TOOLS)
    assert len(figures["setup"]["val_cases"]) == 4
    assert not (tmp_path / "work").exists()  # removed without --keep
