"""The cascade demo generator (datasets/cascade_demo.py) and its workflow config:
deterministic, valid, CT-like, and planned (as nnU-Net v2 plans it) with 3d_lowres and
3d_cascade_fullres beside 2d and 3d_fullres under the config's planner settings."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import yaml
from conftest import ROOT, run_medseg
from test_demo import digest

from medseg.core.records import Fingerprint
from medseg.dataset import check_dataset, load_dataset
from medseg.fingerprint.extract import extract_fingerprint
from medseg.geometry import orientation_code
from medseg.io import read_volume
from medseg.planning.planner import PlannerSettings, plan_experiment

CONFIG = ROOT / "pipelines" / "config" / "demo_cascade.yaml"
SCHEMA = ROOT / "pipelines" / "schemas" / "config.schema.yaml"
CASCADE = {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}

#: nnunetv2's own planner with the config's memory budget and base features.
_NNUNET_PLANNER = """
import json, sys
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as m
dataset_id, gpu_memory_gb, base_features = json.loads(sys.argv[1])
planner = m.ExperimentPlanner(dataset_id, gpu_memory_gb)
planner.UNet_base_num_features = base_features
planner.plan_experiment()
"""


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def cascade_dataset(cascade_module, tmp_path_factory):
    """Two training cases and one test case, seed 0."""
    return cascade_module.write_dataset(tmp_path_factory.mktemp("cascade") / "C", 2, 1, seed=0)


@pytest.fixture(scope="module")
def fingerprint(cascade_dataset) -> Fingerprint:
    return extract_fingerprint(load_dataset(cascade_dataset), processes=2)


def planner_settings(config: dict) -> PlannerSettings:
    """The settings the workflow passes to 'medseg plan' (pipelines/rules/common.smk)."""
    p = config["planner"]
    patches = {k: tuple(v) for k, v in p.get("patch_size", {}).items()}
    return PlannerSettings(
        gpu_memory_gb=p["gpu_memory_gb"], base_features=p["base_features"], patch_size=patches
    )


def test_same_seed_same_bytes_other_seed_other_data(cascade_module, cascade_dataset, tmp_path):
    again = cascade_module.write_dataset(tmp_path / "again", 2, 1, seed=0)
    assert digest(again) == digest(cascade_dataset)
    other = cascade_module.make_case("x", np.random.default_rng([1, 0]))
    first = read_volume(cascade_dataset / "imagesTr" / "cascade_000.nii.gz")
    assert other.image.array.shape != first.array.shape or not np.array_equal(
        other.image.array, first.array
    )


def test_dataset_passes_medseg_check_in_both_layouts(cascade_module, cascade_dataset, tmp_path):
    result = run_medseg("check", cascade_dataset, "--include-test")
    assert result.returncode == 0, result.stdout + result.stderr
    spec = load_dataset(cascade_dataset)
    assert [n for _, n in spec.labels] == ["background", "liver", "spleen", "lesion"]
    assert [c.case_id for c in spec.training] == ["cascade_000", "cascade_001"]
    nnunet = cascade_module.write_dataset(tmp_path / "nn", 1, 1, seed=2, layout="nnunet")
    spec = load_dataset(nnunet)
    assert spec.layout == "nnunetv2" and check_dataset(spec, include_test=True).ok


def test_cases_look_like_abdominal_ct(cascade_dataset):
    for case in load_dataset(cascade_dataset).training:
        image = read_volume(case.images[0])
        label = read_volume(case.label, "label").array
        sx, sy, sz = image.spacing
        assert np.isclose(sx, sy) and 0.65 < sx < 0.95 and 1.9 < sz < 3.1
        assert orientation_code(image.affine) == "PLS"
        assert image.array.dtype == np.int16 and image.array.min() <= -900  # air
        hu = image.array[0]
        assert 70 < np.median(hu[label == 1]) < 130  # liver
        assert 100 < np.median(hu[label == 2]) < 160  # spleen
        assert 0 < np.median(hu[label == 3]) < 70  # hypodense lesion
        liver, spleen, lesion = (int(np.sum(label == v)) for v in (1, 2, 3))
        assert liver > 4 * spleen > 0 and spleen > 2 * lesion > 0  # large, medium, small


def test_config_validates_against_the_workflow_schema(config):
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(config)
    assert config["dataset"] == "demo_data/MedsegCascadeDemo"
    assert config["configurations"] == []  # all that planning creates
    assert config["test"]["images"].startswith(config["dataset"] + "/")


def test_config_plans_all_four_configurations(fingerprint, config):
    plans = plan_experiment(fingerprint, planner_settings(config))
    configs = plans["configurations"]
    assert set(configs) == CASCADE
    full, low = configs["3d_fullres"], configs["3d_lowres"]
    assert configs["3d_cascade_fullres"] == {
        "inherits_from": "3d_fullres",
        "previous_stage": "3d_lowres",
    }
    assert low["next_stage"] == "3d_cascade_fullres"
    assert np.all(np.array(low["spacing"]) >= full["spacing"])
    assert np.any(np.array(low["spacing"]) > full["spacing"])
    full_voxels = np.prod(full["median_image_size_in_voxels"])
    # nnU-Net's rules: the full-resolution patch sees under a quarter of a case, the
    # low-resolution case has at most half the voxels and its patch sees a quarter of it
    assert np.prod(full["patch_size"]) < 0.25 * full_voxels
    assert np.prod(low["median_image_size_in_voxels"]) * 2 <= full_voxels
    assert np.prod(low["patch_size"]) >= 0.25 * np.prod(low["median_image_size_in_voxels"])


def test_config_plans_match_nnunet(fingerprint, config, tmp_path):
    """nnunetv2's ExperimentPlanner, given this fingerprint, the config's memory budget
    and base features, plans the same four configurations (about 3 s)."""
    from nnunet_oracle import _nnunet_env
    from test_parity_nnunet import _nnunet_inputs, assert_plans_match

    settings = planner_settings(config)
    if settings.patch_size:
        pytest.skip("nnU-Net's planner has no fixed patch sizes")
    _nnunet_inputs(tmp_path, 701, fingerprint)
    args = [701, settings.gpu_memory_gb, settings.base_features]
    result = subprocess.run(
        [sys.executable, "-c", _NNUNET_PLANNER, json.dumps(args)],
        env=_nnunet_env(tmp_path.resolve()),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name = f"Dataset701_{fingerprint.dataset_name}"
    theirs = json.loads((tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text())
    assert set(theirs["configurations"]) == CASCADE
    assert_plans_match(plan_experiment(fingerprint, settings), theirs)
