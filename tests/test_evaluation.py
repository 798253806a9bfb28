"""Evaluation: metrics by hand, parity with nnU-Net v2, postprocessing choice, the CLI."""

from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import evaluate as evaluate_cli
from medseg.core.errors import GeometryError, MedsegError
from medseg.core.records import stamp
from medseg.core.volume import Volume
from medseg.evaluation.metrics import (
    EvaluationError,
    case_metrics,
    dice_per_label,
    evaluate_folder,
    read_summary,
    write_summary,
)
from medseg.evaluation.postprocessing import (
    POSTPROCESSING_SCHEMA,
    apply_postprocessing,
    choose_postprocessing,
    keep_largest_component,
)
from medseg.io.volumes import write_volume

SPACING = (0.5, 0.8, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
LABELS = {0: "background", 1: "one", 2: "two", 3: "three"}


def write_label(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    write_volume(Volume.label(np.asarray(array, dtype=np.uint8), affine), path)


def write_cases(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]):
    pred_dir, ref_dir = root / "pred", root / "ref"
    for name, (pred, ref) in cases.items():
        write_label(pred_dir / f"{name}.nii.gz", pred)
        write_label(ref_dir / f"{name}.nii.gz", ref)
    return pred_dir, ref_dir


def cube_pair(spurious: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 4x4x4 cube; prediction: the same cube one voxel (2 mm) further in z.

    Edges (voxels with a 6-neighbour outside) of each: 56. Surface distances, in
    both directions alike: 36 x 0 mm (shared side walls), 4 x 0.5 mm (inner face
    voxels to the side wall one x-step away) and 16 x 2.0 mm (the face not shared,
    one z-step). The spurious voxel is sqrt(3^2 + 4.8^2 + 16^2) = 16.97 mm away.
    """
    ref = np.zeros((12, 12, 14), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(ref)
    pred[2:6, 2:6, 3:7] = 1
    if spurious:
        pred[11, 11, 13] = 1
    return pred, ref


def test_cube_metrics_by_hand():
    m = case_metrics(*cube_pair(), [1], SPACING, nsd_tolerance_mm=1.0)[1]
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"], m["n_ref"]) == (48, 16, 16, 64, 64)
    assert m["dice"] == 2 * 48 / (2 * 48 + 16 + 16)  # 0.75, exactly
    # 95th percentile (linear) of 56 sorted distances: positions 52, 53 are 2.0 mm
    assert m["hd95"] == pytest.approx(2.0, abs=1e-6)
    # NSD: boundary voxels within 1 mm: (36 + 4) of 56, both ways
    assert m["nsd"] == pytest.approx(80 / 112, abs=1e-6)
    for tol, expected in ((0.4, 72 / 112), (2.0, 1.0)):  # 0.5 mm = one x-step, in mm
        nsd = case_metrics(*cube_pair(), [1], SPACING, nsd_tolerance_mm=tol)[1]["nsd"]
        assert nsd == pytest.approx(expected, abs=1e-6)


def test_hd95_ignores_a_far_outlier_voxel():
    m = case_metrics(*cube_pair(spurious=True), [1], SPACING)[1]
    assert m["dice"] == 96 / 129
    # 57 distances from the prediction: position 0.95 * 56 = 53.2 is still 2.0 mm;
    # the 16.97 mm outlier only moves HD100
    assert m["hd95"] == pytest.approx(2.0, abs=1e-6)
    assert m["nsd"] == pytest.approx(80 / 113, abs=1e-6)


def test_empty_cases():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    pred = np.zeros_like(ref)
    pred[3:5, 3:5, 3:5] = 2
    m = case_metrics(pred, ref, [1, 2, 3], SPACING)
    assert math.isnan(m[3]["dice"]) and math.isnan(m[3]["hd95"]) and math.isnan(m[3]["nsd"])
    assert m[3]["n_pred"] == m[3]["n_ref"] == 0
    for label, (fp, fn) in ((1, (0, 8)), (2, (8, 0))):  # only in ref; only in pred
        assert m[label]["dice"] == 0.0 and m[label]["nsd"] == 0.0
        assert math.isnan(m[label]["hd95"])
        assert (m[label]["fp"], m[label]["fn"], m[label]["tp"]) == (fp, fn, 0)
    identical = case_metrics(ref, ref, [1], SPACING)[1]
    assert (identical["dice"], identical["hd95"], identical["nsd"]) == (1.0, 0.0, 1.0)


def test_bad_inputs_are_clear_errors():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(EvaluationError, match="shape"):
        case_metrics(a, np.zeros((4, 4, 5), np.uint8), [1], SPACING)
    with pytest.raises(EvaluationError, match="spacing"):
        case_metrics(a, a, [1], (1.0, 0.0, 1.0))
    assert issubclass(EvaluationError, MedsegError) and issubclass(EvaluationError, ValueError)


def random_labels(rng: np.random.Generator, shape=(20, 24, 16), n_classes=3) -> np.ndarray:
    """Blobby label maps: smoothed noise cut into classes."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    edges = np.quantile(field, np.linspace(0.55, 0.95, n_classes))
    return np.digitize(field, edges).astype(np.uint8)


def parity_cases(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = {f"case_{i}": (random_labels(rng), random_labels(rng)) for i in range(3)}
    pred, ref = random_labels(rng), random_labels(rng)
    pred[pred == 3], ref[ref == 3] = 0, 0  # label 3 in neither: NaN
    cases["case_3"] = (pred, ref)
    pred, ref = random_labels(rng), random_labels(rng)
    ref[ref == 2] = 0  # label 2 only predicted: 0
    cases["case_4"] = (pred, ref)
    return cases


def test_dice_matches_nnunet_compute_metrics_on_folder(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred_dir, ref_dir = write_cases(tmp_path, parity_cases())
    ours = evaluate_folder(pred_dir, ref_dir, LABELS)
    theirs = compute_metrics_on_folder(
        str(ref_dir), str(pred_dir), None, SimpleITKIO(), ".nii.gz", [1, 2, 3], num_processes=1
    )
    by_case = {
        Path(r["prediction_file"]).name[: -len(".nii.gz")]: r for r in theirs["metric_per_case"]
    }
    assert sorted(by_case) == [c["case"] for c in ours["cases"]]
    worst = 0.0
    for case in ours["cases"]:
        for label in (1, 2, 3):
            mine, ref = case["metrics"][str(label)], by_case[case["case"]]["metrics"][label]
            assert (mine["tp"], mine["fp"], mine["fn"]) == (ref["TP"], ref["FP"], ref["FN"])
            if math.isnan(ref["Dice"]):
                assert math.isnan(mine["dice"])
            else:
                worst = max(worst, abs(mine["dice"] - ref["Dice"]))
    assert worst <= 1e-9
    assert math.isnan(ours["cases"][3]["metrics"]["3"]["dice"])
    assert ours["cases"][4]["metrics"]["2"]["dice"] == 0.0
    for label in (1, 2, 3):
        assert ours["mean"][str(label)]["dice"] == pytest.approx(
            theirs["mean"][label]["Dice"], abs=1e-9
        )
    assert ours["foreground_mean"]["dice"] == pytest.approx(
        theirs["foreground_mean"]["Dice"], abs=1e-9
    )
    assert ours["mean"]["3"]["n_dice"] == 4  # case_3 left out


def one_hot(mask: np.ndarray):
    """``(1, 2, X, Y, Z)`` tensor (background, label), as MONAI's metrics take them."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return torch.stack([~t, t])[None]


def same_number(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_count_dice_equals_monai_dice():
    from monai.metrics import compute_dice

    for pred, ref in parity_cases(seed=1).values():
        full = case_metrics(pred, ref, [1, 2, 3], SPACING)
        fast = dice_per_label(pred, ref, [1, 2, 3])
        for label in (1, 2, 3):
            p, r = one_hot(pred == label), one_hot(ref == label)
            monai = compute_dice(p, r.double(), include_background=False, ignore_empty=False)
            if not (pred == label).any() and not (ref == label).any():
                monai = math.nan  # MONAI says 1 for two empty maps; nnU-Net (and we) NaN
            assert same_number(fast[label], full[label]["dice"])
            assert same_number(full[label]["dice"], float(monai))


def random_masks(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping blobby masks, sometimes with a stray speck far off."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    p = field > rng.uniform(0.0, 0.2)
    r = (field + 0.3 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)) > 0.1
    if rng.random() < 0.5:
        p[tuple(int(rng.integers(0, s)) for s in shape)] = True
    return p, r


def test_hd95_and_nsd_from_one_surface_computation_equal_monai():
    """One computation of the surface distances gives MONAI's HD95 and NSD exactly, with
    anisotropic spacing and every row of the empty-mask table (MONAI's inf HD is NaN)."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from medseg.evaluation.surfaces import hd95_and_nsd

    rng = np.random.default_rng(7)
    checked = 0
    for i in range(24):
        shape = tuple(int(s) for s in rng.integers(6, 22, 3))
        spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, 3).round(2))
        tol = float(rng.choice([0.0, 0.5, 1.0, spacing[2], 2.5]))
        p, r = random_masks(rng, shape)
        if i % 6 == 1:
            p[:] = False  # only in the reference
        elif i % 6 == 2:
            r[:] = False  # only predicted
        elif i % 6 == 3:
            p[:], r[:] = False, False  # in neither
        pred, ref = p.astype(np.uint8), r.astype(np.uint8)
        ours = case_metrics(pred, ref, [1], spacing, nsd_tolerance_mm=tol)[1]
        with warnings.catch_warnings():  # MONAI warns of empty masks
            warnings.simplefilter("ignore")
            yp, y = one_hot(p), one_hot(r)
            hd = float(compute_hausdorff_distance(yp, y, percentile=95, spacing=list(spacing)))
            nsd = float(compute_surface_dice(yp, y, class_thresholds=[tol], spacing=list(spacing)))
        assert same_number(ours["hd95"], math.nan if math.isinf(hd) else hd), (i, ours, hd)
        assert same_number(ours["nsd"], nsd), (i, ours, nsd)
        if p.any() and r.any():
            assert hd95_and_nsd(p, r, spacing, tol) == (hd, nsd)
            checked += 1
    assert checked >= 8


def test_postprocessing_candidates_from_components_equal_applying_the_steps():
    """Dice of every candidate from one labelling per mask equals removing the voxels."""
    from medseg.evaluation.postprocessing import candidate_rows

    rng = np.random.default_rng(5)
    for i in range(40):
        shape = tuple(int(s) for s in rng.integers(5, 14, 3))
        k = int(rng.integers(2, 5))
        if i % 2:
            pred = random_labels(rng, shape, k - 1)
        else:
            pred = (rng.integers(0, k, shape) * (rng.random(shape) < 0.3)).astype(np.uint8)
        ref = random_labels(rng, shape, k - 1)
        labels = list(range(1, k))
        connectivity = int(rng.choice([6, 18, 26]))
        row = candidate_rows("c", pred, ref, labels, connectivity)
        pred_fg = keep_largest_component(pred, None, connectivity=connectivity)
        expected = {
            "baseline": dice_per_label(pred, ref, labels),
            "fg": dice_per_label(pred_fg, ref, labels),
        }
        if len(labels) > 1:
            for key, source in (("per_class", pred), ("fg_per_class", pred_fg)):
                kept = {
                    c: keep_largest_component(source, [c], connectivity=connectivity)
                    for c in labels
                }
                expected[key] = {c: dice_per_label(kept[c], ref, [c])[c] for c in labels}
        assert set(row) == {"case", *expected}
        for key, values in expected.items():
            for c in labels:
                assert same_number(row[key][c], values[c]), (i, key, c)


def test_summary_files(tmp_path):
    pred_dir, ref_dir = write_cases(tmp_path, parity_cases())
    summary = evaluate_folder(pred_dir, ref_dir, LABELS, processes=2, nsd_tolerance_mm=2.0)
    json_path, csv_path = tmp_path / "out" / "summary.json", tmp_path / "out" / "summary.csv"
    write_summary(summary, json_path, csv_path)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    strict = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert (strict["schema"], strict["schema_version"]) == ("medseg.evaluation", 1)
    assert strict["cases"][3]["metrics"]["3"]["dice"] is None
    back = read_summary(json_path)
    assert math.isnan(back["cases"][3]["metrics"]["3"]["dice"])
    for key, mean in summary["mean"].items():
        assert back["mean"][key]["dice"] == pytest.approx(mean["dice"], abs=1e-15, nan_ok=True)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 5 * 3 and rows[0]["name"] == "one"
    assert rows[0].keys() >= {"case", "label", "dice", "hd95", "nsd", "tp", "fp", "fn"}
    assert [f.name for f in json_path.parent.iterdir() if f.name.startswith(".")] == []


def test_prediction_without_reference_is_listed(tmp_path):
    pred_dir, ref_dir = write_cases(tmp_path, {"a": cube_pair(), "b": cube_pair()})
    write_label(pred_dir / "orphan.nii.gz", cube_pair()[0])
    with pytest.raises(EvaluationError, match=r"1 of 3 predictions .* orphan\.nii\.gz"):
        evaluate_folder(pred_dir, ref_dir, LABELS)


def test_grid_mismatch_names_the_case(tmp_path):
    pred_dir, ref_dir = write_cases(tmp_path, {"a": cube_pair(), "b": cube_pair()})
    shifted = AFFINE.copy()
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    write_label(pred_dir / "b.nii.gz", cube_pair()[0], shifted)
    with pytest.raises(GeometryError, match=r"case b: .*not on the voxel grid.*origin"):
        evaluate_folder(pred_dir, ref_dir, LABELS)
    write_label(pred_dir / "b.nii.gz", np.zeros((12, 12, 13), np.uint8))
    with pytest.raises(GeometryError, match=r"case b: .*shape"):
        evaluate_folder(pred_dir, ref_dir, LABELS)


def test_keep_largest_component_matches_nnunet():
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as nnunet_keep,
    )

    rng = np.random.default_rng(3)
    for _ in range(3):
        seg = random_labels(rng, (16, 18, 12))
        np.testing.assert_array_equal(
            keep_largest_component(seg, None), nnunet_keep(seg, [1, 2, 3])
        )
        for c in (1, 2, 3):
            np.testing.assert_array_equal(keep_largest_component(seg, [c]), nnunet_keep(seg, c))
    corner = np.zeros((4, 4, 4), np.uint8)
    corner[0, 0, 0], corner[1, 1, 1], corner[3, 3, 3] = 1, 2, 1
    kept = keep_largest_component(corner, None)  # 26-connected: {(0,0,0), (1,1,1)} is one object
    assert np.count_nonzero(kept) == 2 and kept[3, 3, 3] == 0 and kept[1, 1, 1] == 2
    ties = keep_largest_component(corner, None, connectivity=6)  # three 1-voxel objects, all tied
    np.testing.assert_array_equal(ties, corner)


def blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_spurious_component_removal_is_chosen(tmp_path):
    shape = (24, 24, 16)
    cases = {}
    for i in range(2):
        ref = np.zeros(shape, np.uint8)
        ref[blob(shape, (8 + i, 10, 8), 5)] = 1
        ref[blob(shape, (15 + i, 10, 8), 3) & (ref == 0)] = 2
        pred = ref.copy()
        pred[blob(shape, (20, 20, 3), 1.5)] = 1  # spurious, far away
        cases[f"c{i}"] = (pred, ref)
    pred_dir, ref_dir = write_cases(tmp_path, cases)
    record = choose_postprocessing(pred_dir, ref_dir, LABELS)
    assert record["steps"][0] == {"method": "keep_largest_component", "classes": None}
    assert record["dice_after"] > record["dice_before"]
    assert record["mean_dice_after"]["1"] == 1.0 and record["mean_dice_after"]["2"] == 1.0
    json.dumps(record, allow_nan=False)
    for pred, ref in cases.values():
        once = apply_postprocessing(pred, record)
        np.testing.assert_array_equal(once, ref)
        np.testing.assert_array_equal(apply_postprocessing(once, record), once)


def test_removal_that_hurts_is_not_chosen_but_a_class_step_is(tmp_path):
    """Label 1 is really two objects: removing the smaller hurts label 1, so the
    foreground step is vetoed even though the foreground mean improves; label 2's
    spurious component is then removed by its own step."""
    shape = (28, 24, 16)
    ref = np.zeros(shape, np.uint8)
    ref[blob(shape, (7, 8, 8), 5)] = 1
    ref[blob(shape, (22, 8, 8), 2)] = 1  # second real object of label 1
    ref[blob(shape, (7, 16, 8), 3) & (ref == 0)] = 2
    pred = ref.copy()
    pred[blob(shape, (24, 20, 8), 2.5)] = 2  # spurious label 2, larger than label 1's small object
    pred_dir, ref_dir = write_cases(tmp_path, {"c0": (pred, ref)})
    record = choose_postprocessing(pred_dir, ref_dir, LABELS)
    first = record["trials"][0]
    assert first["classes"] is None and not first["accepted"]
    assert first["dice_after"] > first["dice_before"]  # better on average, but:
    assert first["mean_dice_after"]["1"] < first["mean_dice_before"]["1"]
    assert record["steps"] == [{"method": "keep_largest_component", "classes": [2]}]
    assert record["dice_after"] > record["dice_before"]
    np.testing.assert_array_equal(apply_postprocessing(pred, record), ref)
    twice = apply_postprocessing(apply_postprocessing(pred, record), record)
    np.testing.assert_array_equal(twice, ref)


def test_foreground_then_class_step_is_applied_once_like_nnunet():
    """Removing a small class component can split the foreground: a second pass
    would then remove more. One pass gives exactly nnU-Net's result."""
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing as nnunet_apply,
    )
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as nnunet_keep,
    )

    seg = np.zeros((12, 5, 5), np.uint8)
    seg[0:2, 0:2, 0:2] = 1  # X: 8 voxels of label 1
    seg[2, 0, 0] = 2  # one voxel of label 2 joining X to Y
    seg[3:6, 0:3, 0:3] = 1  # Y: 27 voxels of label 1
    seg[6:9, 0:3, 0:3] = 2  # 27 voxels of label 2, touching Y
    step = {"method": "keep_largest_component"}
    steps = [{**step, "classes": None}, {**step, "classes": [2]}]
    record = stamp({"connectivity": 26, "steps": steps}, POSTPROCESSING_SCHEMA)
    once = apply_postprocessing(seg, record)
    expected = nnunet_apply(
        seg, [nnunet_keep, nnunet_keep], [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}]
    )
    np.testing.assert_array_equal(once, expected)
    assert np.count_nonzero(once != seg) == 1
    assert np.count_nonzero(apply_postprocessing(once, record) != once) == 8  # X goes too


def test_apply_postprocessing_rejects_unknown_records():
    label = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(MedsegError, match="not a medseg.postprocessing record"):
        apply_postprocessing(label, {"steps": []})
    with pytest.raises(EvaluationError, match="steps"):
        apply_postprocessing(label, stamp({}, POSTPROCESSING_SCHEMA))
    with pytest.raises(EvaluationError, match="unknown postprocessing step"):
        apply_postprocessing(label, stamp({"steps": [{"method": "dilate"}]}, POSTPROCESSING_SCHEMA))
    out = apply_postprocessing(label, stamp({"steps": []}, POSTPROCESSING_SCHEMA))
    assert out is not label and np.array_equal(out, label)


def run_evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    evaluate_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return args.run(args)


def test_cli_evaluate(tmp_path, capsys):
    pred_dir, ref_dir = write_cases(tmp_path, parity_cases())
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "one", "2": "two", "3": "three"}})
    )
    out_json = tmp_path / "cv" / "summary.json"
    assert run_evaluate([str(pred_dir), str(ref_dir), "-o", str(out_json), "-j", "1"]) == 0
    printed = capsys.readouterr().out
    assert "foreground mean" in printed and "NSD @ 1 mm" in printed
    summary = read_summary(out_json)
    assert summary["labels"] == {"1": "one", "2": "two", "3": "three"}
    assert (tmp_path / "cv" / "summary.csv").is_file()


def test_labels_from_the_three_json_forms():
    parse = evaluate_cli.labels_from_metadata
    expected = {1: "liver", 2: "tumour"}
    assert parse({"labels": {"0": "background", "1": "liver", "2": "tumour"}}, "msd") == expected
    assert parse({"labels": {"background": 0, "liver": 1, "tumour": 2}}, "nnunet") == expected
    assert parse({"labels": [[0, "background"], [1, "liver"], [2, "tumour"]]}, "plans") == expected
    with pytest.raises(MedsegError, match="region"):
        parse({"labels": {"background": 0, "whole": [1, 2]}}, "regions")


def counting(monkeypatch, module, name: str) -> list:
    """Record the argument of every call of ``module.name`` (cases scored in-process)."""
    calls, original = [], getattr(module, name)

    def wrapper(job):
        calls.append(job)
        return original(job)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_evaluation_cache_reuses_unchanged_cases_only(tmp_path, monkeypatch):
    """A rerun scores nothing; a rewritten or touched prediction, a changed reference or
    another tolerance is scored again; the results are those of an uncached evaluation."""
    import os

    from medseg.evaluation import metrics
    from medseg.evaluation.cache import CACHE_NAME

    cases = parity_cases(seed=2)
    pred_dir, ref_dir = write_cases(tmp_path, cases)
    calls = counting(monkeypatch, metrics, "_score_group")
    first = evaluate_folder(pred_dir, ref_dir, LABELS, cache=True)
    assert len(calls) == 5 and (pred_dir / CACHE_NAME).is_file()
    stored = json.loads((pred_dir / CACHE_NAME).read_text())
    assert sorted(stored["metrics"]) == sorted(cases)
    calls.clear()
    again = evaluate_folder(pred_dir, ref_dir, LABELS, cache=True)
    assert calls == []
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)

    pred, _ = cases["case_1"]
    write_label(pred_dir / "case_1.nii.gz", np.roll(pred, 2, axis=0))  # new content
    stat = (pred_dir / "case_2.nii.gz").stat()
    os.utime(pred_dir / "case_2.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    write_label(ref_dir / "case_3.nii.gz", cases["case_3"][1])  # same content, new file
    changed = evaluate_folder(pred_dir, ref_dir, LABELS, cache=True)
    assert sorted(pair.case for job in calls for _, pair in job[0]) == [
        "case_1",
        "case_2",
        "case_3",
    ]
    fresh = evaluate_folder(pred_dir, ref_dir, LABELS)  # no cache: everything computed
    assert json.dumps(changed, sort_keys=True) == json.dumps(fresh, sort_keys=True)
    assert changed["cases"][1]["metrics"] != first["cases"][1]["metrics"]
    calls.clear()
    evaluate_folder(pred_dir, ref_dir, LABELS, cache=True, nsd_tolerance_mm=2.0)
    assert len(calls) == 5  # another tolerance: nothing reused


def test_an_unreadable_cache_is_ignored(tmp_path):
    from medseg.evaluation.cache import CACHE_NAME

    pred_dir, ref_dir = write_cases(tmp_path, {"a": cube_pair()})
    (pred_dir / CACHE_NAME).write_text("{not json")
    summary = evaluate_folder(pred_dir, ref_dir, LABELS, cache=True)
    assert summary["cases"][0]["metrics"]["1"]["dice"] == 0.75
    assert json.loads((pred_dir / CACHE_NAME).read_text())["schema"] == "medseg.case_cache"


def test_postprocessing_cache_reuses_unchanged_cases(tmp_path, monkeypatch):
    from medseg.evaluation import postprocessing

    cases = {
        name: random_labels(np.random.default_rng(i), (14, 12, 10))
        for i, name in enumerate(("a", "b"))
    }
    pred_dir, ref_dir = write_cases(tmp_path, {n: (p, np.roll(p, 1, 0)) for n, p in cases.items()})
    calls = counting(monkeypatch, postprocessing, "_candidate_dice")
    first = choose_postprocessing(pred_dir, ref_dir, LABELS, cache=True)
    assert len(calls) == 2
    calls.clear()
    assert choose_postprocessing(pred_dir, ref_dir, LABELS, cache=True) == first
    assert calls == []
    write_label(pred_dir / "b.nii.gz", cases["a"])
    changed = choose_postprocessing(pred_dir, ref_dir, LABELS, cache=True)
    assert [job[0].case for job in calls] == ["b"]
    assert changed == choose_postprocessing(pred_dir, ref_dir, LABELS)


def test_ensemble_labels_equal_numpy_argmax():
    from medseg.evaluation.ensemble import argmax_labels

    rng = np.random.default_rng(0)
    probs = rng.integers(0, 4, (4, 6, 5, 7)).astype(np.float32) / 4  # many ties
    np.testing.assert_array_equal(argmax_labels(probs), np.argmax(probs, axis=0))
    probs[2, 1, 1, 1] = probs[0, 3, 2, 1] = np.nan  # NaN wins, as with np.argmax
    np.testing.assert_array_equal(argmax_labels(probs), np.argmax(probs, axis=0))
