"""The cascade end to end through the workflow: 3d_lowres -> previous stage ->
3d_cascade_fullres, selection among all four configurations, a model that predicts
NIfTI and DICOM (CI runs it at a tiny budget)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import ROOT, run_medseg
from dicom_tools import dciodvfy_errors, require_dciodvfy, write_ct_series
from test_workflow import TINY, snakemake

from medseg.core.layout import Results
from medseg.evaluation.select import member_records
from medseg.inference.bundle import export_model
from medseg.io import read_dicom_series
from medseg.io.dicom_seg_read import read_dicom_seg
from medseg.io.volumes import read_volume

pytestmark = pytest.mark.slow
ALL = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
CONFIG = yaml.safe_load((ROOT / "pipelines/config/demo_cascade.yaml").read_text())


@pytest.fixture(scope="module")
def cascade_run(cascade_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("wf_cascade")
    data = cascade_module.write_dataset(root / "Cascade", 6, 2, seed=0)
    config = {
        **TINY,
        "configurations": [],
        "planner": CONFIG["planner"],
        "dataset": str(data),
        "output": "out",
        "test": {
            "images": str(data / "imagesTs"),
            "labels": str(data / "labelsTs"),
            "formats": ["nifti"],
            "mirroring": False,
        },
    }
    path = root / "cascade.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(root, "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, Results(root / "out"), result


def test_every_stage_of_the_cascade_runs(cascade_run):
    root, r, result = cascade_run
    assert set(json.loads(r.plans.read_text())["configurations"]) == set(ALL)
    for name in ALL:
        for fold in (0, 1):
            metrics = json.loads(r.fold(name, fold).validation_metrics.read_text())
            assert metrics["n_cases"] == 3, (name, fold)
    previous = json.loads(r.previous_stage("3d_cascade_fullres").summary.read_text())
    assert previous["previous_stage"] == "3d_lowres" and previous["cases"] == 6
    selection = json.loads(r.selection.read_text())
    assert set(ALL) <= set(selection["candidates"])
    assert "3d_cascade_fullres" in {
        m for c in selection["candidates"].values() for m in c["members"]
    }
    manifest = [json.loads(x) for x in r.predictions.manifest.read_text().splitlines()]
    assert [x["status"] for x in manifest] == ["ok", "ok"]
    for job in ("previous_stage_3d_cascade_fullres", "train_3d_cascade_fullres_fold_1"):
        assert r.log(job).exists() and r.benchmark(job).exists()


def test_a_cascade_model_predicts_nifti_and_dicom(cascade_run, tmp_path):
    root, r, _ = cascade_run
    plans = json.loads(r.plans.read_text())
    members, checkpoints = member_records(plans, r.models, ["3d_cascade_fullres"])
    assert members[0]["previous"] == {"configuration": "3d_lowres", "folds": [0, 1]}
    model = export_model(tmp_path / "model", plans, members, checkpoints)
    images = sorted((root / "Cascade" / "imagesTs").iterdir())
    out = tmp_path / "nifti"
    res = run_medseg("predict", "-m", model, "-i", images[0], "-o", out, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    pred, src = nib.load(out / images[0].name), nib.load(images[0])
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    require_dciodvfy()
    series = write_ct_series(read_volume(images[0]), tmp_path / "series")  # the same scan
    out = tmp_path / "dicom"
    res = run_medseg("predict", "-m", model, "-i", series, "-o", out, "--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    seg_path = next(out.glob("*.seg.dcm"))
    assert dciodvfy_errors(seg_path) == []
    volume, info = read_dicom_series(series)
    label = nib.load(next(out.glob("*.nii.gz")))
    assert label.shape == volume.spatial_shape and np.allclose(label.affine, volume.affine)
    assert np.array_equal(read_dicom_seg(seg_path, info), np.asanyarray(label.dataobj))


def test_an_ensemble_with_the_cascade_predicts_the_first_stage_once(
    cascade_run, tmp_path, monkeypatch
):
    from medseg.inference import predict as predict_module
    from medseg.inference.bundle import load_model

    root, r, _ = cascade_run
    plans = json.loads(r.plans.read_text())
    members, checkpoints = member_records(plans, r.models, ["3d_lowres", "3d_cascade_fullres"])
    model = export_model(tmp_path / "model", plans, members, checkpoints)
    calls = []
    original = predict_module.predict_logits
    monkeypatch.setattr(
        predict_module, "predict_logits", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    image = read_volume(sorted((root / "Cascade" / "imagesTs").iterdir())[0])
    options = predict_module.PredictOptions(mirroring=False)
    predict_module.predict_volume(load_model(model), image, options)
    assert len(calls) == 4  # 2 folds of 3d_lowres once, 2 of the cascade: not 6


def test_select_compares_the_candidates_nnunet_enumerates(cascade_run, monkeypatch):
    """nnU-Net's own find_best_configuration, its I/O stubbed, enumerates the candidates
    for the same trained configurations: every configuration and every pair."""
    import nnunetv2.evaluation.find_best_configuration as fbc

    _, r, _ = cascade_run
    trained = {p.parent.parent.name for p in r.models.glob("*/fold_0/checkpoint_final.safetensors")}
    seen = []

    class Stop(Exception):
        pass

    def record(folders, *args, **kwargs):
        seen.append(frozenset(f.split("__")[-1] for f in folders))

    stubs = {
        "filter_available_models": lambda m, d: [x for x in m if x["configuration"] in trained],
        "maybe_convert_to_dataset_name": lambda d: "Dataset999_Cascade",
        "get_output_folder": lambda d, tr, pl, c, fold=None: f"/nowhere/{tr}__{pl}__{c}",
        "accumulate_cv_results": lambda folder, *a, **k: record([folder]),
        "ensemble_crossvalidations": lambda folders, *a, **k: record(folders),
        "load_summary_json": lambda path: {"foreground_mean": {"Dice": 0.5}},
        "load_json": lambda path: {"file_ending": ".nii.gz"},
        "PlansManager": lambda path: SimpleNamespace(
            get_label_manager=lambda d: SimpleNamespace(
                has_regions=False, foreground_labels=[1, 2, 3], ignore_label=None
            ),
            image_reader_writer_class=lambda: None,
        ),
        "compute_metrics_on_folder": lambda *a, **k: None,
        "determine_postprocessing": lambda *a, **k: (_ for _ in ()).throw(Stop()),
        "nnUNet_results": "/nowhere",
        "nnUNet_preprocessed": "/nowhere",
    }
    for name, stub in stubs.items():
        monkeypatch.setattr(fbc, name, stub)
    with pytest.raises(Stop):
        fbc.find_best_configuration(999, folds=(0, 1))
    selection = json.loads(r.selection.read_text())
    ours = [frozenset(c["members"]) for c in selection["candidates"].values()]
    assert len(seen) == 10 and sorted(map(sorted, seen)) == sorted(map(sorted, ours))


def _as_nnunet_folder(r: Results, name: str, out) -> None:
    """A medseg-trained configuration written as nnU-Net v2 writes a results folder."""
    import torch

    from medseg.core.plans import Plans
    from medseg.nets.checkpoint import load_checkpoint, load_weights, model_weights
    from medseg.nets.unet import build_network

    out.mkdir(parents=True)
    plans = json.loads(r.plans.read_text())
    labels = {n: v for v, n in plans["labels"]}
    channels = {str(i): c for i, c in enumerate(plans["channel_names"])}
    (out / "plans.json").write_text(json.dumps(plans))
    dataset = {"labels": labels, "channel_names": channels, "file_ending": ".nii.gz"}
    (out / "dataset.json").write_text(json.dumps({**dataset, "numTraining": 6}))
    typed = Plans.of(plans)
    config = typed.configuration(name)
    n_in = config.input_channels(typed.n_channels, typed.labels)
    for fold in (0, 1):
        tensors, _ = load_checkpoint(r.fold(name, fold).checkpoint())
        network = build_network(config.architecture, n_in, typed.labels.n_classes)
        load_weights(network, model_weights(tensors))  # nnU-Net saves every alias too
        (out / f"fold_{fold}").mkdir()
        checkpoint = {
            "network_weights": network.state_dict(),
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        torch.save(checkpoint, out / f"fold_{fold}" / "checkpoint_final.pth")


def test_an_nnunet_cascade_folder_predicts_as_the_same_medseg_model(cascade_run, tmp_path):
    """nnU-Net keeps a cascade's two stages in sibling results folders; medseg predict
    reads the pair and gives the labels of the medseg model with the same weights."""
    from medseg.inference.bundle import load_model
    from medseg.inference.nnunet_model import load_nnunet_model
    from medseg.inference.predict import PredictOptions, predict_volume

    root, r, _ = cascade_run
    results = tmp_path / "nnUNet_results" / "Dataset999_Cascade"
    for name in ("3d_lowres", "3d_cascade_fullres"):
        _as_nnunet_folder(r, name, results / f"nnUNetTrainer__nnUNetPlans__{name}")
    cascade = results / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    theirs = load_nnunet_model(cascade)
    assert theirs.members[0].previous.configuration == "3d_lowres"
    plans = json.loads(r.plans.read_text())
    members, checkpoints = member_records(plans, r.models, ["3d_cascade_fullres"])
    ours = load_model(export_model(tmp_path / "model", plans, members, checkpoints))
    scan = sorted((root / "Cascade" / "imagesTs").iterdir())[0]
    image = read_volume(scan)
    options = PredictOptions(mirroring=False, blend="float32")
    expected = predict_volume(ours, image, options).array
    assert np.array_equal(predict_volume(theirs, image, options).array, expected)
    shutil.rmtree(results / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    res = run_medseg("predict", "-m", cascade, "-i", scan, "-o", tmp_path / "out")
    assert res.returncode == 2 and "3d_lowres" in res.stderr and "Traceback" not in res.stderr
