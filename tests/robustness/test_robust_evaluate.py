"""``medseg evaluate`` counts every reference case: a missing or unreadable prediction is
an error by default, or, with ``--missing-as-empty``, an empty prediction that scores 0.

Per class: the exit code, a message naming each case and both folders, no traceback,
no summary written on failure, inputs byte-identical afterwards, and the numbers of
the cases scored as empty checked by hand.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_medseg

from medseg.evaluation.metrics import EvaluationError, case_metrics, evaluate_folder, read_summary
from robustness.robust_tools import assert_clean_failure, tree_digest, write_nifti

LABELS = {1: "organ", 2: "lesion"}
SHAPE = (6, 6, 4)


def reference(case: str) -> np.ndarray:
    """a: labels 1 and 2; b: label 1 only; c: labels 1 and 2."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    if case != "b":
        ref[4:6, 4:6, 2:4] = 2
    return ref


@pytest.fixture()
def folders(tmp_path) -> tuple[Path, Path, Path]:
    """Three references (a, b, c), one prediction (a, exactly right), and a labels file."""
    preds, refs = tmp_path / "preds", tmp_path / "labels"
    for case in ("a", "b", "c"):
        write_nifti(refs / f"{case}.nii.gz", reference(case))
    write_nifti(preds / "a.nii.gz", reference("a"))
    meta = tmp_path / "meta" / "dataset.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    return preds, refs, meta


def evaluate(preds: Path, refs: Path, meta: Path, out: Path, *extra: str):
    return run_medseg("evaluate", preds, refs, "--labels", meta, "-o", out, *extra)


def corrupt(preds: Path) -> None:
    """b: bytes that are no NIfTI at all; c: a NIfTI cut off half-way."""
    (preds / "b.nii.gz").write_bytes(b"this is not a NIfTI file\x00\x01")
    whole = write_nifti(preds / "c.nii.gz", reference("c")).read_bytes()
    (preds / "c.nii.gz").write_bytes(whole[: len(whole) // 2])


def test_missing_predictions_are_an_error_naming_each_case(folders, tmp_path):
    preds, refs, meta = folders
    before = tree_digest(preds), tree_digest(refs)
    out = tmp_path / "out" / "summary.json"
    result = evaluate(preds, refs, meta, out)
    assert_clean_failure(
        result,
        2,
        "error:",
        "2 of 3 reference cases",
        "b.nii.gz",
        "c.nii.gz",
        str(preds),
        str(refs),
        "--missing-as-empty",
    )
    assert f"have no prediction in {preds}: b.nii.gz, c.nii.gz." in result.stderr
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert not (preds / "summary.json").exists()
    assert (tree_digest(preds), tree_digest(refs)) == before


def test_missing_as_empty_scores_every_reference(folders, tmp_path):
    preds, refs, meta = folders
    before = tree_digest(preds), tree_digest(refs)
    out = tmp_path / "out" / "summary.json"
    result = evaluate(preds, refs, meta, out, "--missing-as-empty")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "2 of 3 cases had no readable prediction" in result.stdout
    assert "scored as empty" in result.stderr  # the logged warning
    summary = read_summary(out)
    assert (summary["n_cases"], summary["n_missing"]) == (3, 2)
    assert summary["missing_cases"] == ["b", "c"] and summary["missing"] == "empty"
    cases = {c["case"]: c for c in summary["cases"]}
    assert cases["a"]["missing"] is False and cases["a"]["prediction"].endswith("a.nii.gz")
    for case in ("b", "c"):
        assert cases[case]["missing"] is True and cases[case]["prediction"] is None
        assert "no prediction file" in cases[case]["note"]
        organ = cases[case]["metrics"]["1"]
        assert organ["dice"] == 0.0 and organ["nsd"] == 0.0 and math.isnan(organ["hd95"])
    assert cases["c"]["metrics"]["2"]["dice"] == 0.0
    assert math.isnan(cases["b"]["metrics"]["2"]["dice"])  # lesion in neither map
    # by hand: organ (1 + 0 + 0) / 3; lesion (1 + 0) / 2, b left out; foreground their mean
    assert summary["mean"]["1"]["dice"] == pytest.approx(1 / 3)
    assert summary["mean"]["2"]["dice"] == pytest.approx(1 / 2)
    assert summary["mean"]["2"]["n_dice"] == 2
    assert summary["foreground_mean"]["dice"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert summary["mean"]["1"]["hd95"] == 0.0 and summary["mean"]["1"]["n_hd95"] == 1
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {(r["case"], r["missing"]) for r in rows} == {("a", "0"), ("b", "1"), ("c", "1")}
    assert (tree_digest(preds), tree_digest(refs)) == before


def test_unreadable_predictions_are_all_listed(folders, tmp_path):
    preds, refs, meta = folders
    corrupt(preds)
    before = tree_digest(preds), tree_digest(refs)
    out = tmp_path / "out" / "summary.json"
    result = evaluate(preds, refs, meta, out)
    assert_clean_failure(
        result,
        2,
        "error:",
        "2 of 3 predictions",
        "cannot be read",
        "b.nii.gz",
        "c.nii.gz",
        str(refs),
        "--missing-as-empty",
    )
    assert not out.exists() and not out.with_suffix(".csv").exists()
    result = evaluate(preds, refs, meta, out, "--missing-as-empty")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert (summary["n_cases"], summary["n_missing"]) == (3, 2)
    cases = {c["case"]: c for c in summary["cases"]}
    for case in ("b", "c"):
        assert cases[case]["missing"] is True and cases[case]["prediction"] is None
        assert cases[case]["note"].startswith("scored as an empty prediction: ")
        assert str(preds / f"{case}.nii.gz") in cases[case]["note"]  # the read error
        assert cases[case]["metrics"]["1"]["dice"] == 0.0
    assert summary["mean"]["1"]["dice"] == pytest.approx(1 / 3)
    assert (tree_digest(preds), tree_digest(refs)) == before


def test_empty_prediction_scores_as_case_metrics_of_zeros(folders):
    preds, refs, _ = folders
    summary = evaluate_folder(preds, refs, LABELS, missing="empty")
    ref = reference("c")
    expected = case_metrics(np.zeros_like(ref), ref, [1, 2], (1.0, 1.0, 1.0))
    got = summary["cases"][2]["metrics"]
    assert summary["cases"][2]["case"] == "c"
    for label in (1, 2):
        for key, value in expected[label].items():
            mine = got[str(label)][key]
            assert mine == value or (math.isnan(value) and math.isnan(mine)), (label, key)


def test_missing_predictions_are_found_before_anything_is_scored(folders):
    preds, refs, _ = folders
    corrupt(preds)
    (preds / "c.nii.gz").unlink()  # c missing, b unreadable: the missing one stops it first
    scored: list[str] = []
    with pytest.raises(EvaluationError, match=r"1 of 3 reference cases .* c\.nii\.gz"):
        evaluate_folder(preds, refs, LABELS, on_case_done=scored.append)
    assert scored == []


def test_many_missing_cases_are_listed_with_a_count(tmp_path):
    preds, refs = tmp_path / "preds", tmp_path / "labels"
    for i in range(13):
        write_nifti(refs / f"case_{i:02d}.nii.gz", reference("a"))
    write_nifti(preds / "case_00.nii.gz", reference("a"))
    with pytest.raises(EvaluationError) as info:
        evaluate_folder(preds, refs, LABELS)
    message = str(info.value)
    assert "12 of 13 reference cases" in message and "... and 2 more" in message
    assert "case_10.nii.gz" in message and "case_11.nii.gz" not in message


def test_a_subset_is_scored_only_when_named(folders):
    preds, refs, _ = folders
    summary = evaluate_folder(preds, refs, LABELS, cases=["a"])
    assert summary["n_cases"] == 1 and summary["n_missing"] == 0
    assert summary["foreground_mean"]["dice"] == 1.0
    with pytest.raises(EvaluationError, match=r"requested cases have no reference .* z\.nii\.gz"):
        evaluate_folder(preds, refs, LABELS, cases=["a", "z"])
    with pytest.raises(EvaluationError, match="missing must be one of"):
        evaluate_folder(preds, refs, LABELS, missing="skip")
