"""Planning rules checked against nnU-Net's own functions and the network library."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.plans import Plans
from medseg.core.records import CaseFacts, Fingerprint, RecordError
from medseg.planning.memory import feature_map_voxels
from medseg.planning.planner import PlannerSettings, _architecture, plan_experiment
from medseg.planning.spacing import fullres_target_spacing, transpose_axes
from medseg.planning.splits import make_splits, validate_splits
from medseg.planning.topology import pool_and_conv_props


def test_topology_equals_nnunet_on_random_inputs():
    from nnunetv2.experiment_planning.experiment_planners.network_topology import (
        get_pool_and_conv_props,
    )

    rng = np.random.default_rng(0)
    for _ in range(1500):
        dim = int(rng.choice([2, 3]))
        spacing = list(rng.choice([0.5, 0.7, 0.8, 1.0, 2.5, 5.0], dim) * rng.uniform(0.9, 1.1, dim))
        patch = list(rng.integers(4, 300, dim) + rng.choice([0, 0.5], dim))
        pools, pk, ck, padded, div = get_pool_and_conv_props(spacing, patch, 4, 999999)
        ours = pool_and_conv_props(spacing, patch)
        assert list(ours.pools_per_axis) == list(pools)
        assert ours.pool_kernel_sizes == tuple(map(tuple, pk))
        assert ours.conv_kernel_sizes == tuple(map(tuple, ck))
        assert ours.patch_size == tuple(int(p) for p in padded)
        assert ours.divisible_by == tuple(int(d) for d in div)


def test_feature_map_voxels_equal_the_network_library():
    from medseg.nets.unet import build_network

    rng = np.random.default_rng(1)
    for _ in range(150):
        dim = int(rng.choice([2, 3]))
        topo = pool_and_conv_props(
            list(rng.choice([0.5, 1.0, 2.5, 5.0], dim)), list(rng.integers(8, 200, dim))
        )
        arch = _architecture(topo, PlannerSettings(base_features=int(rng.choice([8, 16, 32]))))
        kw = arch["arch_kwargs"]
        n_classes, deep = int(rng.integers(2, 6)), bool(rng.integers(0, 2))
        net = build_network(arch, 1, n_classes, deep_supervision=deep, device="meta")
        expected = int(net.compute_conv_feature_map_size(list(topo.patch_size)))
        assert (
            feature_map_voxels(
                topo.patch_size,
                kw["strides"],
                kw["features_per_stage"],
                kw["n_conv_per_stage"],
                kw["n_conv_per_stage_decoder"],
                n_classes,
                deep,
            )
            == expected
        )


def test_build_network_refuses_components_outside_the_allow_list():
    from medseg.core.errors import MedsegError
    from medseg.nets.unet import build_network

    arch = _architecture(pool_and_conv_props([1.0] * 3, [32] * 3), PlannerSettings())
    arch["arch_kwargs"]["nonlin"] = "os.system"
    with pytest.raises(MedsegError, match="unsupported network component 'os.system'"):
        build_network(arch, 1, 2, device="meta")


def test_anisotropic_target_spacing_uses_the_10th_percentile():
    spacings = [(5.0, 0.8, 0.8)] * 5 + [(3.0, 0.8, 0.8)] * 5
    shapes = [(30, 400, 400)] * 10
    target = fullres_target_spacing(spacings, shapes)
    assert target[0] == pytest.approx(3.0) and target[1] == pytest.approx(0.8)
    assert transpose_axes([0.8, 0.8, 3.0]) == ([2, 0, 1], [1, 2, 0])


def fingerprint(spacing, shape, n=10, channels=("CT",)):
    cases = tuple(CaseFacts(f"c{i}", spacing, shape, shape, 1.0, "RAS", 1, ()) for i in range(n))
    stats = {
        "mean": 0.0,
        "median": 0.0,
        "std": 1.0,
        "min": -1.0,
        "max": 1.0,
        "percentile_00_5": -1.0,
        "percentile_99_5": 1.0,
    }
    return Fingerprint("x", channels, ((0, "bg"), (1, "fg")), cases, (stats,) * len(channels), 1.0)


def test_overrides_change_inputs_not_rules():
    fp = fingerprint((1.0, 1.0, 1.0), (128, 128, 128))
    default = plan_experiment(fp)["configurations"]["3d_fullres"]
    small = plan_experiment(
        fp, PlannerSettings(gpu_memory_gb=1.0, base_features=16, configurations=("3d_fullres",))
    )
    assert list(small["configurations"]) == ["3d_fullres"]
    small = small["configurations"]["3d_fullres"]
    assert np.prod(small["patch_size"]) < np.prod(default["patch_size"])
    assert small["architecture"]["arch_kwargs"]["features_per_stage"][0] == 16
    fixed = plan_experiment(fp, PlannerSettings(patch_size={"3d_fullres": (40, 48, 56)}))
    config = fixed["configurations"]["3d_fullres"]
    assert config["patch_size"] == [40, 48, 56] and config["batch_size"] >= 2
    assert Plans.of(fixed).resolve("3d_fullres")["patch_size"] == [40, 48, 56]


def test_lowres_and_cascade_for_large_images():
    plans = plan_experiment(fingerprint((1.0, 1.0, 1.0), (400, 400, 400)))
    assert set(plans["configurations"]) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    cascade = Plans.of(plans).resolve("3d_cascade_fullres")
    assert cascade["previous_stage"] == "3d_lowres"
    assert cascade["patch_size"] == plans["configurations"]["3d_fullres"]["patch_size"]
    assert plans["configurations"]["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    with pytest.raises(RecordError, match="no configuration 'nope'"):
        Plans.of(plans).resolve("nope")


def test_splits_are_complete_disjoint_and_reproducible():
    ids = [f"case_{i:02d}" for i in range(23)]
    a = make_splits(ids, 5, seed=7)
    assert a == make_splits(list(reversed(ids)), 5, seed=7)
    assert a != make_splits(ids, 5, seed=8)
    vals = [c for f in a["folds"] for c in f["val"]]
    assert sorted(vals) == ids and {len(f["val"]) for f in a["folds"]} == {4, 5}
    for f in a["folds"]:
        assert set(f["train"]) | set(f["val"]) == set(ids) and not set(f["train"]) & set(f["val"])
    assert validate_splits(a, ids) == a


def test_user_splits_are_validated_including_nnunet_format():
    ids = ["a", "b", "c", "d"]
    nnunet = [{"train": ["a", "b"], "val": ["c", "d"]}, {"train": ["c", "d"], "val": ["a", "b"]}]
    assert validate_splits(nnunet, ids)["n_folds"] == 2
    with pytest.raises(RecordError, match="not in the dataset"):
        validate_splits([{"train": ["a"], "val": ["zz"]}, {"train": ["a"], "val": ["b"]}], ids)
    with pytest.raises(RecordError, match="both train and val"):
        validate_splits([{"train": ["a", "b"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}], ids)
    with pytest.raises(RecordError, match="more than one fold"):
        validate_splits([{"train": ["b"], "val": ["a"]}, {"train": ["b"], "val": ["a"]}], ids)
    with pytest.raises(RecordError, match="cannot split 4 cases into 5"):
        make_splits(ids, 5)
