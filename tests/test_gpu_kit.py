"""The GPU kit (``benchmarks/gpu``): what it carries, and its CPU dry run end to end.

The kit is run by hand on the lent GPU machine (``benchmarks/gpu/README.md``); here it
must stay runnable: its package lists carry only what that machine lacks, its table
has every row, and its whole run works on a CPU, in a device-like interpreter (every
module that machine and the kit both lack blocked), with tiny counts.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import markdown_rows

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu"


def _module(name: str):
    sys.path.insert(0, str(KIT))
    try:
        spec = importlib.util.spec_from_file_location(f"gpu_{name}", KIT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(KIT))


def _kit_rows(markdown: str) -> dict[str, list[str]]:
    """The results table's rows: the parts, labelled "(a) ...", "(b) ..."."""
    return {k: v for k, v in markdown_rows(markdown).items() if k.startswith("(")}


def test_kit_carries_only_what_the_gpu_machine_lacks():
    packages = _module("kit_packages")
    kit = {packages.normalize(p) for p in packages.KIT_PACKAGES}
    device = {packages.normalize(p) for p in packages.DEVICE_PACKAGES}
    assert {"torch", "numpy", "scipy", "scikit-image"} <= device
    assert not kit & device, f"the kit would replace the GPU machine's {sorted(kit & device)}"
    assert not kit & {packages.normalize(d) for d in packages.STUBBED.values()}
    assert len(kit) == len(packages.KIT_PACKAGES), "a package is listed twice"
    for name in packages.STUBBED:  # each stubbed module has its stub
        assert (KIT / "stubs" / name / "__init__.py").is_file()


def test_make_target_builds_into_an_ignored_folder():
    makefile = (ROOT / "Makefile").read_text()
    assert "gpu-kit:" in makefile and "benchmarks/gpu/build_kit.py" in makefile
    assert "/benchmarks/gpu/kit/" in (ROOT / ".gitignore").read_text().splitlines()


def test_table_has_every_row_even_when_nothing_ran():
    report = _module("kit_report")
    results = {"device": "cuda", "stubs": [], "budgets": {"total": 460}, "parts": {}}
    rows = _kit_rows(report.markdown(results))
    assert list(rows) == list(report.ROWS)
    assert all(len(cells) == 5 for cells in rows.values())


@pytest.mark.slow
def test_cpu_dry_run(tmp_path, hippocampus):
    """``build_kit.py`` (data of 10 cases, no wheels), then ``kit_run.py --device cpu
    --smoke --no-install --emulate-device``: every part runs, every row has figures."""
    pytest.importorskip("nnunetv2")
    kit, out = tmp_path / "kit", tmp_path / "out"
    build = [sys.executable, KIT / "build_kit.py", "--out", kit, "--cases", "10"]
    build += ["--skip-wheels", "--dataset", hippocampus]
    done = subprocess.run(list(map(str, build)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = [sys.executable, KIT / "kit_run.py", "--device", "cpu", "--smoke", "--no-install"]
    run += ["--emulate-device", "--kit", kit, "--out", out, "--work", tmp_path / "work"]
    done = subprocess.run(list(map(str, run)), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    log = (out / "kit_run.log").read_text()[-4000:]
    for name, part in results["parts"].items():
        assert part["status"] == "ok", f"{name}: {part['status']}\n{log}"
    tests = results["parts"]["tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["passed"] + tests["skipped"] > 0
    assert results["stubs"] == ["SimpleITK", "cc3d"]  # emulated: the device lacks both
    rows = _kit_rows((out / "results.md").read_text())
    report = _module("kit_report")
    assert list(rows) == list(report.ROWS)
    for label in ("(b) training iterations/s", "(d) prediction s/case"):
        assert all(float(v) > 0 for v in rows[label][1:3]), (label, rows[label])
    assert all(0 <= float(v) <= 1 for v in rows["(c) mean Dice"][1:3]), rows["(c) mean Dice"]
    assert rows["(d) labels agree"][1].endswith("%")
