"""Every command ends with one line and an exit code, never a traceback: errors a user can
cause (paths, permissions, a full disk, broken records) exit 2 naming the path; a bug exits
3 naming a file that holds the traceback; --debug shows it."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_medseg

import medseg.cli.info
from medseg.cli.main import main
from robustness.robust_tools import assert_clean_failure, write_nifti


@pytest.fixture()
def volume(tmp_path, scan_array) -> Path:
    return write_nifti(tmp_path / "scan.nii.gz", scan_array)


def test_a_bug_is_reported_with_a_crash_file_not_a_traceback(volume, monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(medseg.cli.info, "run", broken)
    assert main(["info", str(volume)]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
    report = Path(err.split("traceback is in ")[1].split(";")[0].replace("\n", ""))
    text = report.read_text()
    assert "Traceback" in text and "ZeroDivisionError: a bug deep inside" in text
    assert "while running: medseg info" in text
    report.unlink()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(volume, monkeypatch, where):
    def broken(args):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(medseg.cli.info, "run", broken)
    argv = (
        ["--debug", "info", str(volume)] if where == "before" else ["info", str(volume), "--debug"]
    )
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_user_errors_exit_2_with_the_path(volume, tmp_path):
    result = run_medseg("convert", tmp_path / "missing.nii.gz", tmp_path / "x.nii.gz")
    assert_clean_failure(result, 2, "missing.nii.gz: file not found")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    result = run_medseg("convert", volume, blocker / "x.nii.gz")
    assert_clean_failure(result, 2, str(blocker), "a file is in the way")
    result = run_medseg("plan", volume, "-o", tmp_path / "plans.json")
    assert_clean_failure(result, 2, str(volume), "not valid JSON")


def test_unwritable_output_exits_2(volume, readonly_dir):
    result = run_medseg("convert", volume, readonly_dir / "x.nii.gz")
    assert_clean_failure(result, 2, str(readonly_dir / "x.nii.gz"))
    assert list(readonly_dir.iterdir()) == []


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` (root only), so writes hit ENOSPC."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk: {mounted.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_a_message(tmp_path):
    big = write_nifti(tmp_path / "big.nii", np.random.default_rng(0).normal(size=(64, 64, 32)))
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        result = run_medseg("convert", big, disk / "out.nii")
        assert_clean_failure(result, 2, str(disk / "out.nii"), "disk is full")
        assert list(disk.iterdir()) == []  # the half-written temporary is gone


def test_broken_records_and_configs_are_messages(tmp_path):
    bad = tmp_path / "fingerprint.json"
    bad.write_text(json.dumps({"schema": "medseg.fingerprint", "schema_version": 1}))
    result = run_medseg("plan", bad, "-o", tmp_path / "plans.json")
    assert_clean_failure(result, 2, str(bad), "malformed fingerprint")
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{not json")
    result = run_medseg("check", dataset)
    assert_clean_failure(result, 2, "dataset.json", "not valid JSON")
