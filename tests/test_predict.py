"""medseg predict with medseg models: geometry, ensembles, cascade, batch manifest."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_medseg

from medseg.inference.bundle import ModelError, export_model, load_model
from medseg.inference.predict import PredictOptions, predict_volume
from medseg.io import read_volume
from medseg.io.probabilities import load_probabilities
from medseg.nets.checkpoint import save_checkpoint
from medseg.nets.unet import build_network


@pytest.fixture(scope="module")
def trained(demo_models):
    root, plans, _, checkpoints = demo_models
    return root, plans, checkpoints


def test_predict_files_keeps_input_geometry(trained, demo_dataset, tmp_path):
    root, plans, ckpt = trained
    model = export_model(
        tmp_path / "model", plans, [{"configuration": "3d_fullres", "folds": [0, 1]}], ckpt
    )
    meta = json.loads((model / "model.json").read_text())
    assert meta["schema"] == "medseg.model" and meta["medseg_version"]
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    r = run_medseg(
        "predict",
        "-m",
        model,
        "-i",
        demo_dataset / "imagesTs",
        missing,
        "-o",
        out,
        "--formats",
        "nifti",
        "probabilities",
        "--device",
        "cpu",
    )
    assert r.returncode == 1, r.stderr  # the missing input counts as a failure
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["failed", "ok", "ok"]
    assert lines[0]["error"] == f"{tmp_path / 'missing.nii.gz'}: not found"
    assert set(lines[1]["seconds"]) == {"read", "predict", "write"}
    for case in ("demo_100", "demo_101"):
        source = nib.load(demo_dataset / "imagesTs" / f"{case}.nii.gz")
        label = nib.load(out / f"{case}.nii.gz")
        assert label.shape == source.shape and np.allclose(label.affine, source.affine)
        probs, affine = load_probabilities(out / f"{case}_probabilities.b2nd")
        assert probs.shape == (3, *source.shape) and np.allclose(affine, source.affine)
        labels = np.asanyarray(label.dataobj)
        differ = probs.argmax(0) != labels  # only at ties within float16 storage precision
        top = np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0]
        assert np.all(probs.max(0)[differ] - top[differ] <= 2e-3)
    # resumable: a second run skips both cases and leaves their files alone
    stamp = (out / "demo_100.nii.gz").stat().st_mtime_ns
    r = run_medseg(
        "predict",
        "-m",
        model,
        "-i",
        demo_dataset / "imagesTs",
        "-o",
        out,
        "--formats",
        "nifti",
        "probabilities",
        "--skip-existing",
        "--device",
        "cpu",
    )
    assert r.returncode == 0 and "2 skipped" in r.stdout
    assert (out / "demo_100.nii.gz").stat().st_mtime_ns == stamp


def test_folds_and_configuration_ensemble(trained, demo_dataset, tmp_path):
    root, plans, ckpt = trained
    image = read_volume(demo_dataset / "imagesTs" / "demo_100.nii.gz")
    single = export_model(
        root / "m_single", plans, [{"configuration": "3d_fullres", "folds": [0, 1]}], ckpt
    )
    ensemble = export_model(
        root / "m_ens",
        plans,
        [{"configuration": "3d_fullres", "folds": [0, 1]}, {"configuration": "2d", "folds": [0]}],
        ckpt,
    )
    only_2d = export_model(root / "m_2d", plans, [{"configuration": "2d", "folds": [0]}], ckpt)
    options = PredictOptions(mirroring=False)
    p_fold0, _ = predicted(load_model(single, folds=[0]), image, options, tmp_path / "f0")
    p_both, _ = predicted(load_model(single), image, options, tmp_path / "both")
    p_2d, _ = predicted(load_model(only_2d), image, options, tmp_path / "2d")
    assert not np.allclose(p_fold0, p_both)
    assert not np.allclose(p_2d, p_both)
    assert np.allclose(p_both.sum(0), 1, atol=2e-3)  # float16 on disk
    ens_bundle = load_model(ensemble)
    assert [m.configuration for m in ens_bundle.members] == ["3d_fullres", "2d"]
    p_ens, label = predicted(ens_bundle, image, options, tmp_path / "ens")
    # the ensemble is the mean of its members' probabilities (float16 on disk)
    assert np.allclose(p_ens, (p_both + p_2d) / 2, atol=2e-3)
    assert label.array.shape == image.spatial_shape
    with pytest.raises(ModelError, match="none of the folds"):
        load_model(single, folds=[7])


def predicted(bundle, image, options, where):
    """Probabilities (read back from the ``.b2nd`` file predict writes) and the label."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "probabilities.b2nd"
    label = predict_volume(bundle, image, options, probabilities=path)
    probs, affine = load_probabilities(path)
    assert np.array_equal(affine, image.affine)
    return probs, label


def test_cascade_feeds_the_previous_stage(trained, demo_dataset, tmp_path):
    """Mechanics of a cascade: the full-resolution stage gets the low-resolution
    stage's segmentation, one-hot, as extra input channels."""
    root, plans, ckpt = trained
    plans = json.loads(json.dumps(plans))
    full = plans["configurations"]["3d_fullres"]
    low = {
        **full,
        "spacing": [s * 1.5 for s in full["spacing"]],
        "data_identifier": "x_3d_lowres",
        "next_stage": "3d_cascade_fullres",
    }
    plans["configurations"]["3d_lowres"] = low
    plans["configurations"]["3d_cascade_fullres"] = {
        "inherits_from": "3d_fullres",
        "previous_stage": "3d_lowres",
    }
    n_classes = len(plans["labels"])
    cascade_net = build_network(full["architecture"], 1 + n_classes - 1, n_classes)
    save_checkpoint(tmp_path / "cascade.safetensors", cascade_net, {"configuration": full})
    checkpoints = {
        "3d_lowres": {0: ckpt["3d_fullres"][0]},
        "3d_cascade_fullres": {0: tmp_path / "cascade.safetensors"},
    }
    model = export_model(
        tmp_path / "cascade",
        plans,
        [
            {
                "configuration": "3d_cascade_fullres",
                "folds": [0],
                "previous": {"configuration": "3d_lowres", "folds": [0]},
            }
        ],
        checkpoints,
    )
    bundle = load_model(model)
    member = bundle.members[0]
    assert member.previous.configuration == "3d_lowres"
    first_conv = next(m for m in member.networks[0].modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == n_classes  # image + (n_classes - 1) one-hot channels
    image = read_volume(demo_dataset / "imagesTs" / "demo_101.nii.gz")
    probs, label = predicted(bundle, image, PredictOptions(mirroring=False), tmp_path / "p")
    assert probs.shape == (n_classes, *image.spatial_shape)
    assert np.array_equal(label.affine, image.affine)


def test_model_folder_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model.json"):
        load_model(tmp_path / "empty")
