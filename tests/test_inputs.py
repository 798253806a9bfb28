"""Which files make which case: channel files of the nnU-Net v2 layout grouped by the
model's channel count (as nnUNetv2_predict reads a folder), single files, 4D files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_medseg

from medseg.core.errors import OutputError
from medseg.inference.inputs import (
    discover_inputs,
    group_files,
    outputs_for,
    refuse_unsafe_outputs,
)


def touch(folder: Path, *names: str) -> list[Path]:
    """Empty files ``folder/name`` (grouping looks at names only)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in names]
    for p in paths:
        p.write_bytes(b"")
    return paths


def summary(cases) -> list[tuple[str, list[str], bool]]:
    """``(case id, file names, has a problem)`` per case."""
    return [(c.case_id, [f.name for f in c.files], c.problem is not None) for c in cases]


def two_channel_model(demo_models, folder: Path) -> Path:
    """A 2-channel medseg model folder (CT + one z-scored channel), 3d_fullres fold 0,
    built from the demo plans with untrained weights (for the mechanics of reading)."""
    import torch

    from medseg.inference.bundle import export_model
    from medseg.nets.checkpoint import save_checkpoint
    from medseg.nets.unet import build_network

    _, plans, _, _ = demo_models
    plans = copy.deepcopy(plans)
    plans["channel_names"] = ["CT", "contrast1"]
    config = plans["configurations"]["3d_fullres"]
    plans["configurations"] = {"3d_fullres": config}
    config["normalization_schemes"] = [config["normalization_schemes"][0], "ZScoreNormalization"]
    config["use_mask_for_norm"] = [config["use_mask_for_norm"][0], False]
    props = plans["foreground_intensity_properties_per_channel"]
    props["1"] = dict(props["0"])
    torch.manual_seed(0)
    network = build_network(config["architecture"], 2, len(plans["labels"]))
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "two.safetensors", network, {"configuration": config})
    return export_model(
        folder / "model",
        plans,
        [{"configuration": "3d_fullres", "folds": [0]}],
        {"3d_fullres": {0: folder / "two.safetensors"}},
    )


# -- the rule, on names ---------------------------------------------------------------------


def test_complete_groups_are_one_case_each_in_channel_order(tmp_path):
    files = touch(
        tmp_path,
        "BRATS_002_0001.nii.gz",
        "BRATS_001_0001.nii.gz",
        "BRATS_001_0000.nii.gz",
        "BRATS_002_0000.nii.gz",
    )
    cases, failures = discover_inputs([tmp_path], n_channels=2)
    assert failures == []
    assert summary(cases) == [
        ("BRATS_001", ["BRATS_001_0000.nii.gz", "BRATS_001_0001.nii.gz"], False),
        ("BRATS_002", ["BRATS_002_0000.nii.gz", "BRATS_002_0001.nii.gz"], False),
    ]
    assert cases[0].path == tmp_path / "BRATS_001_0000.nii.gz"  # channel 0: the geometry
    assert outputs_for(cases[0], Path("out"), ("nifti",)) == {"nifti": Path("out/BRATS_001.nii.gz")}
    assert len(files) == 4


def test_a_missing_channel_file_is_a_failed_case_naming_it(tmp_path):
    touch(
        tmp_path,
        "A_0000.nii.gz",
        "A_0001.nii.gz",
        "A_0002.nii.gz",
        "B_0000.nii.gz",
        "C_0002.nii.gz",
    )
    cases, _ = discover_inputs([tmp_path], n_channels=3)
    assert summary(cases) == [
        ("A", ["A_0000.nii.gz", "A_0001.nii.gz", "A_0002.nii.gz"], False),
        ("B", ["B_0000.nii.gz"], True),
        ("C", ["C_0002.nii.gz"], True),
    ]
    b, c = cases[1], cases[2]
    assert b.problem.startswith(f"{tmp_path / 'B_0001.nii.gz'}: channel file not found")
    assert "2 missing: B_0001.nii.gz, B_0002.nii.gz" in b.problem
    assert c.problem.startswith(str(tmp_path / "C_0000.nii.gz")) and c.path.name == "C_0002.nii.gz"
    assert "\n" not in b.problem
    assert outputs_for(b, tmp_path / "out", ("nifti", "probabilities")) == {}  # nothing to write


def test_single_channel_case_0000_is_case(tmp_path):
    touch(tmp_path / "imagesTs", "la_003_0000.nii.gz", "la_004_0000.nii.gz")
    cases, _ = discover_inputs([tmp_path / "imagesTs"], n_channels=1)
    assert summary(cases) == [
        ("la_003", ["la_003_0000.nii.gz"], False),
        ("la_004", ["la_004_0000.nii.gz"], False),
    ]
    # a single file given by name, too
    (case,), _ = discover_inputs([tmp_path / "imagesTs" / "la_004_0000.nii.gz"])
    assert case.case_id == "la_004" and case.problem is None
    assert outputs_for(case, tmp_path, ("nifti",))["nifti"] == tmp_path / "la_004.nii.gz"


def test_a_4d_msd_file_and_other_names_are_single_file_cases(tmp_path):
    touch(tmp_path, "BRATS_001.nii.gz", "scan.nrrd", "notes_0000.txt", "case_12345.nii.gz")
    cases, _ = discover_inputs([tmp_path], n_channels=2)
    assert summary(cases) == [
        ("BRATS_001", ["BRATS_001.nii.gz"], False),
        ("case_12345", ["case_12345.nii.gz"], False),
        ("scan", ["scan.nrrd"], False),
    ]
    assert cases[0].channel_files == ()


def test_numbers_beyond_the_channels_are_case_numbers_not_channels(tmp_path):
    touch(tmp_path, "img_0000.nii.gz", "img_0001.nii.gz", "img_0002.nii.gz")
    for n in (1, 2):  # 0002 >= n: not this model's channels, each file is a case
        cases, _ = discover_inputs([tmp_path], n_channels=n)
        assert [c.case_id for c in cases] == ["img_0000", "img_0001", "img_0002"]
        assert all(c.problem is None for c in cases)
    cases, _ = discover_inputs([tmp_path], n_channels=3)  # exactly 0000..0002: one case
    assert summary(cases) == [
        ("img", ["img_0000.nii.gz", "img_0001.nii.gz", "img_0002.nii.gz"], False)
    ]


def test_mixed_folder_groups_stay_within_their_folder(tmp_path):
    touch(
        tmp_path,
        "P_0000.nii.gz",
        "P_0001.nii.gz",
        "Q.nii.gz",
        "R_0000.nii.gz",
        "S_0000.nii",
        "S_0001.nii.gz",
    )
    touch(tmp_path / "site2", "P_0000.nii.gz", "P_0001.nii.gz", ".P_0000.nii.gz.tmp")
    touch(tmp_path / "site3", "R_0001.nii.gz")
    cases, failures = discover_inputs([tmp_path], n_channels=2)
    assert failures == []
    assert summary(cases) == [
        ("P", ["P_0000.nii.gz", "P_0001.nii.gz"], False),
        ("Q", ["Q.nii.gz"], False),
        ("R", ["R_0000.nii.gz"], True),  # its channel 1 in another folder does not count
        ("S", ["S_0000.nii"], True),  # one suffix per case, as nnU-Net's file_ending
        ("S_1", ["S_0001.nii.gz"], True),
        ("P_1", ["P_0000.nii.gz", "P_0001.nii.gz"], False),  # site2: ids made unique
        ("R_1", ["R_0001.nii.gz"], True),
    ]
    assert cases[5].path == tmp_path / "site2" / "P_0000.nii.gz"


def test_explicit_files_are_grouped_among_themselves_in_argument_order(tmp_path):
    a0, a1, b = touch(tmp_path / "in", "A_0000.nii.gz", "A_0001.nii.gz", "B.nii.gz")
    touch(tmp_path / "in", "C_0000.nii.gz", "C_0001.nii.gz")  # not given: not used
    cases, failures = discover_inputs([b, a1, tmp_path / "missing.nii.gz", a0], n_channels=2)
    assert summary(cases) == [
        ("B", ["B.nii.gz"], False),
        ("A", ["A_0000.nii.gz", "A_0001.nii.gz"], False),
    ]
    assert failures == [
        {
            "input": str(tmp_path / "missing.nii.gz"),
            "error": f"{tmp_path / 'missing.nii.gz'}: not found",
        }
    ]
    (lone,), _ = discover_inputs([tmp_path / "in" / "C_0000.nii.gz"], n_channels=2)
    assert lone.case_id == "C" and "C_0001.nii.gz" in lone.problem  # the sibling is not guessed


def test_group_files_is_pure_and_reports_first_positions():
    files = [Path("x/K_0001.nrrd"), Path("x/J.nii.gz"), Path("x/K_0000.nrrd")]
    grouped = group_files(files, 2)
    assert [(i, c.case_id, c.files) for i, c in grouped] == [
        (0, "K", (Path("x/K_0000.nrrd"), Path("x/K_0001.nrrd"))),
        (1, "J", (Path("x/J.nii.gz"),)),
    ]


def test_outputs_never_replace_any_channel_file(tmp_path):
    d0, d1 = touch(tmp_path / "d", "X_0000.nii.gz", "X_0001.nii.gz")
    e = touch(tmp_path / "e", "X_0001.nii.gz", "X_0002.nii.gz")  # case numbers: X_0001, X_0002
    cases, _ = discover_inputs([d0, d1, *e], n_channels=2)
    assert [c.case_id for c in cases] == ["X", "X_0001", "X_0002"]
    with pytest.raises(OutputError, match="would overwrite the input .*X_0001.nii.gz"):
        refuse_unsafe_outputs(cases, tmp_path / "d", ("nifti",))  # d/X_0001.nii.gz = channel 1
    refuse_unsafe_outputs(cases, tmp_path / "out", ("nifti",))


# -- predicting with the rule ---------------------------------------------------------------


def records(out: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return {x["case_id"]: x for x in lines}


@pytest.fixture(scope="module")
def nnunet_test_folder(demo_module, tmp_path_factory) -> Path:
    """imagesTs of a 2-channel demo dataset in the nnU-Net v2 layout (2 cases)."""
    root = tmp_path_factory.mktemp("nnunet") / "Dataset"
    return demo_module.write_dataset(root, 0, 2, seed=5, layout="nnunet", channels=2) / "imagesTs"


def test_predict_a_two_channel_folder_in_the_nnunet_layout(
    demo_models, nnunet_test_folder, tmp_path
):
    model = two_channel_model(demo_models, tmp_path / "m")
    out = tmp_path / "out"
    r = run_medseg(
        "predict",
        "-m",
        model,
        "-i",
        nnunet_test_folder,
        "-o",
        out,
        "--device",
        "cpu",
        "--engine",
        "torch",
        "--no-mirroring",
        "--formats",
        "nifti",
        "probabilities",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    found = records(out)
    assert sorted(found) == ["demo_100", "demo_101"]
    for case, record in found.items():
        channels = [nnunet_test_folder / f"{case}_{c:04d}.nii.gz" for c in (0, 1)]
        assert record["status"] == "ok" and record["findings"] == []
        assert record["input"] == str(channels[0].resolve())
        assert record["inputs"] == [str(p.resolve()) for p in channels]
        assert set(record["outputs"]) == {"nifti", "probabilities"}
        source, label = nib.load(channels[0]), nib.load(out / f"{case}.nii.gz")
        assert label.shape == source.shape and np.allclose(label.affine, source.affine)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["demo_100.nii.gz", "demo_101.nii.gz"]


def test_a_one_channel_model_on_case_0000_names(demo_models, demo_module, tmp_path):
    from medseg.inference.bundle import export_model

    _, plans, _, checkpoints = demo_models
    model = export_model(
        tmp_path / "model",
        plans,
        [{"configuration": "3d_fullres", "folds": [0]}],
        {"3d_fullres": {0: checkpoints["3d_fullres"][0]}},
    )
    data = demo_module.write_dataset(tmp_path / "d", 0, 1, seed=2, layout="nnunet")
    out = tmp_path / "out"
    r = run_medseg(
        "predict",
        "-m",
        model,
        "-i",
        data / "imagesTs",
        "-o",
        out,
        "--device",
        "cpu",
        "--engine",
        "torch",
        "--no-mirroring",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["demo_100.nii.gz"]
    assert (data / "labelsTs" / "demo_100.nii.gz").exists()  # the name evaluate looks for
    (record,) = records(out).values()
    assert record["inputs"] == [str((data / "imagesTs" / "demo_100_0000.nii.gz").resolve())]
