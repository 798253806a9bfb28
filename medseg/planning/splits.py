"""K-fold cross-validation splits: made once, by their own step, and validated."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.core.records import SPLITS_SCHEMA, RecordError, check_schema, stamp


def make_splits(case_ids: Sequence[str], n_folds: int = 5, seed: int = 12345) -> dict:
    """A splits record: cases shuffled with ``seed`` and dealt into ``n_folds`` folds.

    Each case is in exactly one validation set; fold sizes differ by at most one.
    """
    ids = sorted(case_ids)
    if n_folds < 2:
        raise RecordError(f"need at least 2 folds, got {n_folds}")
    if len(ids) < n_folds:
        raise RecordError(f"cannot split {len(ids)} cases into {n_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = []
    for part in np.array_split(order, n_folds):
        val = sorted(ids[i] for i in part)
        folds.append({"train": [c for c in ids if c not in set(val)], "val": val})
    return stamp({"seed": seed, "n_folds": n_folds, "folds": folds}, SPLITS_SCHEMA)


def validate_splits(record: object, case_ids: Sequence[str], where: str = "splits") -> dict:
    """Check a splits record (ours, or nnU-Net's list of {train, val}) against the cases.

    Returns it in medseg's form. Every fold must use only known cases, keep
    train and val disjoint, and together the folds must validate each case once.
    """
    if isinstance(record, list):  # nnU-Net's splits_final.json
        record = stamp({"seed": None, "n_folds": len(record), "folds": record}, SPLITS_SCHEMA)
    check_schema(record, SPLITS_SCHEMA, where)
    known = set(case_ids)
    seen: list[str] = []
    folds = record.get("folds")
    if not isinstance(folds, list) or len(folds) < 2:
        raise RecordError(f"{where}: needs a list of at least 2 folds")
    for k, fold in enumerate(folds):
        train, val = set(fold.get("train", ())), set(fold.get("val", ()))
        unknown = sorted((train | val) - known)
        if unknown:
            raise RecordError(f"{where}: fold {k} names cases not in the dataset: {unknown[:5]}")
        if train & val:
            raise RecordError(
                f"{where}: fold {k} has cases in both train and val: {sorted(train & val)[:5]}"
            )
        if not val or not train:
            raise RecordError(f"{where}: fold {k} has an empty train or val set")
        seen.extend(val)
    twice = sorted({c for c in seen if seen.count(c) > 1})
    if twice:
        raise RecordError(f"{where}: cases validated in more than one fold: {twice[:5]}")
    return record


def fold_cases(splits: dict, fold: int | str, available: list[str]) -> tuple[list[str], list[str]]:
    """Training and validation case ids of ``fold`` ('all': train and validate on all)."""
    if fold == "all":
        train, val = sorted(available), sorted(available)
    else:
        folds = splits["folds"]
        if not 0 <= int(fold) < len(folds):
            raise RecordError(
                f"fold {fold} does not exist; the splits have {len(folds)} folds (0 to "
                f"{len(folds) - 1})"
            )
        train, val = folds[int(fold)]["train"], folds[int(fold)]["val"]
    missing = sorted(set(train + val) - set(available))
    if missing:
        raise RecordError(
            f"{len(missing)} case(s) of the split are not preprocessed ({', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); preprocess them or remake the split"
        )
    return list(train), list(val)
