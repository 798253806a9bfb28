"""The ignore label (partial annotations): labels, loss vs nnU-Net, sampling, pseudo-Dice,
evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.core.errors import RecordError
from medseg.core.plans import LabelSet
from medseg.training.distributed_loss import dice_ce
from medseg.training.ignore import hard_counts, split_target

IGNORE = 3
LABELS = [[0, "background"], [1, "a"], [2, "b"], [3, "ignore"]]


def test_labelset_keeps_ignore_apart():
    labels = LabelSet.of(LABELS)
    assert labels.ignore == IGNORE
    assert labels.n_classes == 3
    assert labels.foreground == (1, 2)
    assert labels.names == {0: "background", 1: "a", 2: "b"}
    assert labels.all_names[IGNORE] == "ignore"
    assert labels.to_list() == LABELS
    assert LabelSet.of(labels.to_list()) == labels
    plain = LabelSet.of(LABELS[:3])
    assert plain.ignore is None and plain.n_classes == 3 and plain.to_list() == LABELS[:3]


def test_ignore_must_be_highest():
    with pytest.raises(RecordError, match="highest value"):
        LabelSet.of([[0, "background"], [1, "ignore"], [2, "b"]], "dataset.json")


def test_dataset_json_ignore_must_be_highest(tmp_path):
    from medseg.dataset.layout import _labels

    with pytest.raises(Exception, match="dataset.json.*highest value"):
        _labels({"background": 0, "ignore": 1, "a": 2}, True, "dataset.json")
    assert _labels({"background": 0, "a": 1, "ignore": 2}, True, "dataset.json")[-1] == (
        2,
        "ignore",
    )


def _batch(seed: int, shape=(2, 3, 8, 12, 10), ignore_fraction=0.4):
    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    logits = torch.randn(shape, generator=g)
    target = torch.randint(0, c, (b, 1, *spatial), generator=g)
    ignored = torch.rand((b, 1, *spatial), generator=g) < ignore_fraction
    return logits, torch.where(ignored, torch.full_like(target, IGNORE), target)


def _scales(logits: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [F.avg_pool3d(logits, 2**i) if i else logits for i in range(n)]


@pytest.mark.parametrize("batch_dice", [True, False])
def test_loss_equals_nnunet_with_deep_supervision(batch_dice):
    from monai.losses import DeepSupervisionLoss
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from medseg.training.distributed_loss import GlobalDiceCE

    logits, target = _batch(0)
    outputs = [o.clone().requires_grad_(True) for o in _scales(logits, 3)]
    weights = [4 / 7, 2 / 7, 1 / 7]
    ours = DeepSupervisionLoss(GlobalDiceCE(batch_dice, lambda t: t, IGNORE), weights=weights)(
        outputs, target.float()
    )
    ours.backward()
    # nnU-Net's trainer: targets downsampled by nearest-exact in the data pipeline
    targets = [F.interpolate(target.float(), o.shape[2:], mode="nearest-exact") for o in outputs]
    reference = DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=IGNORE,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    twins = [o.detach().clone().requires_grad_(True) for o in outputs]
    theirs = DeepSupervisionWrapper(reference, weights)(twins, targets)
    theirs.backward()
    # MONAI's Dice term is 1 - Dice, nnU-Net's -Dice: a constant sum(weights) = 1 apart
    assert float(ours.detach()) - 1 == pytest.approx(float(theirs.detach()), abs=1e-5)
    for a, b in zip(outputs, twins, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_ignored_voxels_do_not_change_the_loss():
    logits, target = _batch(1)
    base = dice_ce(logits, target.float(), True, lambda t: t, ignore=IGNORE)
    noisy = logits.clone()
    noisy[(target == IGNORE).expand_as(logits)] += 100 * torch.randn(
        int((target == IGNORE).sum()) * 3
    )
    assert float(dice_ce(noisy, target.float(), True, lambda t: t, ignore=IGNORE)) == pytest.approx(
        float(base), abs=1e-6
    )


def test_all_ignored_patch_has_finite_loss():
    logits, _ = _batch(2)
    target = torch.full((2, 1, 8, 12, 10), IGNORE)
    value = dice_ce(logits, target.float(), False, lambda t: t, ignore=IGNORE)
    assert math.isfinite(float(value))


def test_without_ignore_nothing_changes():
    from monai.losses import DiceCELoss

    logits, target = _batch(3, ignore_fraction=0.0)
    monai = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )(logits, target.float())
    assert float(dice_ce(logits, target.float(), True, lambda t: t)) == pytest.approx(
        float(monai), abs=1e-6
    )


def test_split_target():
    target = torch.tensor([[0, 1, 3, 2]])
    labels, mask = split_target(target, IGNORE)
    assert labels.tolist() == [[0, 1, 0, 2]]
    assert mask[:, 0].tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert split_target(target, None)[1] is None


def test_pseudo_dice_counts_skip_ignored_voxels():
    pred = torch.tensor([[1, 1, 2, 0, 1, 2]])
    target = torch.tensor([[1, 3, 3, 0, 0, 2]])
    tp, fp, fn = hard_counts(pred, target, 3, IGNORE)
    assert tp.tolist() == [1, 1] and fp.tolist() == [1, 0] and fn.tolist() == [0, 0]
    tp, fp, fn = hard_counts(pred, target, 3, None)
    assert fp.tolist() == [2, 1]


def _ignore_cases(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(3):
        ref = rng.integers(0, 3, (10, 9, 8))
        ref[rng.random(ref.shape) < 0.3] = IGNORE
        pred = np.where(rng.random(ref.shape) < 0.6, np.where(ref == IGNORE, 1, ref), 2)
        cases[f"case_{i}"] = (pred.astype(np.uint8), ref.astype(np.uint8))
    return cases


def test_case_metrics_leave_out_ignored_reference_voxels():
    from medseg.evaluation.metrics import case_metrics, dice_per_label

    pred = np.array([[[1, 1, 2, 0, 1, 2]]])
    ref = np.array([[[1, 3, 3, 0, 0, 2]]])
    m = case_metrics(pred, ref, [1, 2], (1.0, 1.0, 1.0), ignore=IGNORE)
    assert (m[1]["tp"], m[1]["fp"], m[1]["fn"]) == (1, 1, 0)
    assert (m[2]["tp"], m[2]["fp"], m[2]["fn"]) == (1, 0, 0)
    assert dice_per_label(pred, ref, [1, 2], IGNORE) == {1: m[1]["dice"], 2: m[2]["dice"]}
    assert case_metrics(pred, ref, [1], (1.0, 1.0, 1.0))[1]["fp"] == 2


def test_evaluate_folder_with_ignore_equals_nnunet(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from medseg.core.volume import Volume
    from medseg.evaluation.metrics import evaluate_folder
    from medseg.io.volumes import write_volume

    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for name, (pred, ref) in _ignore_cases().items():
        write_volume(Volume.label(pred, np.eye(4)), pred_dir / f"{name}.nii.gz")
        write_volume(Volume.label(ref, np.eye(4)), ref_dir / f"{name}.nii.gz")
    labels = {v: n for v, n in LABELS}
    ours = evaluate_folder(pred_dir, ref_dir, labels)
    theirs = compute_metrics_on_folder(
        str(ref_dir), str(pred_dir), None, SimpleITKIO(), ".nii.gz", [1, 2], IGNORE, 1
    )
    assert set(ours["mean"]) == {"1", "2"} and ours["ignore_label"] == IGNORE
    for case, ref in zip(ours["cases"], theirs["metric_per_case"], strict=True):
        for label in (1, 2):
            mine, want = case["metrics"][str(label)], ref["metrics"][label]
            assert (mine["tp"], mine["fp"], mine["fn"]) == (want["TP"], want["FP"], want["FN"])
            assert mine["dice"] == pytest.approx(want["Dice"], abs=1e-9)


def test_ignore_is_never_a_foreground_location():
    from medseg.preprocessing.locations import sample_class_locations

    labels = LabelSet.of(LABELS)
    seg = np.array([[[0, 1, 3, 3, 2, 3]]])
    locations = sample_class_locations(seg, list(labels.foreground), np.random.default_rng(0))
    assert sorted(locations) == [1, 2]


def _partially_annotated(demo_dataset, root):
    """A copy of the demo dataset with half of each label's voxels set to ``ignore`` (3)."""
    import json
    import shutil

    from medseg.io.volumes import read_volume, write_volume

    copy = root / "Partial"
    shutil.copytree(demo_dataset, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    meta["labels"] = {**meta["labels"], "3": "ignore"}
    (copy / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    for path in sorted((copy / "labelsTr").glob("*.nii.gz")):
        volume = read_volume(path, "label")
        array = np.asarray(volume.array).copy()
        array[rng.random(array.shape) < 0.5] = 3
        write_volume(type(volume).label(array.astype(np.uint8), volume.affine), path)
    return copy


@pytest.mark.slow
def test_tiny_model_learns_from_partial_labels(demo_dataset, tmp_path):
    import json

    from medseg.dataset import load_dataset
    from medseg.fingerprint.extract import extract_fingerprint
    from medseg.planning.planner import PlannerSettings, plan_experiment
    from medseg.planning.splits import make_splits
    from medseg.prepare.preprocess import preprocess_dataset
    from medseg.training.loop import TrainSettings, train

    spec = load_dataset(_partially_annotated(demo_dataset, tmp_path))
    tiny = PlannerSettings(
        gpu_memory_gb=0.5,
        base_features=4,
        configurations=("3d_fullres",),
        patch_size={"3d_fullres": (8, 32, 32)},
    )
    plans = plan_experiment(extract_fingerprint(spec), tiny)
    plans["configurations"]["3d_fullres"]["batch_size"] = 2
    assert LabelSet.of(plans["labels"]).ignore == 3
    preprocess_dataset(spec, plans, "3d_fullres", tmp_path / "pre", processes=1)
    for case in spec.training:  # the stored oversampling locations never hold ignore
        with np.load(tmp_path / "pre" / f"{case.case_id}_fg.npz") as stored:
            assert sorted(k.split("_", 1)[1] for k in stored.files) == ["1", "2"]
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    settings = TrainSettings(
        "3d_fullres",
        0,
        device="cpu",
        epochs=10,
        iterations=12,
        val_iterations=2,
        workers=0,
        initial_lr=0.02,
    )
    train(plans, splits, tmp_path / "pre", tmp_path / "m", settings)
    history = [json.loads(line) for line in (tmp_path / "m" / "training_log.jsonl").open()]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05
    assert len(history[-1]["pseudo_dice"]) == 2  # the network has no ignore output
    # measured: organ pseudo-Dice 0.82 at epoch 9 (0.91 with the full labels), lesion 0 in both
    assert history[-1]["pseudo_dice"][0] > 0.5
