"""fingerprint, plan, split, preprocess through the real command line."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_medseg

from medseg.io.preprocessed import case_ids, open_case_arrays, read_case_record


def test_stages_chain_on_the_demo(demo_dataset, tmp_path):
    fp, plans, splits, pre = (tmp_path / n for n in ("fp.json", "plans.json", "splits.json", "pre"))
    r = run_medseg("fingerprint", demo_dataset, "-o", fp, "-j", "2")
    assert r.returncode == 0, r.stderr
    record = json.loads(fp.read_text())
    assert record["schema"] == "medseg.fingerprint" and len(record["cases"]) == 6
    assert record["cases"][0]["orientation"] == "PLS"
    r = run_medseg(
        "plan",
        fp,
        "-o",
        plans,
        "--gpu-memory",
        "1",
        "--base-features",
        "8",
        "--configurations",
        "3d_fullres",
        "--patch-size",
        "3d_fullres=16x48x48",
    )
    assert r.returncode == 0, r.stderr
    p = json.loads(plans.read_text())
    assert list(p["configurations"]) == ["3d_fullres"]
    assert p["configurations"]["3d_fullres"]["patch_size"] == [16, 48, 48]
    assert p["planner_settings"]["base_features"] == 8
    r = run_medseg("split", demo_dataset, "-o", splits, "--folds", "2", "--seed", "1")
    assert r.returncode == 0 and len(json.loads(splits.read_text())["folds"]) == 2
    r = run_medseg(
        "preprocess", demo_dataset, plans, "--config", "3d_fullres", "-o", pre, "-j", "2"
    )
    assert r.returncode == 0, r.stderr
    assert len(case_ids(pre)) == 6
    data, seg = open_case_arrays(pre, "demo_000")
    rec = read_case_record(pre, "demo_000")
    assert data.shape[1:] == seg.shape == tuple(rec["shape"])
    assert set(np.unique(seg[:])) <= {-1, 0, 1, 2}
    assert json.loads((pre / "preprocess.json").read_text())["configuration"] == "3d_fullres"


def test_fingerprint_stops_on_a_bad_case_and_writes_nothing(demo_module, tmp_path):
    root = demo_module.write_dataset(tmp_path / "d", 4, 0)
    (root / "labelsTr" / "demo_002.nii.gz").write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "fp.json"
    r = run_medseg("fingerprint", root, "-o", out)
    assert r.returncode == 2
    assert "case demo_002: labelsTr/demo_002.nii.gz: cannot read" in r.stderr
    assert "--skip-invalid" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.glob(".fp.json*")) == []
    r = run_medseg("fingerprint", root, "-o", out, "--skip-invalid")
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert [c["case_id"] for c in record["cases"]] == ["demo_000", "demo_001", "demo_003"]
    assert record["excluded"][0]["case_id"] == "demo_002"
    assert "cannot read" in record["excluded"][0]["problems"][0]


def test_preprocess_failure_leaves_no_output_folder(demo_module, tmp_path):
    root = demo_module.write_dataset(tmp_path / "d", 3, 0)
    fp, plans = tmp_path / "fp.json", tmp_path / "plans.json"
    assert run_medseg("fingerprint", root, "-o", fp).returncode == 0
    assert run_medseg("plan", fp, "-o", plans, "--configurations", "3d_fullres").returncode == 0
    lab = root / "labelsTr" / "demo_001.nii.gz"
    lab.write_bytes(lab.read_bytes()[:200])  # corrupt after planning
    r = run_medseg("preprocess", root, plans, "--config", "3d_fullres", "-o", tmp_path / "pre")
    assert r.returncode == 2 and "demo_001" in r.stderr
    assert not (tmp_path / "pre").exists() and list(tmp_path.glob(".pre.tmp-*")) == []
    r = run_medseg("preprocess", root, plans, "--config", "2d", "-o", tmp_path / "pre")
    assert r.returncode == 2 and "no configuration '2d'" in r.stderr


def test_plan_refuses_a_wrong_record(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "medseg.plans", "schema_version": 1}))
    r = run_medseg("plan", bad, "-o", tmp_path / "p.json")
    assert r.returncode == 2 and "not a medseg.fingerprint record" in r.stderr
    r = run_medseg("plan", tmp_path / "missing.json", "-o", tmp_path / "p.json")
    assert r.returncode == 2 and "file not found" in r.stderr
