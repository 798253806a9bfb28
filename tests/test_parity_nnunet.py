"""Parity with nnU-Net v2: the same data through real nnunetv2 and through medseg.

nnU-Net runs with its reorienting NIfTI reader (NibabelIOWithReorient), which
reads volumes into the same axis order as medseg's processing grid (canonical
RAS, axes reversed), so decisions and arrays compare one to one.

What must match:
* plans: configuration set, transpose, spacing, normalization and mask use,
  patch size, batch size, pooling and kernel sizes per stage: identical;
* fingerprint intensity statistics: within 1% (both sample foreground voxels,
  with different generators and medseg with 10x fewer samples);
* preprocessed arrays: images within 1e-3, labels identical. medseg is run with
  nnU-Net's intensity statistics substituted into its plans so that this
  compares preprocessing itself, not the (sampled) statistics above.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nnunet_oracle import load_preprocessed_case, run_nnunet, to_nnunet_raw

from medseg.core import Volume
from medseg.core.records import CaseFacts, Fingerprint
from medseg.dataset import load_dataset
from medseg.dataset.check import read_case
from medseg.fingerprint.extract import extract_fingerprint
from medseg.io import write_volume
from medseg.planning.planner import PlannerSettings, plan_experiment
from medseg.preprocessing.pipeline import preprocess_case, step

pytestmark = pytest.mark.slow

STATS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")


# --- comparisons ------------------------------------------------------------------


def assert_plans_match(ours: dict, theirs: dict) -> None:
    assert set(ours["configurations"]) == set(theirs["configurations"])
    assert ours["transpose_forward"] == theirs["transpose_forward"]
    for name, t in theirs["configurations"].items():
        o = ours["configurations"][name]
        if "inherits_from" in t:
            assert o == t, name
            continue
        where = f"{name}: ours {o['patch_size']} x{o['batch_size']}, "
        where += f"nnU-Net {t['patch_size']} x{t['batch_size']}"
        assert np.allclose(o["spacing"], t["spacing"], rtol=1e-6), where
        assert o["patch_size"] == list(t["patch_size"]), where
        assert o["batch_size"] == t["batch_size"], where
        assert o["normalization_schemes"] == t["normalization_schemes"], where
        assert o["use_mask_for_norm"] == t["use_mask_for_norm"], where
        assert o["batch_dice"] == t["batch_dice"], where
        assert o.get("next_stage") == t.get("next_stage"), where
        oa, ta = o["architecture"]["arch_kwargs"], t["architecture"]["arch_kwargs"]
        for key in (
            "n_stages",
            "features_per_stage",
            "kernel_sizes",
            "strides",
            "n_conv_per_stage",
            "n_conv_per_stage_decoder",
        ):
            assert json.loads(json.dumps(oa[key])) == json.loads(json.dumps(ta[key])), (where, key)


def assert_intensities_close(ours: Fingerprint, theirs: dict) -> None:
    per_channel = theirs["foreground_intensity_properties_per_channel"]
    assert len(ours.foreground_intensity) == len(per_channel) > 0
    for c, stats in enumerate(ours.foreground_intensity):
        ref = theirs["foreground_intensity_properties_per_channel"][str(c)]
        scale = abs(ref["percentile_99_5"] - ref["percentile_00_5"])
        for key in STATS:
            tol = 0.01 * max(abs(ref[key]), scale * 0.01)
            assert abs(stats[key] - ref[key]) <= tol, (c, key, stats[key], ref[key])


def assert_fingerprint_geometry_matches(ours: Fingerprint, theirs: dict) -> None:
    cases = sorted(ours.cases, key=lambda c: c.case_id)
    assert [list(c.shape_after_crop) for c in cases] == [
        list(s) for s in theirs["shapes_after_crop"]
    ]
    assert np.allclose([c.spacing for c in cases], theirs["spacings"], rtol=1e-6)
    assert np.isclose(
        ours.median_relative_size_after_crop, theirs["median_relative_size_after_cropping"]
    )


def assert_preprocessed_match(spec, plans: dict, run, configuration: str, case_ids) -> None:
    plans = {
        **plans,
        "foreground_intensity_properties_per_channel": run.plans[
            "foreground_intensity_properties_per_channel"
        ],
    }
    for case_id in case_ids:
        image, label = read_case(spec, spec.case(case_id))
        data, seg, record = preprocess_case(image, label, plans, configuration, case_id)
        ref_data, ref_seg, props = load_preprocessed_case(run, configuration, case_id)
        assert data.shape == ref_data.shape, case_id
        assert float(np.abs(data - ref_data).max()) < 1e-3, case_id
        assert np.array_equal(seg, ref_seg[0]), case_id
        assert [list(b) for b in props["bbox_used_for_cropping"]] == step(record, "crop")["box"]


# --- end-to-end runs on three datasets ------------------------------------------------


def compare_dataset(source: Path, work: Path, dataset_id: int, name: str, cases: list[str]):
    raw = to_nnunet_raw(source, work / "nnUNet_raw", dataset_id, name)
    run = run_nnunet(raw, work, configurations=("3d_fullres",))
    spec = load_dataset(source)
    fp = extract_fingerprint(spec, processes=2)
    plans = plan_experiment(fp)
    assert_plans_match(plans, run.plans)
    assert_fingerprint_geometry_matches(fp, run.fingerprint)
    assert_intensities_close(fp, run.fingerprint)
    assert_preprocessed_match(spec, plans, run, "3d_fullres", cases)
    return plans, run


def test_hippocampus_matches_nnunet(hippocampus, tmp_path):
    """Isotropic MRI, 200 real cases, z-score; nothing to resample."""
    plans, _ = compare_dataset(
        hippocampus,
        tmp_path,
        501,
        "Hippo",
        ["hippocampus_001", "hippocampus_017", "hippocampus_101", "hippocampus_394"],
    )
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 56, 40]


def test_anisotropic_ct_demo_matches_nnunet(demo_module, tmp_path):
    """Anisotropic CT in PLS orientation with varying spacing: CT normalization,
    transpose, and slice-wise (separate z) resampling of images and labels."""
    source = demo_module.write_dataset(tmp_path / "demo", 12, 0, seed=5)
    spec = load_dataset(source)
    resampled = [c.case_id for c in spec.training][:6]
    plans, run = compare_dataset(source, tmp_path, 502, "Demo", resampled)
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
    # at least one compared case really was resampled
    shapes = [load_preprocessed_case(run, "3d_fullres", c)[2] for c in resampled]
    assert any(
        list(s["shape_after_cropping_and_before_resampling"])
        != list(load_preprocessed_case(run, "3d_fullres", c)[0].shape[1:])
        for s, c in zip(shapes, resampled, strict=True)
    )


def write_two_channel_dataset(root: Path, n_cases: int = 6) -> Path:
    """MRI-like T2 + ADC cases with a zero background around the head: the non-zero
    crop removes over a quarter of each volume, so z-score uses the mask."""
    rng = np.random.default_rng(3)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    training = []
    for i in range(n_cases):
        shape = tuple(int(s) for s in rng.integers(36, 48, 3))
        spacing = rng.choice([1.0, 1.1, 1.25], 3)
        affine = np.diag([*spacing, 1.0])
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
        head = (grid**2).sum(-1) < 0.55
        lesion = ((grid - rng.uniform(-0.2, 0.2, 3)) ** 2).sum(-1) < 0.04
        t2 = np.where(head, rng.normal(300, 40, shape), 0)
        adc = np.where(head, rng.normal(900, 80, shape), 0)
        t2[lesion] += 150
        adc[lesion] -= 300
        image = np.stack([t2, adc]).astype(np.float32)
        label = (lesion & head).astype(np.uint8) + (head & (grid[..., 2] > 0.4)).astype(
            np.uint8
        ) * 2
        label[lesion & head] = 1
        write_volume(Volume(image, affine, "image"), root / "imagesTr" / f"mr_{i:03d}.nii.gz")
        write_volume(Volume.label(label, affine), root / "labelsTr" / f"mr_{i:03d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/mr_{i:03d}.nii.gz", "label": f"./labelsTr/mr_{i:03d}.nii.gz"}
        )
    meta = {
        "name": "TwoChannel",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "lesion", "2": "top"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_two_channel_masked_zscore_matches_nnunet(tmp_path):
    source = write_two_channel_dataset(tmp_path / "two")
    plans, _ = compare_dataset(source, tmp_path, 503, "Two", ["mr_000", "mr_003", "mr_005"])
    config = plans["configurations"]["3d_fullres"]
    assert config["use_mask_for_norm"] == [True, True]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] * 2


# --- the planner alone, on fingerprints that exercise every rule -------------------------


SYNTHETIC = {
    # name: (channel names, n labels, [(spacing (S, A, R), shape), ...], relative size)
    "large_ct_lowres": (
        ["CT"],
        3,
        [
            ((1.0, 0.8, 0.8), (300, 420, 420)),
            ((1.5, 0.7, 0.7), (260, 512, 512)),
            ((0.8, 0.9, 0.9), (340, 380, 400)),
        ],
        1.0,
    ),
    "thick_slices": (
        ["MRI"],
        2,
        [
            ((6.0, 0.6, 0.6), (20, 300, 320)),
            ((5.0, 0.7, 0.7), (24, 256, 256)),
            ((7.0, 0.5, 0.5), (18, 384, 384)),
        ],
        0.9,
    ),
    "brain_four_channels": (
        ["FLAIR", "T1w", "t1gd", "T2w"],
        4,
        [((1.0, 1.0, 1.0), (155, 240, 240))] * 3,
        0.6,
    ),
    "tiny_isotropic": (
        ["nonorm"],
        2,
        [((1.0, 1.0, 1.0), (24, 30, 28)), ((1.0, 1.0, 1.0), (20, 32, 30))],
        1.0,
    ),
    "anisotropic_inplane": (
        ["zscore"],
        3,
        [((0.5, 2.0, 0.5), (200, 60, 210)), ((0.6, 2.2, 0.6), (180, 55, 190))],
        0.8,
    ),
}

_DRIVER = """
import json, sys
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as m
for dataset_id in json.loads(sys.argv[1]):
    m.ExperimentPlanner(dataset_id, 8).plan_experiment()
"""


def _fingerprint(name: str, spec) -> Fingerprint:
    channels, n_labels, pattern, rel = spec
    cases = []
    for i in range(9):
        spacing, shape = pattern[i % len(pattern)]
        jitter = 1 + 0.01 * (i % 4)
        cases.append(
            CaseFacts(
                f"{name}_{i}",
                tuple(s * jitter for s in spacing),
                tuple(int(s) for s in shape),
                tuple(int(s) for s in shape),
                rel,
                "RAS",
                1000,
                (),
            )
        )
    values = (100, 90, 40, -50, 900, 10, 300)
    intensity = tuple(dict(zip(STATS, map(float, values), strict=True)) for _ in channels)
    return Fingerprint(
        name,
        tuple(channels),
        tuple((v, f"l{v}") for v in range(n_labels)),
        tuple(cases),
        intensity,
        rel,
    )


def _nnunet_inputs(work: Path, dataset_id: int, fp: Fingerprint) -> None:
    name = f"Dataset{dataset_id:03d}_{fp.dataset_name}"
    raw = work / "nnUNet_raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    for c in range(len(fp.channel_names)):  # the planner only looks at one image's suffix
        write_volume(
            Volume.image(np.zeros((2, 2, 2), np.float32), np.eye(4)),
            raw / "imagesTr" / f"{fp.cases[0].case_id}_{c:04d}.nii.gz",
        )
    meta = {
        "channel_names": {str(i): n for i, n in enumerate(fp.channel_names)},
        "labels": {n: v for v, n in fp.labels},
        "numTraining": len(fp.cases),
        "file_ending": ".nii.gz",
        "dataset": {
            fp.cases[0].case_id: {
                "images": [
                    f"imagesTr/{fp.cases[0].case_id}_{c:04d}.nii.gz"
                    for c in range(len(fp.channel_names))
                ],
                "label": "x.nii.gz",
            }
        },
    }
    (raw / "dataset.json").write_text(json.dumps(meta))
    pre = work / "nnUNet_preprocessed" / name
    pre.mkdir(parents=True)
    (pre / "dataset_fingerprint.json").write_text(
        json.dumps(
            {
                "spacings": [list(c.spacing) for c in fp.cases],
                "shapes_after_crop": [list(c.shape_after_crop) for c in fp.cases],
                "foreground_intensity_properties_per_channel": {
                    str(i): s for i, s in enumerate(fp.foreground_intensity)
                },
                "median_relative_size_after_cropping": fp.median_relative_size_after_crop,
            }
        )
    )


def test_planner_matches_nnunet_on_synthetic_fingerprints(tmp_path):
    from nnunet_oracle import _nnunet_env  # the harness's nnUNet_* environment

    fingerprints = {600 + i: _fingerprint(n, s) for i, (n, s) in enumerate(SYNTHETIC.items())}
    for dataset_id, fp in fingerprints.items():
        _nnunet_inputs(tmp_path, dataset_id, fp)
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(list(fingerprints))],
        env=_nnunet_env(tmp_path.resolve()),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = set()
    for dataset_id, fp in fingerprints.items():
        name = f"Dataset{dataset_id:03d}_{fp.dataset_name}"
        theirs = json.loads(
            (tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text()
        )
        ours = plan_experiment(fp, PlannerSettings())
        assert_plans_match(ours, theirs)
        seen |= set(theirs["configurations"])
    assert seen == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
