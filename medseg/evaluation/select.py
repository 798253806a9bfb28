"""Choose the model from cross-validation, as nnU-Net's find_best_configuration does.

Every trained configuration is scored on its cross-validation predictions (each
case predicted by the fold that did not train on it), and so is every pairwise
ensemble (the two configurations' CV probabilities averaged). The candidate with
the best mean foreground Dice wins; connected-component postprocessing is then
chosen on its CV predictions, and the deployable model folder is written.

Expected layout of ``models``: ``<configuration>/fold_<k>/`` as written by
``medseg train`` (``checkpoint_final.safetensors`` and ``validation/`` with
``CASE.nii.gz`` and ``CASE.npz`` probabilities).

Each stage runs in one pool of worker processes over all its cases (ensembles:
one job per case, each configuration's probabilities read once; scoring: one job
per case for every candidate, the reference read once; postprocessing: the
chosen candidate's cases). Each candidate folder keeps a cache of what was made
and scored (:mod:`medseg.evaluation.cache`), so a rerun on unchanged inputs
computes nothing, and a changed file recomputes only its case.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from medseg.core.errors import EvaluationError
from medseg.core.layout import CvDir, FoldDir
from medseg.core.plans import Plans
from medseg.core.records import stamp
from medseg.dataset.layout import DatasetSpec
from medseg.evaluation.ensemble import make_ensembles, probability_files
from medseg.evaluation.metrics import evaluate_folders, to_json_value, write_summary
from medseg.evaluation.postprocessing import choose_postprocessing
from medseg.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

SELECTION_SCHEMA = ("medseg.selection", 1)


def trained_folds(models: Path, configuration: str) -> dict[int | str, Path]:
    """``{fold: fold folder}`` of a configuration with a final checkpoint and validation."""
    folds = {}
    for folder in sorted(Path(models, configuration).glob("fold_*")):
        fold = FoldDir(folder)
        if fold.checkpoint().exists() and fold.validation.is_dir():
            key = folder.name.split("_", 1)[1]
            folds[int(key) if key.isdigit() else key] = folder
    return folds


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def _drop_stale(folder: Path, cases: list[str]) -> None:
    """Remove what this stage wrote earlier into its own folder for cases no longer in the
    split (links, or ensemble labels), so that they are not scored as predictions."""
    keep = {f"{case}.nii.gz" for case in cases}
    for path in folder.glob("*.nii.gz") if folder.is_dir() else ():
        if path.name not in keep:
            path.unlink()


def _gather(folds: dict, out: Path, cases: list[str]) -> None:
    """Link each case's CV prediction (from whichever fold validated it) into ``out``."""
    found = {}
    for folder in folds.values():
        for f in FoldDir(folder).validation.glob("*.nii.gz"):
            found[f.name[: -len(".nii.gz")]] = f
    missing = sorted(set(cases) - set(found))
    if missing:
        raise EvaluationError(
            f"{out.name}: no cross-validation prediction for {len(missing)} case(s) "
            f"({', '.join(missing[:5])}); train and validate every fold first"
        )
    _drop_stale(out, cases)
    for case in cases:
        _link(found[case], out / f"{case}.nii.gz")


def _ensembles(
    models: Path, names: list[str], cv_dir: Path, cases: list[str], processes: int
) -> dict[str, list[str]]:
    """Make every pairwise ensemble's labels in ``cv_dir/ensemble_<a>__<b>``; key -> members."""
    ensembles = {f"ensemble_{a}__{b}": (a, b) for a, b in itertools.combinations(names, 2)}
    if ensembles:
        in_ensembles = sorted({name for pair in ensembles.values() for name in pair})
        files = {n: probability_files(trained_folds(models, n), n, cases) for n in in_ensembles}
        for key in ensembles:
            _drop_stale(cv_dir / key, cases)
        make_ensembles(ensembles, files, cv_dir, cases, processes)
    return {key: list(pair) for key, pair in ensembles.items()}


def score_candidates(
    cv_dir: Path, keys: list[str], refs: Path, labels: dict[int, str], processes: int
) -> dict[str, dict]:
    """Summaries of the candidates' folders ``cv_dir/<key>``: all cases in one pool, cached."""
    folders = {key: cv_dir / key for key in keys}
    return evaluate_folders(folders, refs, labels, processes=processes, cache=True)


def select_model(
    models: Path,
    spec: DatasetSpec,
    plans: Plans | Mapping,
    splits: dict,
    cv_dir: Path,
    *,
    configurations: list[str] | None = None,
    processes: int = 1,
) -> dict:
    """Score configurations and their pairwise ensembles; choose; pick postprocessing.

    Every ``(candidate, case)`` is scored by one pool of ``processes`` workers.
    What a rerun finds unchanged (the same prediction, probability and reference
    files) is taken from each candidate folder's cache instead of being made or
    scored again (:mod:`medseg.evaluation.cache`).
    """
    plans = Plans.of(plans)
    labels = plans.labels.all_names  # an ignore label, if any, masks the references
    cases = sorted({c for fold in splits["folds"] for c in fold["val"]})
    available = [c for c in plans.configurations if trained_folds(models, c)]
    names = [c for c in (configurations or available) if c in available]
    if not names:
        raise EvaluationError(f"{models}: no trained and validated configuration found")
    refs = CvDir(cv_dir).references
    _drop_stale(refs, cases)
    for case in cases:
        _link(spec.case(case).label, refs / f"{case}.nii.gz")
    candidates = {}
    for name in names:
        _gather(trained_folds(models, name), cv_dir / name, cases)
        candidates[name] = [name]
    candidates.update(_ensembles(models, names, cv_dir, cases, processes))
    scores = score_candidates(cv_dir, list(candidates), refs, labels, processes)
    for key, summary in scores.items():
        write_summary(summary, CvDir(cv_dir).summary(key), CvDir(cv_dir).summary_csv(key))
        log.info("%s: mean foreground Dice %.4f", key, summary["foreground_mean"]["dice"])
    best = max(
        candidates, key=lambda k: (scores[k]["foreground_mean"]["dice"], -len(candidates[k]))
    )
    postprocessing = choose_postprocessing(
        cv_dir / best, refs, labels, processes=processes, cache=True
    )
    return stamp(
        {
            "chosen": best,
            "members": candidates[best],
            "candidates": {
                k: {
                    "members": candidates[k],
                    "foreground_dice": scores[k]["foreground_mean"]["dice"],
                    "mean": scores[k]["mean"],
                }
                for k in candidates
            },
            "postprocessing": postprocessing,
            "cases": len(cases),
        },
        SELECTION_SCHEMA,
    )


def member_records(
    plans: Plans | Mapping, models: Path, names: list[str]
) -> tuple[list[dict], dict]:
    """Model members (cascades with their previous stage) and the checkpoints they need."""
    plans = Plans.of(plans)
    members, checkpoints = [], {}
    for name in names:
        folds = trained_folds(models, name)
        record = {"configuration": name, "folds": sorted(folds, key=str)}
        checkpoints[name] = {k: FoldDir(f).checkpoint() for k, f in folds.items()}
        previous = plans.configuration(name).previous_stage
        if previous:
            prev_folds = trained_folds(models, previous)
            record["previous"] = {"configuration": previous, "folds": sorted(prev_folds, key=str)}
            checkpoints[previous] = {k: FoldDir(f).checkpoint() for k, f in prev_folds.items()}
        members.append(record)
    return members, checkpoints


def write_selection(selection: dict, path: Path) -> None:
    """The selection record as strict JSON (NaN written as null), atomically."""
    write_text_atomic(path, json.dumps(to_json_value(selection), indent=1) + "\n")
