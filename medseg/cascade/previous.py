"""The previous stage's cross-validation segmentations, on a cascade stage's grid.

nnU-Net trains a cascade stage (3d_cascade_fullres) on the image plus the previous
stage's (3d_lowres) segmentation of each training case, one-hot. That segmentation is
the cross-validation prediction of the case, made by the fold that held it out, so the
second stage learns from the errors the first stage makes on unseen data. Here each
case's CV label map (``models/<previous>/fold_<k>/validation/CASE.nii.gz``, on the
original grid) is brought onto the cascade stage's preprocessed grid by the case's own
forward steps (:func:`medseg.preprocessing.pipeline.label_to_preprocessed`): exactly the
mapping prediction applies to a new scan's first-stage result, so training and
prediction feed the network the same kind of input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from medseg.core.errors import PlanError, RecordError
from medseg.core.layout import FoldDir, PreviousStageDir
from medseg.core.plans import Plans
from medseg.core.records import PREVIOUS_STAGE_SCHEMA, stamp
from medseg.io.atomic import atomic_dir
from medseg.io.preprocessed import case_ids, read_case_record, write_previous
from medseg.io.volumes import read_volume
from medseg.planning.splits import fold_cases
from medseg.preprocessing.pipeline import label_to_preprocessed

log = logging.getLogger(__name__)


def holding_out(splits: dict, cases: list[str]) -> dict[str, int]:
    """The fold whose validation set holds each case (every case exactly once)."""
    owner: dict[str, int] = {}
    for fold in range(len(splits["folds"])):
        for case in fold_cases(splits, fold, cases)[1]:
            owner[case] = fold
    missing = sorted(set(cases) - set(owner))
    if missing:
        raise RecordError(
            f"the splits hold out no fold for {len(missing)} case(s) ({', '.join(missing[:5])}); "
            "split again so that every case is validated once"
        )
    return owner


def export_previous_stage(
    previous_models: Path,
    preprocessed: Path,
    plans: Plans | Mapping,
    splits: dict,
    configuration: str,
    out: Path,
) -> dict:
    """Write ``out`` (a :class:`PreviousStageDir`) for cascade stage ``configuration``.

    ``previous_models`` is the previous stage's models folder (``fold_<k>/validation/``
    inside), ``preprocessed`` the cascade stage's preprocessed store. Returns the summary.
    """
    plans = Plans.of(plans)
    config = plans.configuration(configuration)
    if not config.previous_stage:
        raise PlanError(f"configuration {configuration!r} is not a cascade stage")
    cases = case_ids(preprocessed)
    owner = holding_out(splits, cases)
    with atomic_dir(
        out, "previous-stage folder", recognize=PreviousStageDir(out).summary.name
    ) as tmp:
        for case in cases:
            fold = FoldDir(Path(previous_models) / f"fold_{owner[case]}")
            path = fold.validation_label(case)
            if not path.is_file():
                raise RecordError(
                    f"{path}: missing; validate fold {owner[case]} of {config.previous_stage} "
                    "('medseg validate') before exporting its segmentations"
                )
            record = read_case_record(preprocessed, case)
            seg = label_to_preprocessed(read_volume(path, "label"), record, plans.reorients)
            write_previous(tmp, case, seg, config.patch_size)
            log.info("previous stage of %s from fold %d", case, owner[case])
        summary = stamp(
            {
                "configuration": configuration,
                "previous_stage": config.previous_stage,
                "folds": sorted(set(owner.values())),
                "cases": len(cases),
            },
            PREVIOUS_STAGE_SCHEMA,
        )
        PreviousStageDir(tmp).summary.write_text(json.dumps(summary, indent=1) + "\n")
    return summary
