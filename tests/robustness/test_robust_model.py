"""Broken model folders: ``load_model`` and ``medseg predict -m`` say which file and which
field or tensor is wrong, as a ModelError (exit 2, one line, no traceback), and write
nothing.

Each case is a copy of a good medseg model folder with one thing broken; the nnU-Net
cases are folders laid out as nnU-Net v2 results folders.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_medseg

from medseg.core.errors import ModelError
from medseg.inference.bundle import export_model, load_model
from medseg.inference.model_check import folder_schema, json_path, schema_problems
from medseg.nets.checkpoint import save_checkpoint
from medseg.nets.unet import build_network
from robustness.robust_tools import assert_clean_failure, write_nifti

NNUNET_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def model(demo_models, tmp_path_factory) -> Path:
    """A good medseg model folder: tiny 3d_fullres, folds 0 and 1."""
    _, plans, _, checkpoints = demo_models
    return export_model(
        tmp_path_factory.mktemp("model") / "model",
        plans,
        [{"configuration": "3d_fullres", "folds": [0, 1]}],
        {"3d_fullres": checkpoints["3d_fullres"]},
    )


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def other_features(folder: Path) -> None:
    """fold_0 replaced by a network of the same plans but twice the features per stage."""
    plans = json.loads((folder / "plans.json").read_text())
    architecture = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    kwargs = architecture["arch_kwargs"]
    kwargs["features_per_stage"] = [2 * f for f in kwargs["features_per_stage"]]
    network = build_network(architecture, len(plans["channel_names"]), len(plans["labels"]))
    save_checkpoint(folder / "3d_fullres" / "fold_0.safetensors", network, {})


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_member(key, value):
    return lambda folder: edit_json(
        folder / "model.json", lambda d: d["members"][0].__setitem__(key, value)
    )


def set_field(name, key, value):
    return lambda folder: edit_json(folder / name, lambda d: d.__setitem__(key, value))


def drop_field(name, key):
    return lambda folder: edit_json(folder / name, lambda d: d.pop(key))


def drop_patch_size(folder: Path) -> None:
    edit_json(folder / "plans.json", lambda d: d["configurations"]["3d_fullres"].pop("patch_size"))


def remove_weights(folder: Path) -> None:
    for fold in (0, 1):
        (folder / "3d_fullres" / f"fold_{fold}.safetensors").unlink()


#: (id, how to break a copy of the good folder, file named, what else the message says)
BROKEN = [
    ("no-members", drop_field("model.json", "members"), "model.json", ["members: missing"]),
    ("members-empty", set_field("model.json", "members", []), "model.json", ["members: []"]),
    (
        "folds-not-a-list",
        set_member("folds", "0"),
        "model.json",
        ["members[0].folds: '0' is not of type 'array'"],
    ),
    ("folds-empty", set_member("folds", []), "model.json", ["members[0].folds: []"]),
    (
        "fold-not-a-number",
        set_member("folds", [0, "one"]),
        "model.json",
        ["members[0].folds[1]: must be a fold number"],
    ),
    (
        "labels-not-pairs",
        set_field("model.json", "labels", [[0, "background"], [1]]),
        "model.json",
        ["labels[1]: must be a [value, name] pair"],
    ),
    (
        "labels-a-dict",
        set_field("model.json", "labels", {"background": 0, "a": 1}),
        "model.json",
        ["labels: must be a list of [value, name] pairs"],
    ),
    (
        "labels-not-consecutive",
        set_field("model.json", "labels", [[0, "bg"], [2, "a"]]),
        "model.json",
        ["labels: label values must be 0 (background), 1, 2"],
    ),
    (
        "labels-disagree",
        set_field("model.json", "channel_names", ["PET"]),
        "model.json",
        ["channel_names ['PET'] differ from", "plans.json: channel_names"],
    ),
    (
        "channel-names-empty",
        set_field("model.json", "channel_names", []),
        "model.json",
        ["channel_names: []"],
    ),
    (
        "postprocessing-not-a-record",
        set_field("model.json", "postprocessing", "largest"),
        "model.json",
        ["postprocessing: must be null"],
    ),
    (
        "bad-json",
        lambda f: (f / "model.json").write_text('{"schema": "medseg.model",'),
        "model.json",
        ["not valid JSON"],
    ),
    (
        "configuration-not-in-plans",
        set_member("configuration", "3d_lowres"),
        "model.json",
        ["members[0].configuration", "'3d_lowres'", "plans.json"],
    ),
    (
        "plans-without-patch-size",
        drop_patch_size,
        "plans.json",
        ["configurations.3d_fullres.patch_size: missing"],
    ),
    (
        "plans-bad-transpose",
        set_field("plans.json", "transpose_forward", [0, 0, 1]),
        "plans.json",
        ["transpose_forward: must be a permutation of [0, 1, 2]"],
    ),
    (
        "weights-missing",
        remove_weights,
        "",
        ["3d_fullres/fold_0.safetensors, 3d_fullres/fold_1.safetensors", "missing"],
    ),
    (
        "weights-other-shape",
        other_features,
        "3d_fullres/fold_0.safetensors",
        ["has shape", "the network's"],
    ),
    (
        "weights-damaged",
        lambda f: truncate(f / "3d_fullres" / "fold_1.safetensors"),
        "3d_fullres/fold_1.safetensors",
        ["damaged"],
    ),
]


def broken_copy(model: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(model, folder)
    change(folder)
    return folder


@pytest.mark.parametrize("case", BROKEN, ids=[b[0] for b in BROKEN])
def test_load_model_names_file_and_field(model, tmp_path, case):
    _, change, file, needles = case
    folder = broken_copy(model, tmp_path, change)
    with pytest.raises(ModelError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert f"{folder / file}: " in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "\n" not in message and ("medseg export" in message or "fix the" in message)


def test_wrong_shape_names_the_tensor(model, tmp_path):
    folder = broken_copy(model, tmp_path, other_features)
    with pytest.raises(ModelError, match=r"fold_0\.safetensors: the checkpoint's \S+ has shape"):
        load_model(folder)


def test_several_problems_are_listed_then_counted(model, tmp_path):
    def many(folder):
        edit_json(
            folder / "model.json",
            lambda d: d.update(
                members=[{"folds": []}], labels=5, channel_names=[""], postprocessing=1
            ),
        )

    folder = broken_copy(model, tmp_path, many)
    with pytest.raises(ModelError, match=r"model\.json: .*; .*; .* \(and \d+ more\)"):
        load_model(folder)


def test_good_folder_and_its_schema(model):
    """The exported folder passes, and the shipped schema is a valid JSON schema."""
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(folder_schema())
    assert schema_problems(json.loads((model / "model.json").read_text()), "model") == []
    plans = json.loads((model / "plans.json").read_text())
    assert schema_problems(plans, "medseg_plans") == []
    bundle = load_model(model)
    assert [len(m.networks) for m in bundle.members] == [2]
    assert json_path(["members", 0, "previous", "folds", 1]) == "members[0].previous.folds[1]"


def nnunet_folder(model: Path, tmp_path: Path, plans_change=None, dataset_change=None) -> Path:
    """An nnU-Net v2 results folder laid out from the medseg model's plans (no weights:
    every case here fails before they are read)."""
    folder = tmp_path / "Dataset001_Demo" / NNUNET_FOLDER
    (folder / "fold_0").mkdir(parents=True)
    plans = json.loads((model / "plans.json").read_text())
    dataset = {
        "channel_names": {str(i): n for i, n in enumerate(plans.pop("channel_names"))},
        "labels": {n: v for v, n in plans.pop("labels")},
        "numTraining": 6,
        "file_ending": ".nii.gz",
    }
    for document, change in ((plans, plans_change), (dataset, dataset_change)):
        if change:
            change(document)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


NNUNET_BROKEN = [
    (
        "plans-without-configurations",
        lambda p: p.pop("configurations"),
        None,
        "plans.json",
        ["configurations: missing"],
    ),
    (
        "plans-without-configuration",
        lambda p: p["configurations"].pop("3d_fullres"),
        None,
        "plans.json",
        ["the plans have no configuration '3d_fullres'"],
    ),
    (
        "dataset-without-labels",
        None,
        lambda d: d.pop("labels"),
        "dataset.json",
        ["labels: missing"],
    ),
    (
        "dataset-without-channels",
        None,
        lambda d: d.pop("channel_names"),
        "dataset.json",
        ["needs 'channel_names' (or the older 'modality')"],
    ),
    (
        "dataset-channel-keys",
        None,
        lambda d: d.update(channel_names={"1": "T2"}),
        "dataset.json",
        ["channel_names: keys must be"],
    ),
    (
        "dataset-regions",
        None,
        lambda d: d["labels"].update(both=[1, 2]),
        "dataset.json",
        ["region-based"],
    ),
]


@pytest.mark.parametrize("case", NNUNET_BROKEN, ids=[b[0] for b in NNUNET_BROKEN])
def test_nnunet_folder_names_file_and_field(model, tmp_path, case):
    _, plans_change, dataset_change, file, needles = case
    folder = nnunet_folder(model, tmp_path, plans_change, dataset_change)
    with pytest.raises(ModelError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert str(folder / file) in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_nnunet_bad_json_and_bad_weights(model, tmp_path):
    folder = nnunet_folder(model, tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"\x80\x04 not a zip")
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: damaged"):
        load_model(folder)
    (folder / "dataset.json").write_text("{'labels': }")
    with pytest.raises(ModelError, match=re.escape(f"{folder / 'dataset.json'}: not valid JSON")):
        load_model(folder)


CLI_CASES = ["no-members", "weights-missing", "weights-other-shape"]


@pytest.mark.parametrize("case", CLI_CASES + ["nnunet-plans-without-configurations"])
def test_predict_refuses_broken_model(model, tmp_path, scan_array, case):
    if case.startswith("nnunet"):
        folder = nnunet_folder(model, tmp_path, lambda p: p.pop("configurations"))
        file, needle = "plans.json", "configurations: missing"
    else:
        _, change, file, needles = next(b for b in BROKEN if b[0] == case)
        folder, needle = broken_copy(model, tmp_path, change), needles[0]
    scan = write_nifti(tmp_path / "scan.nii.gz", scan_array)
    out = tmp_path / "out"
    r = run_medseg("predict", "-m", folder, "-i", scan, "-o", out, "--device", "cpu")
    assert_clean_failure(r, 2, str(folder), needle)
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"{folder / file}: " in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
