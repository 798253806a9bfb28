"""Helpers of the robustness suite: bad inputs built in tmp folders, and the
promises checked for each: exit code, a message naming the file and the problem, no
traceback, inputs untouched (hashes before and after), no partial outputs."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = {}
    for f in files:
        digest[str(f.relative_to(path)) if f != path else f.name] = hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
    return digest


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Exit ``code``, one ``error:`` message holding every needle, and no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


def write_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
    return path
