"""Per-case results kept beside a folder of predictions, valid only for unchanged inputs.

A rerun of ``medseg select`` on unchanged cross-validation results should not score
anything again. Each candidate's folder holds one :data:`CACHE_NAME` file with, per
section (``metrics``, ``postprocessing``, ``ensemble``) and case, a value and the key
it was computed for: the identity of every input file (resolved path, size,
modification and change time in ns, inode: a rewritten or replaced file, or a link
pointed elsewhere, has another identity), the settings (labels, tolerance, ...) and
the versions of the code that computed it. A value is used only if its key is equal
to the key of the inputs as they are now; anything else is computed again. A cache
file that cannot be read is ignored (everything is computed again), never an error.
"""

from __future__ import annotations

import json
import logging
import math
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from medseg.core.layout import CASE_CACHE
from medseg.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

CACHE_NAME = CASE_CACHE
CACHE_SCHEMA = ("medseg.case_cache", 1)
#: Bumped whenever what is cached, or how it is computed, changes.
CACHE_VERSION = 1


def file_identity(path: Path | None) -> list | None:
    """``[resolved path, size, mtime_ns, ctime_ns, inode]`` of a file (links followed).

    None if ``path`` is None or not a readable file: nothing is cached for it.
    """
    if path is None:
        return None
    try:
        resolved = Path(path).resolve(strict=True)
        st = resolved.stat()
    except OSError:
        return None
    if not resolved.is_file():
        return None
    return [str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


@cache
def code_versions() -> dict[str, str | int]:
    """Versions of what computes the cached values: this cache's and MONAI's, numpy's, scipy's."""
    versions: dict[str, str | int] = {"medseg_cache": CACHE_VERSION}
    for package in ("monai", "numpy", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _canonical(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value))


class CaseCache:
    """One section of a folder's :data:`CACHE_NAME` file: case -> (key, value).

    Parameters
    ----------
    folder : Path
        The folder the cached values belong to (the file lives in it).
    section : str
        Which values: ``metrics``, ``postprocessing`` or ``ensemble``.
    """

    def __init__(self, folder: Path, section: str) -> None:
        self.path = Path(folder) / CACHE_NAME
        self.section = section
        self._data = self._load()
        self._entries: dict = self._data.setdefault(section, {})

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable case cache, computing everything again (%s)", self.path, e)
            return {}
        schema = (data.get("schema"), data.get("schema_version")) if isinstance(data, dict) else ()
        if schema != CACHE_SCHEMA:
            log.info("%s: not a case cache of this version; computing everything again", self.path)
            return {}
        return data

    def get(self, case: str, key: dict) -> object | None:
        """The value cached for ``case`` if it was computed for ``key``, else None."""
        entry = self._entries.get(case)
        if not isinstance(entry, dict) or entry.get("key") != _canonical(key):
            return None
        return entry.get("value")

    def put(self, case: str, key: dict, value: object) -> None:
        """Remember ``value`` of ``case`` for ``key`` (JSON-ready: NaN only as None)."""
        self._entries[case] = {"key": _canonical(key), "value": _canonical(value)}

    def save(self, cases: list[str] | None = None) -> None:
        """Write the file atomically, keeping only ``cases`` in this section if given."""
        if cases is not None:
            keep = set(cases)
            for case in [c for c in self._entries if c not in keep]:
                del self._entries[case]
        sections = {k: v for k, v in self._data.items() if k not in ("schema", "schema_version")}
        data = {"schema": CACHE_SCHEMA[0], "schema_version": CACHE_SCHEMA[1], **sections}
        try:
            text = json.dumps(data, indent=None, allow_nan=False, separators=(",", ":"))
            write_text_atomic(self.path, text + "\n")
        except (OSError, ValueError) as e:  # a cache that cannot be written costs time only
            log.warning("%s: could not write the case cache (%s)", self.path, e)


def nan_from_none(row: dict, keys: tuple[str, ...]) -> dict:
    """``row`` with None at ``keys`` turned back into NaN (JSON has no NaN)."""
    return {k: (math.nan if k in keys and v is None else v) for k, v in row.items()}
