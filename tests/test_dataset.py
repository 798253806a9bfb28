"""Dataset layouts (MSD, nnU-Net v2) and `check`, on real and generated data."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.core import DatasetError, Volume
from medseg.dataset import CheckSettings, check_case, check_dataset, load_dataset
from medseg.io import write_volume


def test_msd_hippocampus_layout(hippocampus):
    spec = load_dataset(hippocampus)
    assert spec.layout == "msd"
    assert spec.channel_names == ("MRI",)
    assert spec.labels == ((0, "background"), (1, "Anterior"), (2, "Posterior"))
    assert len(spec.training) == 200
    first = spec.training[0]
    assert first.case_id == "hippocampus_001"
    assert first.images == (hippocampus / "imagesTr" / "hippocampus_001.nii.gz",)
    assert first.label == hippocampus / "labelsTr" / "hippocampus_001.nii.gz"


def test_hippocampus_is_clean(hippocampus):
    report = check_dataset(load_dataset(hippocampus), processes=2)
    assert report.n_cases == 200 and report.n_valid == 200 and report.ok


def make_nnunet_dataset(root: Path, n_cases=3, n_channels=2, shape=(8, 9, 10)) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        cid = f"case_{i:03d}"
        for c in range(n_channels):
            img = rng.normal(100 * c, 10, shape).astype(np.float32)
            write_volume(Volume.image(img, affine), root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        lab = np.zeros(shape, np.uint8)
        lab[2:5, 2:5, 2:6] = 1 + i % 2
        write_volume(Volume.label(lab, affine), root / "labelsTr" / f"{cid}.nii.gz")
    for c in range(n_channels):
        write_volume(
            Volume.image(np.zeros(shape, np.float32), affine),
            root / "imagesTs" / f"test_000_{c:04d}.nii.gz",
        )
    meta = {
        "channel_names": {str(c): name for c, name in enumerate(["T2", "ADC"][:n_channels])},
        "labels": {"background": 0, "peripheral": 1, "transition": 2},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_v2_layout_two_channels(tmp_path):
    spec = load_dataset(make_nnunet_dataset(tmp_path / "Dataset001_X"))
    assert spec.layout == "nnunetv2"
    assert spec.channel_names == ("T2", "ADC")
    assert [c.case_id for c in spec.training] == ["case_000", "case_001", "case_002"]
    assert spec.training[1].images[1].name == "case_001_0001.nii.gz"
    assert [c.case_id for c in spec.test] == ["test_000"] and spec.test[0].label is None
    assert check_dataset(spec).ok


def test_nnunet_missing_channel_file_is_reported(tmp_path):
    root = make_nnunet_dataset(tmp_path / "D")
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    report = check_dataset(load_dataset(root))
    assert [str(p) for p in report.problems] == [
        "case_001: imagesTr/case_001_0001.nii.gz: file not found"
    ]


def test_wrong_channel_count_nan_and_empty_label(tmp_path):
    root = tmp_path / "M"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.eye(4)
    img = np.random.default_rng(0).normal(0, 1, (2, 6, 6, 6)).astype(np.float32)
    img[1, 0, 0, 0] = np.nan
    write_volume(Volume(img, affine, "image"), root / "imagesTr" / "a.nii.gz")
    write_volume(
        Volume.label(np.zeros((6, 6, 6), np.uint8), affine), root / "labelsTr" / "a.nii.gz"
    )
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "x"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    messages = [p.message for p in check_case(spec, spec.training[0])]
    assert len(messages) == 3
    assert "2 image channel(s), but dataset.json declares 1 (CT)" in messages[0]
    assert "1 NaN or infinite voxel(s)" in messages[1]
    assert "is empty (background only)" in messages[2]
    assert len(check_case(spec, spec.training[0], CheckSettings(allow_empty_labels=True))) == 2


def test_geometry_mismatch_is_reported_with_numbers(tmp_path):
    root = make_nnunet_dataset(tmp_path / "G", n_cases=1, n_channels=1)
    lab_path = root / "labelsTr" / "case_000.nii.gz"
    lab = nib.load(lab_path)
    shifted = lab.affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), shifted), lab_path)
    (problem,) = check_dataset(load_dataset(root)).problems
    assert "not on the same voxel grid" in problem.message
    assert "origin" in problem.message and "2 mm" in problem.message


@pytest.mark.parametrize(
    "path",
    ["../outside.nii.gz", "imagesTr/../../x.nii.gz", "/etc/passwd"],
)
def test_paths_must_not_escape_the_dataset_folder(tmp_path, path):
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background"},
        "training": [{"image": path, "label": "./labelsTr/a.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="outside the dataset folder|absolute path"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"foo": 1}, "neither an nnU-Net v2"),
        ({"channel_names": {"0": "CT"}, "labels": {"background": 0}}, "file_ending"),
        (
            {"channel_names": {"1": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"},
            "0, 1, ... without gaps",
        ),
        (
            {"channel_names": {"0": "CT"}, "labels": {"a": 1}, "file_ending": ".nii.gz"},
            "background as 0",
        ),
        (
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "r": [1, 2]},
                "file_ending": ".nii.gz",
            },
            "region",
        ),
    ],
)
def test_malformed_dataset_json(tmp_path, meta, message):
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


def test_missing_or_invalid_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path)


def _copy_dataset(src: Path, dst: Path) -> Path:
    """A copy of a dataset whose files are symlinks (so edits must replace, not write through)."""
    dst.mkdir()
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir()
        for f in (src / sub).iterdir():
            (dst / sub / f.name).symlink_to(f.resolve())
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_three_injected_faults_give_exactly_three_problems(hippocampus, tmp_path):
    root = _copy_dataset(hippocampus, tmp_path / "Hippo")
    # 1. corrupt (truncated) image
    img = root / "imagesTr" / "hippocampus_003.nii.gz"
    _replace(img, img.read_bytes()[:300])
    # 2. a label with value 7
    lab_path = root / "labelsTr" / "hippocampus_004.nii.gz"
    lab = nib.load(lab_path)
    arr = np.asanyarray(lab.dataobj).copy()
    arr[0, 0, 0] = 7
    lab_path.unlink()
    nib.save(nib.Nifti1Image(arr, lab.affine), lab_path)
    # 3. an image/label shape mismatch
    lab_path = root / "labelsTr" / "hippocampus_006.nii.gz"
    lab = nib.load(lab_path)
    arr = np.asanyarray(lab.dataobj)[:-2].copy()
    lab_path.unlink()
    nib.save(nib.Nifti1Image(arr, lab.affine), lab_path)

    # the copy links into the shared data, outside its own folder
    report = check_dataset(load_dataset(root), CheckSettings(allow_outside_links=True), processes=2)
    assert report.n_cases == 200 and report.n_valid == 197
    assert [p.case_id for p in report.problems] == [
        "hippocampus_003",
        "hippocampus_004",
        "hippocampus_006",
    ]
    m3, m4, m6 = (p.message for p in report.problems)
    assert "imagesTr/hippocampus_003.nii.gz" in m3 and "corrupt" in m3
    assert "value(s) [7] not declared" in m4
    assert "image shape" in m6 and "differ" in m6


def test_label_values_must_be_consecutive(tmp_path):
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "a": 1, "b": 3},
        "file_ending": ".nii.gz",
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="consecutive 0, 1, 2"):
        load_dataset(tmp_path)


def test_num_training_is_read_and_must_be_an_integer(tmp_path):
    root = make_nnunet_dataset(tmp_path / "N", n_cases=2, n_channels=1)
    assert load_dataset(root).declared_training == 2
    meta = json.loads((root / "dataset.json").read_text())
    for bad in ("2", 2.5, True, -1):
        (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": bad}))
        with pytest.raises(DatasetError, match="'numTraining' must be the number"):
            load_dataset(root)
    del meta["numTraining"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert load_dataset(root).declared_training is None


def test_num_training_mismatch_is_one_dataset_problem(tmp_path):
    root = make_nnunet_dataset(tmp_path / "N", n_cases=2, n_channels=1)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    report = check_dataset(load_dataset(root))
    (problem,) = report.problems
    assert problem.case_id == "dataset.json" and "numTraining is 5, but 2" in problem.message
    assert report.n_valid == 2 and report.bad_cases == () and not report.ok


def test_outside_links_are_problems_unless_allowed(tmp_path):
    root = make_nnunet_dataset(tmp_path / "L", n_cases=1, n_channels=1)
    store = tmp_path / "store"
    store.mkdir()
    image = root / "imagesTr" / "case_000_0000.nii.gz"
    image.rename(store / image.name)
    image.symlink_to(store / image.name)
    (problem,) = check_dataset(load_dataset(root)).problems
    assert "imagesTr/case_000_0000.nii.gz: resolves to" in problem.message
    assert "--allow-outside-links" in problem.message
    assert check_dataset(load_dataset(root), CheckSettings(allow_outside_links=True)).ok
    # a dataset folder that is itself a link is fine
    (tmp_path / "alias").symlink_to(root)
    assert check_dataset(load_dataset(tmp_path / "alias"), CheckSettings()).problems == (problem,)


def test_no_orientation_is_a_warning_not_a_problem(tmp_path):
    root = make_nnunet_dataset(tmp_path / "W", n_cases=1, n_channels=1)
    for path in (root / "imagesTr" / "case_000_0000.nii.gz", root / "labelsTr" / "case_000.nii.gz"):
        img = nib.load(path)
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
        nib.save(img, path)
    report = check_dataset(load_dataset(root))
    assert report.ok and report.n_valid == 1
    image, label = report.warnings
    assert "imagesTr/case_000_0000.nii.gz: the header holds no orientation" in image.message
    assert label.case_id == "case_000" and "labelsTr/case_000.nii.gz" in label.message
