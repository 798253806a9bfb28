"""The cascade stage trained by medseg: previous-stage export, training, validation, predict."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_medseg

from medseg.core.errors import RecordError, TrainingError
from medseg.core.layout import FoldDir, PreviousStageDir
from medseg.core.plans import Plans
from medseg.dataset import load_dataset
from medseg.fingerprint.extract import extract_fingerprint
from medseg.io.preprocessed import case_ids, open_case_arrays, open_previous, read_case_record
from medseg.io.volumes import read_volume
from medseg.planning.planner import PlannerSettings, plan_experiment
from medseg.planning.splits import make_splits
from medseg.prepare.preprocess import preprocess_dataset
from medseg.preprocessing.pipeline import label_to_preprocessed
from medseg.training.data import CaseStore, sample_batch
from medseg.training.loader import BatchSpec, EpochBatches
from medseg.training.loop import TrainSettings, train
from medseg.validation.fold import ValidationSettings, validate_fold

TINY = PlannerSettings(
    gpu_memory_gb=0.5,
    base_features=4,
    configurations=("3d_fullres",),
    patch_size={"3d_fullres": (8, 32, 32)},
)
QUICK = dict(device="cpu", epochs=1, iterations=2, val_iterations=1, workers=0)


def cascade_plans(plans: dict) -> dict:
    """Tiny plans with a 3d_lowres stage (half the resolution) and its cascade stage."""
    plans = copy.deepcopy(plans)
    configs = plans["configurations"]
    low = copy.deepcopy(configs["3d_fullres"])
    low["spacing"] = [s * 2 for s in low["spacing"]]
    low["patch_size"] = [8, 16, 16]
    low["next_stage"] = "3d_cascade_fullres"
    configs["3d_lowres"] = low
    configs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return plans


@pytest.fixture(scope="module")
def lowres(tmp_path_factory, demo_dataset):
    """Both stages preprocessed, 3d_lowres trained (barely) and validated on 2 folds."""
    root = tmp_path_factory.mktemp("cascade")
    spec = load_dataset(demo_dataset)
    plans = cascade_plans(plan_experiment(extract_fingerprint(spec), TINY))
    for name in ("3d_fullres", "3d_lowres"):
        preprocess_dataset(spec, plans, name, root / "pre" / name, processes=1)
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "splits.json").write_text(json.dumps(splits))
    for fold in (0, 1):
        out = root / "models" / "3d_lowres" / f"fold_{fold}"
        train(
            plans,
            splits,
            root / "pre" / "3d_lowres",
            out,
            TrainSettings("3d_lowres", fold, **QUICK),
        )
        settings = ValidationSettings(fold, device="cpu", mirroring=False)
        validate_fold(
            out, plans, splits, root / "pre" / "3d_lowres", settings, dataset=demo_dataset
        )
    return root, plans, splits


@pytest.fixture(scope="module")
def exported(lowres):
    """``medseg previous-stage`` run once: the 3d_lowres CV segmentations on the full grid."""
    root, _, _ = lowres
    r = run_medseg(
        "previous-stage",
        root / "models" / "3d_lowres",
        root / "pre" / "3d_fullres",
        root / "plans.json",
        root / "splits.json",
        "--config",
        "3d_cascade_fullres",
        "-o",
        root / "previous",
    )
    assert r.returncode == 0, r.stderr
    return r


def test_previous_stage_is_each_cases_cv_prediction_on_the_full_grid(lowres, exported):
    root, plans, splits = lowres
    pre, out = root / "pre" / "3d_fullres", root / "previous"
    summary = json.loads(PreviousStageDir(out).summary.read_text())
    assert summary["cases"] == len(case_ids(pre)) and summary["folds"] == [0, 1]
    for fold in (0, 1):
        for case in splits["folds"][fold]["val"]:
            stored = np.asarray(open_previous(out, case)[:])
            _, seg = open_case_arrays(pre, case)
            assert stored.shape == tuple(seg.shape)
            cv = read_volume(
                FoldDir(root / "models/3d_lowres" / f"fold_{fold}").validation_label(case), "label"
            )
            expected = label_to_preprocessed(
                cv, read_case_record(pre, case), Plans.of(plans).reorients
            )
            assert np.array_equal(stored, expected)
    # not a cascade stage, or the previous stage not validated: clear errors
    r = run_medseg(
        "previous-stage",
        root / "models" / "3d_fullres",
        pre,
        root / "plans.json",
        root / "splits.json",
        "--config",
        "3d_cascade_fullres",
        "-o",
        root / "elsewhere",
    )
    assert r.returncode == 2 and "validate fold" in r.stderr and "Traceback" not in r.stderr


def test_label_to_preprocessed_matches_preprocessing_of_the_label(lowres, demo_dataset):
    root, plans, _ = lowres
    spec = load_dataset(demo_dataset)
    case = spec.training[0]
    record = read_case_record(root / "pre" / "3d_fullres", case.case_id)
    _, seg = open_case_arrays(root / "pre" / "3d_fullres", case.case_id)
    mapped = label_to_preprocessed(read_volume(case.label, "label"), record, True)
    stored = np.asarray(seg[:])
    inside = stored >= 0  # preprocessing marks the outside of the body -1
    assert np.array_equal(mapped[inside], stored[inside])


def test_cascade_batches_carry_the_previous_stage_one_hot(lowres, exported):
    root, plans, splits = lowres
    previous = root / "previous"
    store = CaseStore(root / "pre" / "3d_fullres", previous)
    ids = splits["folds"][0]["train"]
    image, label = sample_batch(store, ids, (8, 32, 32), 3, np.random.default_rng(0))
    assert image.shape == (3, 1, 8, 32, 32) and label.shape == (3, 2, 8, 32, 32)
    spec = BatchSpec(
        root / "pre" / "3d_fullres",
        tuple(ids),
        (8, 32, 32),
        3,
        0,
        None,
        True,
        previous=previous,
        foreground=(1, 2),
    )
    image2, label2 = EpochBatches(spec)[(0, 0)]
    assert image2.shape == (3, 3, 8, 32, 32) and label2.shape == (3, 1, 8, 32, 32)
    raw = sample_batch(
        store, ids, (8, 32, 32), 3, np.random.default_rng(np.random.SeedSequence([0, 0, 0, 0]))
    )
    for k, value in enumerate((1, 2)):
        assert torch.equal(image2[:, 1 + k], torch.from_numpy(raw[1][:, 1] == value).float())


def test_cascade_stage_trains_and_validates_on_cv_segmentations(
    lowres, exported, demo_dataset, tmp_path
):
    root, plans, splits = lowres
    pre, previous = root / "pre" / "3d_fullres", root / "previous"
    settings = TrainSettings("3d_cascade_fullres", 0, **QUICK)
    with pytest.raises(TrainingError, match="--previous"):
        train(plans, splits, pre, tmp_path / "nope", settings)
    partial = tmp_path / "partial"
    shutil.copytree(previous, partial)
    gone = splits["folds"][0]["val"][0]
    PreviousStageDir(partial).seg(gone).unlink()
    with pytest.raises(RecordError, match=f"1 case.*{gone}"):  # before any epoch
        train(plans, splits, pre, tmp_path / "nope", settings, previous=partial)
    assert not (tmp_path / "nope").exists()
    out = tmp_path / "fold_0"
    r = run_medseg(
        "train",
        pre,
        root / "plans.json",
        root / "splits.json",
        "--config",
        "3d_cascade_fullres",
        "--fold",
        "0",
        "-o",
        out,
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--val-iterations",
        "1",
        "--workers",
        "0",
        "--previous",
        previous,
        "--dataset",
        demo_dataset,
        "--no-mirroring",
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads(FoldDir(out).validation_metrics.read_text())
    assert metrics["n_cases"] == len(splits["folds"][0]["val"])
    r = run_medseg(
        "validate",
        pre,
        root / "plans.json",
        root / "splits.json",
        "--fold",
        "0",
        "-o",
        out,
        "--device",
        "cpu",
        "--no-mirroring",
    )
    assert r.returncode == 2 and "--previous" in r.stderr


class _StoreAsNnunetDataset:
    """nnU-Net's dataset interface over medseg's store, so nnU-Net's own data loader and
    validation transforms read the very same arrays."""

    def __init__(self, folder, previous, ids):
        self.folder, self.previous, self.identifiers = folder, previous, list(ids)

    def load_case(self, case_id):
        data, seg = open_case_arrays(self.folder, case_id)
        prev = np.asarray(open_previous(self.previous, case_id)[:])
        return np.asarray(data[:]), np.asarray(seg[:])[None], prev, {"class_locations": {}}


def test_cascade_input_equals_nnunets_data_loader(lowres, exported):
    """Same windows, augmentation off: medseg's cascade input channels (image + previous
    stage one-hot) equal those of nnU-Net's nnUNetDataLoader + validation transforms."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from medseg.training.data import _read
    from medseg.training.loader import with_previous

    root, plans, splits = lowres
    pre, previous = root / "pre" / "3d_fullres", root / "previous"
    ids = splits["folds"][0]["train"][:3]
    patch = (8, 32, 32)
    labels = LabelManager({"background": 0, "organ": 1, "lesion": 2}, None)
    transforms = nnUNetTrainer.get_validation_transforms(
        None, is_cascaded=True, foreground_labels=labels.foreground_labels
    )
    loader = nnUNetDataLoader(
        _StoreAsNnunetDataset(pre, previous, ids), 3, patch, patch, labels, transforms=transforms
    )
    windows = iter([[-2, 5, 9], [0, 0, 0], [3, -4, 20]])  # some pad past the case

    def bbox(shape, force_fg, locations):
        lbs = next(windows)
        return lbs, [lo + p for lo, p in zip(lbs, patch, strict=False)]

    loader.get_bbox, loader.get_indices = bbox, lambda: ids
    theirs = loader.generate_train_batch()["data"]
    store = CaseStore(pre, previous)
    images, label_pairs = [], []
    for case, starts in zip(ids, ([-2, 5, 9], [0, 0, 0], [3, -4, 20]), strict=False):
        data, seg, *_, prev = store.case(case)
        images.append(_read(data, starts, patch, 0, lead=1))
        label_pairs.append(
            np.stack([_read(seg, starts, patch, -1, 0), _read(prev, starts, patch, 0, 0)])
        )
    spec = BatchSpec(pre, tuple(ids), patch, 3, 0, None, True, previous=previous, foreground=(1, 2))
    image = torch.from_numpy(np.stack(images))
    label = torch.from_numpy(np.stack(label_pairs).astype(np.int16)).clamp_(min=0)
    ours, _ = with_previous(image, label, spec, 0, 0)
    assert ours.shape == theirs.shape == (3, 3, *patch)
    assert torch.equal(ours, theirs)
    assert ours[:, 1:].sum() > 0  # the previous stage did segment something here
