"""medseg select: configurations and ensembles scored on cross-validation; the model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import run_medseg

from medseg.evaluation.metrics import read_summary
from medseg.inference.bundle import load_model
from medseg.inference.predict import PredictOptions, predict_volume
from medseg.io import read_volume
from medseg.io.probabilities import load_probabilities


def test_select_scores_every_candidate_and_writes_the_model(demo_models, demo_dataset, tmp_path):
    root, plans, splits, _ = demo_models
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    cv, model = tmp_path / "cv", tmp_path / "model"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "medseg.cli.main",
            "select",
            str(root / "models"),
            "--dataset",
            str(demo_dataset),
            "--plans",
            str(tmp_path / "plans.json"),
            "--splits",
            str(tmp_path / "splits.json"),
            "-o",
            str(cv),
            "--model",
            str(model),
            "-j",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    selection = json.loads((cv / "selection.json").read_text())
    candidates = selection["candidates"]
    assert set(candidates) == {"3d_fullres", "2d", "ensemble_2d__3d_fullres"}
    best = max(candidates.values(), key=lambda c: c["foreground_dice"] or -1)
    assert candidates[selection["chosen"]]["foreground_dice"] == best["foreground_dice"]
    for key in candidates:  # every case of every fold was scored
        summary = read_summary(cv / key / "summary.json")
        assert summary["n_cases"] == 6
        assert (cv / key / "summary.csv").exists()
    assert "cross-validation (6 cases)" in r.stdout and "chosen:" in r.stdout
    meta = json.loads((model / "model.json").read_text())
    assert [m["configuration"] for m in meta["members"]] == selection["members"]
    assert all(m["folds"] == [0, 1] for m in meta["members"])
    assert meta["postprocessing"] == selection["postprocessing"]
    assert meta["cross_validation"]["chosen"] == selection["chosen"]
    image = read_volume(demo_dataset / "imagesTs" / "demo_100.nii.gz")
    path = tmp_path / "probabilities.b2nd"
    label = predict_volume(
        load_model(model), image, PredictOptions(mirroring=False), probabilities=path
    )
    assert label.array.shape == image.spatial_shape
    assert np.allclose(load_probabilities(path)[0].sum(0), 1, atol=2e-3)


def test_export_writes_the_selected_model(demo_models, demo_dataset, tmp_path):
    """select without --model, then export from selection.json: the workflow's two steps."""
    root, plans, splits, _ = demo_models
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "splits.json").write_text(json.dumps(splits))

    cv = tmp_path / "cv"
    r = run_medseg(
        "select",
        root / "models",
        "--dataset",
        demo_dataset,
        "--plans",
        tmp_path / "plans.json",
        "--splits",
        tmp_path / "splits.json",
        "-o",
        cv,
        "--configurations",
        "3d_fullres",
        "-j",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "model written" not in r.stdout and not (tmp_path / "model").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run_medseg(
        "export",
        root / "models",
        "--plans",
        tmp_path / "plans.json",
        "--selection",
        bad,
        "-o",
        tmp_path / "model",
    )
    assert r.returncode != 0 and "not a selection" in r.stderr and "bad.json" in r.stderr
    r = run_medseg(
        "export",
        root / "models",
        "--plans",
        tmp_path / "plans.json",
        "--selection",
        cv / "selection.json",
        "-o",
        tmp_path / "model",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert [m["configuration"] for m in meta["members"]] == ["3d_fullres"]
    weights = sorted(p.name for p in (tmp_path / "model" / "3d_fullres").glob("*.safetensors"))
    assert weights == ["fold_0.safetensors", "fold_1.safetensors"]


def test_a_rerun_of_select_takes_unchanged_results_from_the_cache(
    demo_models, demo_dataset, tmp_path, monkeypatch
):
    """Nothing is made or scored again for unchanged inputs; a touched probability file
    remakes and rescores that case of the ensemble only; the selection is the same."""
    import os

    from medseg.dataset import load_dataset
    from medseg.evaluation import ensemble, metrics, postprocessing
    from medseg.evaluation.select import select_model

    root, plans, splits, _ = demo_models
    spec, cv = load_dataset(demo_dataset), tmp_path / "cv"
    calls: dict[str, list] = {}
    for module, name in (
        (metrics, "_score_group"),
        (ensemble, "_make_case"),
        (postprocessing, "_candidate_dice"),
    ):
        original, seen = getattr(module, name), calls.setdefault(name, [])
        monkeypatch.setattr(module, name, lambda job, f=original, s=seen: s.append(job) or f(job))

    def select():
        for seen in calls.values():
            seen.clear()
        return json.dumps(select_model(root / "models", spec, plans, splits, cv), sort_keys=True)

    first = select()
    assert len(calls["_score_group"]) == 6 and len(calls["_make_case"]) == 6
    assert select() == first
    assert all(seen == [] for seen in calls.values()), calls
    npz = next((root / "models" / "2d").glob("fold_*/validation/*.npz"))
    stat = npz.stat()
    os.utime(npz, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert select() == first  # same content, so the same numbers
    case = npz.name[: -len(".npz")]
    assert [job[0] for job in calls["_make_case"]] == [case]
    scored = [(key, pair.case) for job in calls["_score_group"] for key, pair in job[0]]
    assert scored == [("ensemble_2d__3d_fullres", case)]
