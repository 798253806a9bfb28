"""nnU-Net's Residual Encoder presets: medseg's plans equal nnunetv2's planner classes.

nnunetv2's ``nnUNetPlannerResEncM/L/XL`` run in a subprocess on the same fingerprints
medseg plans from (the fingerprint is written in nnU-Net's layout, as in
``test_parity_nnunet.test_planner_matches_nnunet_on_synthetic_fingerprints``; that
medseg's fingerprints equal nnU-Net's is checked there). Every configuration nnU-Net
plans must come out identical: architecture (class and every kwarg, including
``n_blocks_per_stage`` and ``n_conv_per_stage_decoder``), patch and batch size, spacing,
normalization, resampling, data identifier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_medseg
from test_parity_nnunet import SYNTHETIC, _fingerprint, _nnunet_inputs

from medseg.core.errors import PlanError
from medseg.dataset import load_dataset
from medseg.fingerprint.extract import extract_fingerprint
from medseg.planning.planner import PlannerSettings, plan_experiment
from medseg.planning.presets import PRESETS, RESIDUAL_UNET

# (medseg preset, GPU memory target or None for the preset's, plans name or None)
RUNS = [
    ("resenc-m", None, None),
    ("resenc-l", None, None),
    ("resenc-xl", None, None),
    ("resenc-l", 40.0, "nnUNetResEncUNetLPlans_40G"),
    ("resenc-m", 4.0, "nnUNetResEncUNetMPlans_4G"),
]

_DRIVER = """
import json, sys, warnings
warnings.simplefilter("ignore")
from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
    residual_encoder_unet_planners as m,
)
for dataset_id, planner, gpu, plans_name in json.loads(sys.argv[1]):
    kwargs = {"plans_name": plans_name} if plans_name else {}
    cls = getattr(m, planner)
    (cls(dataset_id, gpu, **kwargs) if gpu else cls(dataset_id, **kwargs)).plan_experiment()
"""


def _settings(preset: str, gpu: float | None, plans_name: str | None) -> PlannerSettings:
    return PlannerSettings(preset=preset, gpu_memory_gb=gpu, plans_name=plans_name)


def _plans_name(preset: str, plans_name: str | None) -> str:
    return plans_name or PRESETS[preset].plans_name


@pytest.fixture(scope="module")
def fingerprints(hippocampus, demo_dataset):
    return {
        611: extract_fingerprint(load_dataset(hippocampus), processes=2),
        612: extract_fingerprint(load_dataset(demo_dataset), processes=2),
        613: _fingerprint("large_ct_lowres", SYNTHETIC["large_ct_lowres"]),
    }


@pytest.fixture(scope="module")
def nnunet_plans(fingerprints, tmp_path_factory):
    """(dataset id, preset, gpu, plans name) -> the plans nnunetv2 wrote."""
    from nnunet_oracle import _nnunet_env

    work = tmp_path_factory.mktemp("resenc").resolve()
    jobs = []
    for dataset_id, fp in fingerprints.items():
        _nnunet_inputs(work, dataset_id, fp)
        for preset, gpu, name in RUNS:
            jobs.append([dataset_id, PRESETS[preset].nnunet_planner, gpu, name])
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(jobs)],
        env=_nnunet_env(work),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plans = {}
    for dataset_id, fp in fingerprints.items():
        folder = work / "nnUNet_preprocessed" / f"Dataset{dataset_id:03d}_{fp.dataset_name}"
        for preset, gpu, name in RUNS:
            path = folder / f"{_plans_name(preset, name)}.json"
            plans[dataset_id, preset, gpu, name] = json.loads(path.read_text())
    return plans


def _normal(value):
    return json.loads(json.dumps(value))


def assert_same_configurations(ours: dict, theirs: dict) -> None:
    assert ours["plans_name"] == theirs["plans_name"]
    assert ours["transpose_forward"] == theirs["transpose_forward"]
    assert set(ours["configurations"]) == set(theirs["configurations"])
    for name, t in theirs["configurations"].items():
        o = _normal(ours["configurations"][name])
        t = _normal(t)
        if "inherits_from" in t:
            assert o == t, name
            continue
        where = f"{name}: ours {o['patch_size']} x{o['batch_size']}, "
        where += f"nnU-Net {t['patch_size']} x{t['batch_size']}"
        for key in ("spacing", "median_image_size_in_voxels"):
            assert np.allclose(o.pop(key), t.pop(key), rtol=1e-9), (where, key)
        # 2d and 3d_fullres reuse the default plans' data (nnU-Net: nnUNetPlans_<config>)
        o["data_identifier"] = o["data_identifier"].replace("medsegPlans_", "nnUNetPlans_")
        assert o == t, where


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r[0]}-{r[1] or 'default'}GB")
@pytest.mark.parametrize("dataset_id", [611, 612, 613], ids=["hippocampus", "demo", "large_ct"])
def test_resenc_plans_equal_nnunet(fingerprints, nnunet_plans, dataset_id, run):
    ours = plan_experiment(fingerprints[dataset_id], _settings(*run))
    theirs = nnunet_plans[(dataset_id, *run)]
    assert_same_configurations(ours, theirs)
    full = ours["configurations"]["3d_fullres"]["architecture"]
    assert full["network_class_name"] == RESIDUAL_UNET
    assert {"2d", "3d_fullres"} <= set(ours["configurations"])


def test_residual_feature_map_voxels_equal_the_network_library():
    """The torch-free memory proxy of a ResidualEncoderUNet (stem, residual blocks,
    projections) equals dynamic_network_architectures' count."""
    from medseg.nets.unet import build_network
    from medseg.planning.memory import feature_map_voxels
    from medseg.planning.planner import _architecture
    from medseg.planning.topology import pool_and_conv_props

    rng = np.random.default_rng(2)
    for _ in range(60):
        dim = int(rng.choice([2, 3]))
        topo = pool_and_conv_props(
            list(rng.choice([0.5, 1.0, 2.5, 5.0], dim)), list(rng.integers(8, 200, dim))
        )
        settings = PlannerSettings(preset="resenc-m", base_features=int(rng.choice([8, 32])))
        arch = _architecture(topo, settings)
        kw = arch["arch_kwargs"]
        n_classes, deep = int(rng.integers(2, 6)), bool(rng.integers(0, 2))
        net = build_network(arch, 1, n_classes, deep_supervision=deep, device="meta")
        expected = int(net.compute_conv_feature_map_size(list(topo.patch_size)))
        ours = feature_map_voxels(
            topo.patch_size,
            kw["strides"],
            kw["features_per_stage"],
            kw["n_blocks_per_stage"],
            kw["n_conv_per_stage_decoder"],
            n_classes,
            deep,
            residual_encoder=True,
        )
        assert ours == expected, (topo, kw["features_per_stage"])


def test_large_ct_covers_the_cascade_and_larger_presets_plan_larger_patches(nnunet_plans):
    """The comparisons above include a 3d_lowres / cascade (M on the large CT; XL's patch
    covers enough of the image to need none)."""
    assert "3d_cascade_fullres" in nnunet_plans[(613, "resenc-m", None, None)]["configurations"]
    patches = [
        np.prod(nnunet_plans[(613, p, None, None)]["configurations"]["3d_fullres"]["patch_size"])
        for p in ("resenc-m", "resenc-l", "resenc-xl")
    ]
    assert patches[0] < patches[1] < patches[2]


def test_gpu_memory_scales_the_preset_reference(fingerprints):
    """--gpu-memory 40 with resenc-l: the reference scales to 40/24 of L's (nnU-Net's
    -gpu_memory_target); the default 24 GB equals leaving it unset."""
    fp = fingerprints[613]
    default = plan_experiment(fp, PlannerSettings(preset="resenc-l"))
    explicit = plan_experiment(fp, PlannerSettings(preset="resenc-l", gpu_memory_gb=24))
    assert default["configurations"] == explicit["configurations"]
    assert default["planner_settings"]["gpu_memory_gb"] == 24.0
    big = plan_experiment(fp, PlannerSettings(preset="resenc-l", gpu_memory_gb=40))
    patch = [np.prod(p["configurations"]["3d_fullres"]["patch_size"]) for p in (default, big)]
    assert patch[1] > patch[0]


def test_default_preset_unchanged_and_unknown_preset_refused(fingerprints):
    plans = plan_experiment(fingerprints[611])
    assert plans["plans_name"] == "medsegPlans"
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith("PlainConvUNet")
    assert arch["arch_kwargs"]["n_conv_per_stage"] == [2] * arch["arch_kwargs"]["n_stages"]
    with pytest.raises(PlanError, match="unknown planner preset 'resenc-s'"):
        plan_experiment(fingerprints[611], PlannerSettings(preset="resenc-s"))


def test_cli_preset(fingerprints, tmp_path):
    fp_path = tmp_path / "fingerprint.json"
    fp_path.write_text(json.dumps(fingerprints[612].to_dict()))
    done = run_medseg("plan", fp_path, "-o", tmp_path / "plans.json", "--preset", "resenc-xl")
    assert done.returncode == 0, done.stderr
    plans = json.loads((tmp_path / "plans.json").read_text())
    assert plans["plans_name"] == "nnUNetResEncUNetXLPlans"
    assert plans["planner_settings"]["gpu_memory_gb"] == 40.0
    assert plans == plan_experiment(fingerprints[612], PlannerSettings(preset="resenc-xl"))
    helped = run_medseg("plan", "--help")
    for words in ("nnUNetPlannerResEncM", "nnUNetPlannerResEncL", "nnUNetPlannerResEncXL"):
        assert words in helped.stdout


def test_workflow_passes_the_preset_to_medseg_plan():
    """config planner.preset (schema enum = medseg's presets) -> the plan rule's
    arguments; gpu_memory_gb left unset keeps the preset's own target."""
    import yaml
    from snakemake.utils import validate

    schema = ROOT / "pipelines" / "schemas" / "config.schema.yaml"
    planner = yaml.safe_load(schema.read_text())["properties"]["planner"]["properties"]
    assert planner["preset"]["enum"] == list(PRESETS)
    config = yaml.safe_load((ROOT / "pipelines" / "config" / "demo.yaml").read_text())
    config["planner"] = {"preset": "resenc-l"}
    validate(config, str(schema), set_default=True)
    scope = {"config": config}
    exec((ROOT / "pipelines" / "rules" / "common.smk").read_text(), scope)
    args = scope["planner_args"]().split()
    assert args[:2] == ["--preset", "resenc-l"] and "--gpu-memory" not in args


# --- training and nnU-Net model folders with a ResEnc preset ------------------------------

TINY_RESENC = PlannerSettings(
    preset="resenc-m",
    gpu_memory_gb=0.5,
    base_features=4,
    configurations=("3d_fullres",),
    patch_size={"3d_fullres": (8, 32, 32)},
)


def _nnunet_network(architecture: dict, n_in: int, n_classes: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        n_in,
        n_classes,
        deep_supervision=True,  # as nnU-Net's trainer builds it
    )


def _write_nnunet_folder(folder: Path, plans: dict, network) -> None:
    """A results folder as nnU-Net v2 writes it: plans, dataset.json, fold_0's .pth."""
    import torch

    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    dataset = {
        "labels": {n: v for v, n in plans["labels"]},
        "channel_names": {str(i): c for i, c in enumerate(plans["channel_names"])},
        "file_ending": ".nii.gz",
        "numTraining": 6,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset))
    checkpoint = {
        "network_weights": network.state_dict(),
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


@pytest.mark.slow
def test_resenc_model_trains_and_is_interchangeable_with_nnunet(demo_dataset, tmp_path):
    """medseg train builds the ResidualEncoderUNet of the plans; its weights have
    nnU-Net's names and shapes, load into nnU-Net's network, and an nnU-Net results
    folder with them predicts through 'medseg predict'."""
    import torch

    from medseg.inference.nnunet_model import load_nnunet_model
    from medseg.nets.checkpoint import load_checkpoint, load_weights, model_weights
    from medseg.nets.unet import build_network
    from medseg.planning.splits import make_splits
    from medseg.prepare.preprocess import preprocess_dataset

    spec = load_dataset(demo_dataset)
    plans = plan_experiment(extract_fingerprint(spec), TINY_RESENC)
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"] == RESIDUAL_UNET
    preprocess_dataset(spec, plans, "3d_fullres", tmp_path / "pre", processes=1)
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    args = ["--config", "3d_fullres", "--fold", "0", "-o", tmp_path / "m", "--device", "cpu"]
    args += ["--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--workers", "0"]
    done = run_medseg(
        "train",
        tmp_path / "pre",
        tmp_path / "plans.json",
        tmp_path / "splits.json",
        *args,
        "--no-validation",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = model_weights(load_checkpoint(tmp_path / "m" / "checkpoint_final.safetensors")[0])

    n_classes = len(plans["labels"])
    ours = build_network(config["architecture"], 1, n_classes, deep_supervision=True)
    theirs = _nnunet_network(config["architecture"], 1, n_classes)
    assert type(ours) is type(theirs) and type(ours).__name__ == "ResidualEncoderUNet"
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    assert {k: tuple(v.shape) for k, v in weights.items()}.items() <= shapes.items()
    load_weights(theirs, weights)  # every tensor, or an error
    load_weights(ours, weights)
    theirs.eval(), ours.eval()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x)[0], theirs(x)[0])

    folder = tmp_path / "nnUNet_results" / "Dataset612_Demo"
    folder = folder / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    _write_nnunet_folder(folder, plans, theirs)
    bundle = load_nnunet_model(folder)
    network = bundle.members[0].networks[0]
    assert type(network).__name__ == "ResidualEncoderUNet"
    with torch.no_grad():
        assert torch.equal(network(x), theirs(x)[0])
    scan = sorted((demo_dataset / "imagesTs").iterdir())[0]
    out = tmp_path / "pred"
    done = run_medseg("predict", "-m", folder, "-i", scan, "-o", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "ok", records
