"""Run preprocessing over a dataset for one configuration, in parallel, all or nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.core.layout import PREPROCESS_SUMMARY, PreprocessedDir
from medseg.core.parallel import parallel_map
from medseg.core.plans import Plans
from medseg.dataset.check import read_case
from medseg.dataset.layout import Case, DatasetSpec
from medseg.io.atomic import atomic_dir, write_text_atomic
from medseg.io.preprocessed import write_case
from medseg.prepare.schedule import largest_first
from medseg.preprocessing.locations import sample_class_locations
from medseg.preprocessing.pipeline import preprocess_case


@dataclass(frozen=True)
class _Job:
    spec: DatasetSpec
    case: Case
    index: int
    plans: Plans
    configuration: str
    folder: Path
    seed: int


def _run(job: _Job) -> str:
    image, label = read_case(job.spec, job.case)
    data, seg, record = preprocess_case(
        image, label, job.plans, job.configuration, job.case.case_id
    )
    # foreground locations for oversampling belong to the training store, not preprocessing
    classes = job.plans.labels.foreground
    rng = np.random.default_rng([job.seed, job.index])
    locations = sample_class_locations(seg, classes, rng) if label is not None else {}
    patch = job.plans.configuration(job.configuration).patch_size
    write_case(job.folder, job.case.case_id, data, seg, record, locations, patch)
    return job.case.case_id


def preprocess_dataset(
    spec: DatasetSpec,
    plans: Plans | Mapping,
    configuration: str,
    out: Path,
    *,
    processes: int = 1,
    seed: int = 1234,
    on_case_done: Callable[[str], None] | None = None,
) -> dict:
    """Preprocess every training case into ``out`` (replaced only when all succeed).

    Cases are written into a temporary folder beside ``out`` that is renamed at
    the end, so an interrupted or failed run never leaves a partial ``out``.
    Returns the summary also written to ``out/preprocess.json``.
    """
    plans = Plans.of(plans)
    plans.configuration(configuration)  # fail early on an unknown name
    start = time.perf_counter()
    with atomic_dir(out, "preprocessed folder", recognize=PREPROCESS_SUMMARY) as tmp:
        cases = spec.training
        jobs = [
            _Job(spec, cases[i], i, plans, configuration, tmp, seed) for i in largest_first(cases)
        ]
        for case_id in parallel_map(_run, jobs, processes):
            if on_case_done:
                on_case_done(case_id)
        summary = {
            "configuration": configuration,
            "plans_name": plans.plans_name,
            "dataset": str(spec.root),
            "cases": [c.case_id for c in spec.training],
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_text_atomic(PreprocessedDir(tmp).summary, json.dumps(summary, indent=1) + "\n")
        write_text_atomic(PreprocessedDir(tmp).plans_json, plans.to_json())
    return summary
