"""Test aid: validate DICOM files with dciodvfy (David Clunie's dicom3tools).

``dciodvfy FILE`` checks a file against its IOD (modules, attribute types,
value representations, defined terms) and prints one line per finding to
stderr: ``Error - ...`` for violations of the standard, ``Warning - ...`` for
questionable content. Findings about an attribute may be prefixed by its tag,
e.g. ``(0x0071,0x1001)  ?  - Warning - Unrecognized tag``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"


def find_dciodvfy() -> str | None:
    """Path of the dciodvfy executable, or None if it is not installed."""
    return shutil.which(DCIODVFY)


def require_dciodvfy() -> str:
    """dciodvfy's path; skip the test without it, or fail it in CI (``CI=true``)."""
    exe = find_dciodvfy()
    if exe is None:
        message = "dciodvfy (Debian/Ubuntu package dicom3tools) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must validate DICOM output")
        pytest.skip(message)
    return exe


def dciodvfy_lines(path: str | Path) -> list[str]:
    """All non-empty lines dciodvfy prints for ``path`` (stdout and stderr)."""
    exe = require_dciodvfy()
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]


def is_error(line: str) -> bool:
    """Whether a dciodvfy line reports an error (bare or tag-prefixed)."""
    return line.startswith("Error") or " - Error - " in line


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The error lines dciodvfy prints for ``path`` (empty: the file is valid)."""
    return [line for line in dciodvfy_lines(path) if is_error(line)]


def dciodvfy_warnings(path: str | Path) -> list[str]:
    """The warning lines dciodvfy prints for ``path``."""
    return [line for line in dciodvfy_lines(path) if "Warning" in line and not is_error(line)]
