"""Every on-disk name medseg uses, in one place: results folders, fold folders, model folders.

Python code and the Snakemake rules build paths with these classes (rules pass
wildcards such as ``"{config}"`` as names, which survive into the path), so a file
is renamed here or nowhere. Pure names: nothing here touches the disk.

A workflow results folder::

    RESULTS/dataset_check.json  fingerprint.json  plans.json  configurations.json
            splits.json  preprocessed/<config>/  models/<config>/fold_<k>/  cv/selection.json
            model/  predictions/ (manifest.jsonl, summary.json, summary.csv)
            qc.png  training_curves.png  logs/  benchmarks/

A fold folder (``medseg train`` / ``medseg validate``)::

    checkpoint_{latest,best,final}.safetensors  training_log.jsonl  progress.png
    validation/ (CASE.nii.gz, CASE.npz, metrics.json)

A model folder (``medseg export``)::

    model.json  plans.json  <config>/fold_<k>.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

WEIGHTS_SUFFIX = ".safetensors"


class Checkpoint(str, Enum):
    """The checkpoints a training run writes (file stems)."""

    LATEST = "checkpoint_latest"
    BEST = "checkpoint_best"
    FINAL = "checkpoint_final"


@dataclass(frozen=True)
class FoldDir:
    """``models/<config>/fold_<k>/``: one training run and its validation."""

    root: Path

    def checkpoint(self, which: Checkpoint | str = Checkpoint.FINAL) -> Path:
        return Path(self.root) / f"{Checkpoint(which).value}{WEIGHTS_SUFFIX}"

    @property
    def training_log(self) -> Path:
        return Path(self.root) / "training_log.jsonl"

    @property
    def progress(self) -> Path:
        return Path(self.root) / "progress.png"

    @property
    def validation(self) -> Path:
        return Path(self.root) / "validation"

    @property
    def validation_metrics(self) -> Path:
        return self.validation / "metrics.json"

    def validation_label(self, case_id: str) -> Path:
        return self.validation / f"{case_id}.nii.gz"

    def validation_probabilities(self, case_id: str) -> Path:
        return self.validation / f"{case_id}.npz"


def fold_name(fold: int | str) -> str:
    """``fold_0``, ``fold_all``."""
    return f"fold_{fold}"
