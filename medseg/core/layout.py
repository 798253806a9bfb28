"""Every on-disk name medseg uses, in one place: results folders, fold folders, model folders.

Python code and the Snakemake rules build paths with these classes (rules pass
wildcards such as ``"{config}"`` as names, which survive into the path), so a file
is renamed here or nowhere. Pure names: nothing here touches the disk.

A workflow results folder::

    RESULTS/dataset_check.json  fingerprint.json  plans.json  configurations.json
            splits.json  preprocessed/<config>/  models/<config>/fold_<k>/  cv/selection.json
            previous_stage/<cascade config>/ (CASE.b2nd, previous_stage.json)
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


#: The summary a preprocessed folder holds (written last: its presence means complete).
PREPROCESS_SUMMARY = "preprocess.json"


def fold_name(fold: int | str) -> str:
    """``fold_0``, ``fold_all``."""
    return f"fold_{fold}"


@dataclass(frozen=True)
class ModelFolder:
    """A deployable model folder (``medseg export`` / ``medseg select --model``)."""

    root: Path

    @property
    def model_json(self) -> Path:
        return Path(self.root) / "model.json"

    @property
    def plans_json(self) -> Path:
        return Path(self.root) / "plans.json"

    def weights(self, configuration: str, fold: int | str) -> Path:
        return Path(self.root) / configuration / f"{fold_name(fold)}{WEIGHTS_SUFFIX}"


@dataclass(frozen=True)
class PredictionDir:
    """What ``medseg predict`` writes into its output folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return Path(self.root) / "manifest.jsonl"

    @property
    def claims(self) -> Path:
        """Hidden ledger of output files claimed before they are written."""
        return Path(self.root) / ".medseg-claims"

    def label(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.nii.gz"

    def dicom_seg(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.seg.dcm"

    def rtstruct(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.rtstruct.dcm"

    def probabilities(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}_probabilities.b2nd"

    def statistics(self, case_id: str) -> Path:
        """Measurements of each structure (``medseg predict --statistics``)."""
        return Path(self.root) / f"{case_id}.statistics.json"

    def statistics_csv(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.statistics.csv"

    def preview(self, case_id: str) -> Path:
        """Three orthogonal slices per structure (``medseg predict --preview``)."""
        return Path(self.root) / f"{case_id}.preview.png"

    @property
    def statistics_table(self) -> Path:
        """Every case's measurements, one row per case and structure (``--statistics``)."""
        return Path(self.root) / "statistics.csv"

    @property
    def summary(self) -> Path:
        """The test scores, when reference labels are given (``medseg evaluate -o``)."""
        return Path(self.root) / "summary.json"

    @property
    def summary_csv(self) -> Path:
        return Path(self.root) / "summary.csv"


@dataclass(frozen=True)
class CvDir:
    """``cv/``: what ``medseg select`` writes: per candidate (a configuration or an
    ensemble) its CV predictions and scores; the references; the selection."""

    root: Path

    @property
    def selection(self) -> Path:
        return Path(self.root) / "selection.json"

    @property
    def references(self) -> Path:
        return Path(self.root) / "references"

    def candidate(self, key: str) -> Path:
        return Path(self.root) / key

    def summary(self, key: str) -> Path:
        return self.candidate(key) / "summary.json"

    def summary_csv(self, key: str) -> Path:
        return self.candidate(key) / "summary.csv"


#: Per-case scores cached in a folder of predictions (see medseg.evaluation.cache).
CASE_CACHE = "case_cache.json"


@dataclass(frozen=True)
class Results:
    """A workflow results folder (the ``output`` of the workflow config)."""

    root: Path

    def _at(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    @property
    def dataset_check(self) -> Path:
        return self._at("dataset_check.json")

    @property
    def fingerprint(self) -> Path:
        return self._at("fingerprint.json")

    @property
    def plans(self) -> Path:
        return self._at("plans.json")

    @property
    def configurations(self) -> Path:
        """What to preprocess and train (``medseg plan`` writes it beside the plans)."""
        return self._at("configurations.json")

    @property
    def splits(self) -> Path:
        return self._at("splits.json")

    def preprocessed(self, configuration: str) -> Path:
        return self._at("preprocessed", configuration)

    def previous_stage(self, configuration: str) -> PreviousStageDir:
        """The previous stage's CV segmentations for cascade stage ``configuration``."""
        return PreviousStageDir(self._at("previous_stage", configuration))

    @property
    def models(self) -> Path:
        return self._at("models")

    def fold(self, configuration: str, fold: int | str) -> FoldDir:
        return FoldDir(self._at("models", configuration, fold_name(fold)))

    @property
    def cv(self) -> CvDir:
        return CvDir(self._at("cv"))

    @property
    def selection(self) -> Path:
        return self.cv.selection

    @property
    def model(self) -> ModelFolder:
        return ModelFolder(self._at("model"))

    @property
    def predictions(self) -> PredictionDir:
        return PredictionDir(self._at("predictions"))

    @property
    def qc(self) -> Path:
        return self._at("qc.png")

    @property
    def curves(self) -> Path:
        return self._at("training_curves.png")

    def log(self, job: str) -> Path:
        return self._at("logs", f"{job}.log")

    def benchmark(self, job: str) -> Path:
        return self._at("benchmarks", f"{job}.tsv")


def configurations_path(plans_path: Path) -> Path:
    """Where ``medseg plan -o PLANS`` writes the configurations to preprocess and train."""
    return Path(plans_path).with_name("configurations.json")


@dataclass(frozen=True)
class PreprocessedDir:
    """``preprocessed/<config>/``: the compressed store (see :mod:`medseg.io.preprocessed`)."""

    root: Path

    SEG_SUFFIX = "_seg.b2nd"

    @property
    def summary(self) -> Path:
        return Path(self.root) / PREPROCESS_SUMMARY

    @property
    def plans_json(self) -> Path:
        return Path(self.root) / "plans.json"

    def image(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.b2nd"

    def seg(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}{self.SEG_SUFFIX}"

    def locations(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}_fg.npz"

    def record(self, case_id: str) -> Path:
        """The case's preprocessing record, written last: its presence means complete."""
        return Path(self.root) / f"{case_id}.json"


@dataclass(frozen=True)
class PreviousStageDir:
    """``previous_stage/<config>/``: for a cascade stage, the previous stage's
    cross-validation segmentation of every training case on this stage's preprocessed
    grid (``medseg previous-stage``), stored like the preprocessed labels."""

    root: Path

    def seg(self, case_id: str) -> Path:
        return Path(self.root) / f"{case_id}.b2nd"

    @property
    def summary(self) -> Path:
        """Written last: its presence means complete."""
        return Path(self.root) / "previous_stage.json"


@dataclass(frozen=True)
class NnunetResultsDir:
    """An nnU-Net v2 results folder ``Trainer__Plans__Configuration`` (nnU-Net's names)."""

    root: Path

    CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")

    @property
    def plans_json(self) -> Path:
        return Path(self.root) / "plans.json"

    @property
    def dataset_json(self) -> Path:
        return Path(self.root) / "dataset.json"

    @property
    def configuration(self) -> str:
        return Path(self.root).name.split("__")[-1]

    def fold(self, fold: int | str) -> Path:
        return Path(self.root) / fold_name(fold)

    def folds(self) -> list[str]:
        """The fold names present (``0``, ``1``, ``all`` ...), sorted."""
        found = (p.name.split("_", 1)[1] for p in Path(self.root).glob("fold_*") if p.is_dir())
        return sorted(found)
