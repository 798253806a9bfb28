"""Checks of a model package (zip) before anything in it is used; pure where possible.

Member names (no absolute path, ``..``, backslash or drive letter), member types (no
symbolic link, no folder entry), pickled files (refused: medseg never unpickles), the
total uncompressed size (a zip bomb guard), ``package.json`` (a known schema version, a
well-formed file list), every member listed and no other, and, while a member is read,
its size and SHA-256 against the list. Every failure is a :class:`PackageError` naming
the zip and the member.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from medseg import __version__
from medseg.core.errors import PackageError

PACKAGE_SCHEMA = ("medseg.package", 1)
#: Versions of package.json this medseg reads.
KNOWN_VERSIONS = (1,)
PACKAGE_JSON = "package.json"
#: Default bound on the total uncompressed size of a package (bytes).
DEFAULT_MAX_BYTES = 20 * 10**9
#: package.json is read into memory: bounded on its own.
MAX_RECORD_BYTES = 16 * 2**20
CHUNK = 2**20
#: Suffixes of pickled files (torch.load, pickle): never packaged, never installed.
PICKLED = (".pth", ".pt", ".pkl", ".pickle", ".ckpt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
UNSAFE = "the package is unsafe or damaged; nothing was installed: ask its sender for a new one"
NNUNET_ZIP = (
    "looks like an nnU-Net model zip (nnUNetv2_export_model_to_zip), which medseg does not "
    "install (its checkpoints are pickled): install it with "
    "nnUNetv2_install_pretrained_model_from_zip and pass the results folder to "
    "'medseg predict -m', or ask for a medseg package ('medseg export-model')"
)


def check_name(name: str, where: str, fix: str) -> str:
    """``name`` if it is a plain folder name (it becomes one on install)."""
    if not _NAME.match(name) or name in (".", ".."):
        raise PackageError(
            f"{where}: model name {name!r} is not a plain folder name (letters, digits, "
            f"'.', '_', '-'); {fix}"
        )
    return name


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be extracted (pure), or None."""
    name = info.filename
    parts = name.split("/")
    if name.startswith("/") or _DRIVE.match(name):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in its name"
    if ".." in parts or "." in parts or "" in parts[:-1] or "\x00" in name:
        return "a name that leaves the package folder ('..', '.' or an empty part)"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if info.is_dir() or kind not in (0, stat.S_IFREG):
        return "not a regular file"
    if name.lower().endswith(PICKLED):
        return "a pickled file (medseg never unpickles: weights must be safetensors)"
    return None


def open_package(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise PackageError(f"{zip_path}: file not found; check the path") from None
    except IsADirectoryError:
        raise PackageError(f"{zip_path}: a folder, not a model package (.zip)") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PackageError(
            f"{zip_path}: not a zip file ({e}); a model package is made by 'medseg export-model'"
        ) from e


def _check_members(infos: list, where: Path, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """Names, types and total size of every member (nothing is read yet)."""
    by_name: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        problem = member_problem(info)
        if problem is None and info.filename in by_name:
            problem = "a second member of the same name"
        if problem:
            raise PackageError(f"{where}: member {info.filename!r}: {problem}; {UNSAFE}")
        total += info.file_size
        if total > max_bytes:
            raise PackageError(
                f"{where}: member {info.filename!r}: the members' uncompressed size reaches "
                f"{total} bytes, over the limit of {max_bytes} (a zip bomb?); nothing was "
                "extracted. If the model really is this large, raise the limit (--max-size)"
            )
        by_name[info.filename] = info
    return by_name


def _read_record(zf: zipfile.ZipFile, by_name: dict, where: Path) -> dict:
    info = by_name.get(PACKAGE_JSON)
    if info is None:
        raise PackageError(
            f"{where}: no {PACKAGE_JSON}: not a medseg model package; make one with "
            "'medseg export-model MODEL_DIR -o model.zip'"
        )
    if info.file_size > MAX_RECORD_BYTES:
        raise PackageError(f"{where}: member {PACKAGE_JSON!r}: too large to be a record; {UNSAFE}")
    try:
        record = json.loads(zf.read(info).decode("utf-8"))
    except (ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise PackageError(f"{where}: member {PACKAGE_JSON!r}: unreadable ({e}); {UNSAFE}") from e
    return check_record(record, f"{where}: member {PACKAGE_JSON!r}")


def check_record(record: object, where: str) -> dict:
    """A package.json record of a known schema version, with a well-formed file list."""
    if not isinstance(record, dict) or record.get("schema") != PACKAGE_SCHEMA[0]:
        raise PackageError(f"{where}: not a medseg package record; {UNSAFE}")
    version = record.get("schema_version")
    if version not in KNOWN_VERSIONS:
        raise PackageError(
            f"{where}: schema version {version!r} is not one this medseg {__version__} reads "
            f"({', '.join(map(str, KNOWN_VERSIONS))}); upgrade medseg, or ask for a package "
            "made by this version"
        )
    files = record.get("files")
    good = isinstance(files, list) and all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and isinstance(f.get("size"), int)
        and _HEX64.match(str(f.get("sha256")))
        for f in files
    )
    if not good or not isinstance(record.get("name"), str):
        raise PackageError(f"{where}: name or files (path, size, sha256) malformed; {UNSAFE}")
    check_name(record["name"], where, UNSAFE)
    return record


def inspect_package(zf: zipfile.ZipFile, where: Path, max_bytes: int) -> tuple[dict, dict]:
    """Every check short of reading the members' data: the record, and members by name."""
    names = zf.namelist()
    if PACKAGE_JSON not in names and any(n.endswith((".pth", "dataset.json")) for n in names):
        raise PackageError(f"{where}: {NNUNET_ZIP}")
    by_name = _check_members(zf.infolist(), where, max_bytes)
    record = _read_record(zf, by_name, where)
    listed = {f["path"]: f for f in record["files"]}
    for name in by_name:
        if name != PACKAGE_JSON and name not in listed:
            raise PackageError(f"{where}: member {name!r}: not listed in {PACKAGE_JSON}; {UNSAFE}")
    for name, entry in listed.items():
        if name not in by_name:
            raise PackageError(f"{where}: member {name!r}: listed but missing; {UNSAFE}")
        if by_name[name].file_size != entry["size"]:
            raise PackageError(
                f"{where}: member {name!r}: {by_name[name].file_size} bytes, listed as "
                f"{entry['size']}; {UNSAFE}"
            )
    for needed in ("model.json", "plans.json"):
        if needed not in listed:
            raise PackageError(f"{where}: no member {needed!r}: not a model package; {UNSAFE}")
    return record, by_name


def stream_member(zf, info, entry: dict, where: Path, sink: Callable[[bytes], object]) -> None:
    """Read one member to ``sink``, checking its size and SHA-256 against ``entry``."""
    digest, size = hashlib.sha256(), 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > entry["size"]:
                    break
                digest.update(chunk)
                sink(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise PackageError(f"{where}: member {info.filename!r}: damaged ({e}); {UNSAFE}") from e
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise PackageError(
            f"{where}: member {info.filename!r}: SHA-256 or size differs from {PACKAGE_JSON} "
            f"(the file was changed or damaged); {UNSAFE}"
        )
