"""Fixtures of the robustness suite (helpers: robust_tools.py, imported by name because
a second ``conftest`` module would shadow tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest


@pytest.fixture()
def scan_array() -> np.ndarray:
    """A small, plausible CT-like image (X, Y, Z) = (24, 24, 12), float32, with structure."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 24, 12)), indexing="ij")
    body = (x**2 + y**2 < 0.7).astype(np.float32)
    return (-1000 + 1040 * body + rng.normal(0, 20, body.shape)).astype(np.float32)


@pytest.fixture()
def readonly_dir(tmp_path):
    """A folder nobody may write into: read-only permissions, or for root (who ignores
    them) the immutable attribute (``chattr +i``, ext4 and most Linux file systems)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode
    ):
        pytest.skip("root on a file system without chattr +i: every folder is writable")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
