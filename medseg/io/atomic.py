"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.core.errors import MedsegError, OutputError


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.nrrd`` for ``a.nrrd``, ``''`` without one."""
    name = path.name
    for double in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(double):
            return name[-len(double) :]
    return path.suffix


def _read_umask() -> int:
    """The process umask, read once at import (setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it onto ``target`` on success.

    The temporary name keeps ``target``'s suffix so that writers which pick the
    format from the extension (nibabel, SimpleITK) behave. If the body raises,
    the temporary file is removed and ``target`` is left untouched. Parent
    folders are created.
    """
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{full_suffix(target)}", dir=target.parent
        )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(target):
            yield tmp_path
            # mkstemp creates 0600 files; give the result the permissions a plain open() would
            # (other accounts, e.g. a PACS sender, must be able to read outputs)
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """Report an operating-system error (no permission, disk full) against ``target``, the
    path the user chose, not the hidden temporary file beside it."""
    try:
        yield
    except OSError as e:
        unnamed = e.filename is None or Path(e.filename).name.startswith(f".{target.name}.")
        if isinstance(e, MedsegError) or e.errno is None or not unnamed:
            raise
        raise OSError(e.errno, e.strerror, str(target)) from e
        if e.filename is not None and Path(e.filename).name.startswith(f".{target.name}."):
            raise type(e)(e.errno, e.strerror, str(target)) from e
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


#: Hidden file naming what kind of output a folder made by :func:`atomic_dir` is.
STAMP_FILE = ".medseg-output.json"


def _replaceable(target: Path, kind: str, recognize: str | None) -> bool:
    """Whether ``target`` may be replaced: missing, empty, or an earlier output of ``kind``."""
    if not target.exists():
        return True
    if not target.is_dir():
        return False
    if not any(target.iterdir()):
        return True
    try:
        stamped = json.loads((target / STAMP_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        stamped = None
    return stamped == kind or (recognize is not None and (target / recognize).is_file())


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike, kind: str = "medseg output folder", recognize: str | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` on success.

    All or nothing for outputs made of many files (a model folder, a preprocessed
    dataset): if the body raises, the temporary folder is removed and ``target`` is
    left as it was. Folders left behind by a killed run (``.NAME.tmp-*``) are
    removed first. Parent folders are created.

    Nothing else is ever replaced: an existing ``target`` must be empty or an
    earlier output of the same ``kind`` (stamped in a hidden file, or holding the
    file ``recognize``, e.g. ``model.json``); otherwise :class:`OutputError`.
    """
    target = Path(target)
    if not _replaceable(target, kind, recognize):
        raise OutputError(
            f"{target}: exists and is not a {kind} written by medseg; medseg replaces only "
            "its own earlier outputs. Choose a new folder, or move this one away yourself."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        (tmp / STAMP_FILE).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; others must read it
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
