"""Model packages: a medseg model folder as one zip file, checked member by member.

A package (``medseg export-model``)::

    model.zip/package.json     what it holds: name, labels, channels and their modality,
                               the configurations used, the intended input (modality,
                               spacing), the cross-validation scores, and the size and
                               SHA-256 of every other member
    model.zip/model.json  plans.json  <configuration>/fold_<k>.safetensors (+ .json)

Nothing in a package is trusted before it is checked (:func:`verify_package`, with the
checks of :mod:`medseg.inference.package_check`): member names and types, the total
uncompressed size, the record's schema version, and each member against its listed
size and digest, with no member unlisted. Weights are safetensors: no member is ever
unpickled, and pickled files are refused outright.
:func:`install_package` extracts a checked package into a temporary folder beside its
target and renames it into place; :func:`cached_model` does so once per zip digest for
``medseg predict -m model.zip``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from medseg import __version__
from medseg.core.errors import MedsegError, ModelError, PackageError
from medseg.core.layout import ModelFolder
from medseg.core.plans import Plans
from medseg.core.records import stamp
from medseg.inference.gate import CT_NAMES, MR_NAMES
from medseg.inference.model_check import member_parts, read_model_folder
from medseg.inference.package_check import (
    CHUNK,
    DEFAULT_MAX_BYTES,
    PACKAGE_JSON,
    PACKAGE_SCHEMA,
    check_name,
    check_record,
    inspect_package,
    open_package,
    stream_member,
)
from medseg.io.atomic import STAMP_FILE, atomic_path
from medseg.io.guard import refuse_overlap

logger = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def modality_of(channel_name: str) -> str | None:
    """``CT`` or ``MR`` (the DICOM Modality) for a channel name the gate knows, else None."""
    name = channel_name.casefold()
    return "CT" if name in CT_NAMES else "MR" if name in MR_NAMES else None


def package_record(meta: dict, plans: Plans, files: list[dict], name: str) -> dict:
    """The package.json record of a checked model folder (pure).

    ``files``: ``{"path", "size", "sha256"}`` of every other member. Spacings are in mm,
    in the plans' processing order (RAS reversed, then ``transpose_forward``).
    """
    configurations: dict[str, dict] = {}
    for i, member in enumerate(meta["members"]):
        for _, part in member_parts(member, f"members[{i}]"):
            config = plans.configuration(part["configuration"])
            configurations[part["configuration"]] = {
                "folds": part["folds"],
                "spacing_mm": list(config.spacing),
                "patch_size": list(config.patch_size),
                "previous_stage": config.previous_stage,
            }
    modalities = [modality_of(c) for c in plans.channel_names]
    first = plans.configuration(meta["members"][0]["configuration"])
    median = plans.median_spacing
    record = {
        "name": name,
        "medseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset_name": plans.dataset_name,
        "labels": plans.labels.to_list(),
        "channel_names": list(plans.channel_names),
        "channel_modalities": modalities,
        "configurations": configurations,
        "intended_input": {
            "modality": modalities[0] if len(set(modalities)) == 1 else None,
            "channels": len(modalities),
            "spacing_mm": list(first.spacing),
            "median_spacing_mm": list(median) if median else None,
            "axes": "processing order (RAS reversed, then transpose_forward)",
            "transpose_forward": list(plans.transpose_forward),
        },
        "cross_validation": meta.get("cross_validation"),
        "files": files,
    }
    return stamp(record, PACKAGE_SCHEMA)


def folder_files(model_dir: Path) -> list[str]:
    """Every file of a model folder as a POSIX path relative to it, sorted; links refused."""
    names = []
    for path in sorted(Path(model_dir).rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise PackageError(
                f"{path}: not a regular file (a link or a device); packages hold plain files "
                "only: copy the file it points to into the folder instead"
            )
        if path.is_file() and rel not in (STAMP_FILE, PACKAGE_JSON):
            names.append(rel)
    return names


def export_package(
    model_dir: Path, zip_path: Path, *, name: str | None = None, force: bool = False
) -> dict:
    """Write the model folder ``model_dir`` as the package ``zip_path``; its record.

    The folder is checked first (as ``medseg predict`` loads it); the zip is written
    to a temporary file beside ``zip_path`` and renamed at the end. An existing
    ``zip_path`` is refused unless ``force``.
    """
    model_dir, zip_path = Path(model_dir), Path(zip_path)
    refuse_overlap([model_dir], zip_path, what="package")
    if zip_path.is_dir() or (zip_path.exists() and not force):
        raise PackageError(
            f"{zip_path}: exists; choose another name, or pass --force to replace it"
        )
    if not ModelFolder(model_dir).model_json.is_file():
        raise PackageError(
            f"{model_dir}: no model.json: not a medseg model folder (made by 'medseg export' "
            "or 'medseg select --model'); nnU-Net results folders are not packaged"
        )
    meta, plans = read_model_folder(model_dir)
    name = check_name(name or model_dir.resolve().name, str(model_dir), "pass --name")
    files = []
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for rel in folder_files(model_dir):
            files.append(_pack(zf, model_dir / rel, rel))
        record = package_record(meta, plans, files, name)
        text = json.dumps(record, indent=1) + "\n"
        zf.writestr(_zip_info(PACKAGE_JSON, zipfile.ZIP_DEFLATED), text)
    return record


def _zip_info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, datetime.now().timetuple()[:6])
    info.compress_type = compression
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def _pack(zf: zipfile.ZipFile, path: Path, rel: str) -> dict:
    """Copy one file into the zip, hashing the very bytes written."""
    digest, size = hashlib.sha256(), 0
    compression = zipfile.ZIP_STORED if rel.endswith(".safetensors") else zipfile.ZIP_DEFLATED
    info = _zip_info(rel, compression)
    with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
    return {"path": rel, "size": size, "sha256": digest.hexdigest()}


def verify_package(zip_path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Check a package whole (see the module docstring); its record. Extracts nothing."""
    zip_path = Path(zip_path)
    with open_package(zip_path) as zf:
        record, by_name = inspect_package(zf, zip_path, max_bytes)
        for entry in record["files"]:
            stream_member(zf, by_name[entry["path"]], entry, zip_path, lambda chunk: None)
    return record


def install_package(
    zip_path: Path,
    models_root: Path,
    *,
    name: str | None = None,
    replace: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Check ``zip_path`` and extract it to ``models_root/<name>`` (all or nothing).

    ``name`` defaults to the package's. Members are checked as they are extracted
    into a temporary folder beside the target, the model folder is checked as
    ``medseg predict`` loads it, then the folder is renamed into place. An existing
    install is refused unless ``replace`` (and only a model folder is ever replaced).
    """
    zip_path = Path(zip_path)
    with open_package(zip_path) as zf:
        record, by_name = inspect_package(zf, zip_path, max_bytes)
        name = check_name(name or record["name"], str(zip_path), "pass --name")
        target = Path(models_root) / name
        refuse_overlap([zip_path], target, replaces=True, what="install folder")
        if target.exists() and not replace:
            raise PackageError(_installed(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            _extract(zf, zip_path, record, by_name, tmp)
            _swap_in(tmp, target, replace)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _installed(target: Path) -> str:
    return (
        f"{target}: already installed; pass --force to replace it, or --name to install "
        "this package beside it"
    )


def _extract(zf, zip_path: Path, record: dict, by_name: dict, tmp: Path) -> None:
    for entry in record["files"]:
        dst = tmp.joinpath(*PurePosixPath(entry["path"]).parts)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "xb") as out:
            stream_member(zf, by_name[entry["path"]], entry, zip_path, out.write)
    (tmp / PACKAGE_JSON).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    try:
        read_model_folder(tmp)
    except ModelError as e:
        raise PackageError(f"{zip_path}: the model inside is not usable ({e})") from e
    os.chmod(tmp, 0o755)


def _swap_in(tmp: Path, target: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``target``; an existing model folder is replaced only if asked."""
    if target.exists():
        if not replace:
            raise PackageError(_installed(target))
        if not ModelFolder(target).model_json.is_file():
            raise PackageError(
                f"{target}: exists and is not a model folder; medseg replaces only model "
                "folders. Choose another --name, or move it away yourself"
            )
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:
        if target.exists():  # installed by another process meanwhile
            raise PackageError(_installed(target)) from None
        raise


def installed_problem(folder: Path) -> str | None:
    """Why an installed package folder is not intact (a file missing, resized or changed
    since it was extracted), or None."""
    try:
        text = (Path(folder) / PACKAGE_JSON).read_text(encoding="utf-8")
        record = check_record(json.loads(text), str(Path(folder) / PACKAGE_JSON))
    except (OSError, ValueError, MedsegError) as e:
        return f"{PACKAGE_JSON} unreadable ({e})"
    for entry in record["files"]:
        path = Path(folder).joinpath(*PurePosixPath(entry["path"]).parts)
        if not path.is_file() or path.is_symlink() or path.stat().st_size != entry["size"]:
            return f"{entry['path']} missing or of another size"
        if sha256_file(path) != entry["sha256"]:
            return f"{entry['path']} changed"
    return None


def cached_model(zip_path: Path, cache_root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """The model folder of a package, extracted once into ``cache_root/<zip digest>``.

    A cached folder is reused while its files match its package.json; a damaged one
    is extracted again.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        open_package(zip_path).close()  # the clear error for a missing path or a folder
    key = sha256_file(zip_path)[:32]
    target = Path(cache_root) / key
    replace = False
    if target.is_dir():
        problem = installed_problem(target)
        if problem is None:
            logger.info("%s: using the extracted model in %s", zip_path, target)
            return target
        logger.warning("%s: cached model damaged (%s); extracting again", target, problem)
        replace = True
    try:
        return install_package(zip_path, cache_root, name=key, replace=replace, max_bytes=max_bytes)
    except PackageError:
        if target.is_dir() and installed_problem(target) is None:  # another process won
            return target
        raise
