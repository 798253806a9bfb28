"""Model packages: export, check member by member, install, and predict from the zip."""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_untrained_model, run_medseg

import medseg.inference.package as package_module
from medseg.cli.main import main
from medseg.core.errors import PackageError
from medseg.inference.package import (
    PACKAGE_JSON,
    cached_model,
    export_package,
    install_package,
    verify_package,
)

WEIGHTS = "3d_fullres/fold_0.safetensors"


@pytest.fixture(scope="module")
def model(demo_dataset, tmp_path_factory) -> Path:
    return make_untrained_model(demo_dataset, tmp_path_factory.mktemp("pkg_model"), (8, 32, 32))


@pytest.fixture(scope="module")
def package(model, tmp_path_factory) -> Path:
    zip_path = tmp_path_factory.mktemp("pkg") / "demo.zip"
    export_package(model, zip_path, name="demo")
    return zip_path


def rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the zip ``src`` whose members (name -> (ZipInfo, bytes)) ``edit`` changed."""
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: (i, zf.read(i)) for i in zf.infolist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as zf:
        for info, data in members.values():
            zf.writestr(info, data)
    return dst


def add(name: str, data: bytes = b"x", mode: int = stat.S_IFREG | 0o644):
    def edit(members):
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        members[name] = (info, data)

    return edit


def refused(zip_path: Path, pattern: str, **kwargs) -> None:
    """verify_package and install_package both refuse, naming the zip; nothing installed."""
    with pytest.raises(PackageError, match=re.escape(str(zip_path)) + ".*" + pattern):
        verify_package(zip_path, **kwargs)
    root = zip_path.parent / "installed"
    with pytest.raises(PackageError, match=pattern):
        install_package(zip_path, root, **kwargs)
    assert not root.exists() or not any(root.iterdir())


def _predict(model: Path, scan: Path, out: Path, cache: Path) -> np.ndarray:
    args = ["predict", "-m", model, "-i", scan, "-o", out, "--device", "cpu"]
    args += ["--engine", "torch", "--no-mirroring", "--formats", "nifti"]
    assert main([str(a) for a in [*args, "--model-cache", cache]]) == 0
    return np.asanyarray(nib.load(out / scan.name).dataobj)


def test_round_trip_export_install_predict(model, package, demo_dataset, tmp_path):
    record = verify_package(package)
    assert record["schema"] == "medseg.package" and record["schema_version"] == 1
    assert record["name"] == "demo" and record["channel_names"] == ["CT"]
    assert record["intended_input"]["modality"] == "CT"
    assert list(record["configurations"]) == ["3d_fullres"]
    assert [label for _, label in record["labels"]] == ["background", "organ", "lesion"]
    listed = {f["path"] for f in record["files"]}
    assert listed == {"model.json", "plans.json", WEIGHTS, "3d_fullres/fold_0.json"}

    folder = install_package(package, tmp_path / "models")
    assert folder == tmp_path / "models" / "demo"
    for name in listed:
        assert (folder / name).read_bytes() == (model / name).read_bytes()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["demo"]  # no temp left

    scan = sorted((demo_dataset / "imagesTs").glob("*.nii.gz"))[0]
    from_zip = _predict(package, scan, tmp_path / "a", tmp_path / "cache")
    from_folder = _predict(folder, scan, tmp_path / "b", tmp_path / "cache")
    assert from_zip.any() and np.array_equal(from_zip, from_folder)


def test_predict_from_zip_reuses_its_cache(package, demo_dataset, tmp_path, monkeypatch):
    installs = []
    real = package_module.install_package
    monkeypatch.setattr(
        package_module, "install_package", lambda *a, **k: installs.append(a) or real(*a, **k)
    )
    scan = sorted((demo_dataset / "imagesTs").glob("*.nii.gz"))[0]
    cache = tmp_path / "cache"
    first = _predict(package, scan, tmp_path / "a", cache)
    second = _predict(package, scan, tmp_path / "b", cache)
    assert np.array_equal(first, second) and len(installs) == 1
    (folder,) = cache.iterdir()
    # a damaged cached copy is noticed and extracted again
    weights = folder / WEIGHTS
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert cached_model(package, cache) == folder and len(installs) == 2
    assert weights.read_bytes() == good


def test_changed_byte_in_weights_is_a_digest_error(package, tmp_path):
    def flip(members):
        info, data = members[WEIGHTS]
        members[WEIGHTS] = (info, data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])

    bad = rewrite(package, tmp_path / "bad.zip", flip)
    refused(bad, f"member '{WEIGHTS}': SHA-256 or size differs")


def test_extra_member_is_refused(package, tmp_path):
    bad = rewrite(package, tmp_path / "bad.zip", add("notes.txt"))
    refused(bad, "member 'notes.txt': not listed in package.json")


def test_missing_member_is_refused(package, tmp_path):
    bad = rewrite(package, tmp_path / "bad.zip", lambda m: m.pop("plans.json"))
    refused(bad, "member 'plans.json': listed but missing")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "a name that leaves the package folder"),
        ("3d_fullres/../../evil", "a name that leaves the package folder"),
        ("/abs", "an absolute path"),
        ("C:/evil", "an absolute path"),
        ("a\\b", "a backslash"),
        ("3d_fullres/fold_1.pth", "a pickled file"),
    ],
)
def test_unsafe_member_names_are_refused(package, tmp_path, name, reason):
    bad = rewrite(package, tmp_path / "bad.zip", add(name))
    refused(bad, re.escape(f"member {name!r}: {reason}"))


def test_symlink_member_is_refused(package, tmp_path):
    bad = rewrite(package, tmp_path / "bad.zip", add("link", b"/etc/passwd", stat.S_IFLNK | 0o777))
    refused(bad, "member 'link': a symbolic link")


def _edit_record(change):
    def edit(members):
        info, data = members[PACKAGE_JSON]
        record = json.loads(data)
        change(record)
        members[PACKAGE_JSON] = (info, json.dumps(record).encode())

    return edit


def test_wrong_schema_version_is_refused(package, tmp_path):
    bad = rewrite(package, tmp_path / "bad.zip", _edit_record(lambda r: r.update(schema_version=2)))
    refused(bad, "schema version 2 is not one this medseg")


def test_name_that_leaves_the_install_folder_is_refused(package, tmp_path):
    bad = rewrite(package, tmp_path / "bad.zip", _edit_record(lambda r: r.update(name="../up")))
    refused(bad, "model name '../up' is not a plain folder name")


def test_zip_bomb_guard(package, tmp_path):
    pattern = r"member '.*': the members' uncompressed size .* limit of 1000"
    refused(package, pattern, max_bytes=1000)


def test_not_a_zip_and_nnunet_zip_are_refused(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"hello")
    refused(tmp_path / "x.zip", "not a zip file")
    nnunet = tmp_path / "nnunet.zip"
    with zipfile.ZipFile(nnunet, "w") as zf:
        zf.writestr("Dataset004/Trainer__Plans__3d_fullres/dataset.json", "{}")
        zf.writestr("Dataset004/Trainer__Plans__3d_fullres/fold_0/checkpoint_final.pth", "x")
    refused(nnunet, "looks like an nnU-Net model zip")


def test_overwrite_is_refused_unless_asked(model, package, tmp_path):
    zip_path = tmp_path / "m.zip"
    shutil.copy(package, zip_path)
    with pytest.raises(PackageError, match="m.zip: exists; .* --force"):
        export_package(model, zip_path)
    assert zip_path.read_bytes() == package.read_bytes()
    export_package(model, zip_path, name="demo", force=True)
    verify_package(zip_path)

    folder = install_package(zip_path, tmp_path / "models")
    with pytest.raises(PackageError, match="already installed; pass --force"):
        install_package(zip_path, tmp_path / "models")
    (folder / "mine.txt").write_text("x")
    assert install_package(zip_path, tmp_path / "models", replace=True) == folder
    assert not (folder / "mine.txt").exists()
    (tmp_path / "models" / "other").mkdir()
    (tmp_path / "models" / "other" / "keep.txt").write_text("x")
    with pytest.raises(PackageError, match="not a model folder"):
        install_package(zip_path, tmp_path / "models", name="other", replace=True)
    assert (tmp_path / "models" / "other" / "keep.txt").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["demo", "other"]


def test_cli_export_check_install(model, package, tmp_path):
    zip_path = tmp_path / "m.zip"
    r = run_medseg("export-model", model, "-o", zip_path, "--name", "hippo")
    assert r.returncode == 0, r.stderr
    assert "model 'hippo' (4 files" in r.stdout
    r = run_medseg("export-model", model, "-o", zip_path)
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
    r = run_medseg("install-model", zip_path, "--check")
    assert r.returncode == 0 and "intact (4 files checked)" in r.stdout
    r = run_medseg("install-model", zip_path, "--into", tmp_path / "models")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / "hippo" / "model.json").is_file()
    bad = rewrite(package, tmp_path / "bad.zip", add("../evil"))
    r = run_medseg("install-model", bad, "--into", tmp_path / "models")
    assert r.returncode == 2 and "member '../evil'" in r.stderr
