"""The spool folder of ``medseg serve``: where every received instance lands first.

Layout (every name below ``spool/`` comes from DICOM UIDs checked against the UID
grammar, never from names or descriptions)::

    spool/
      queue.sqlite                               the queue and state (medseg.serve.state)
      serve.lock                                 held by the running service
      logs/serve.log                             the service's log (no patient data)
      incoming/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received instances
      work/<SeriesUID>/<run>/                    hard links to one run's instances
      results/<SeriesUID>/<run>/                 medseg predict's outputs and manifest

An instance is written to a hidden temporary file beside its final name, synced,
renamed, and its folder synced: after a crash a file either is whole or is a
temporary file that the next start removes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medseg.core.errors import MedsegError

#: The DICOM UID grammar (PS3.5 9.1): dot-separated numbers, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX = 64
TEMP_PREFIX = ".incoming-"


class SpoolError(MedsegError, ValueError):
    """An instance cannot be placed in the spool (an invalid UID, a path outside it)."""


def valid_uid(uid: object) -> bool:
    """True for a string that follows the DICOM UID grammar and length."""
    return isinstance(uid, str) and len(uid) <= UID_MAX and bool(UID_PATTERN.fullmatch(uid))


def check_uid(uid: object, what: str) -> str:
    if not valid_uid(uid):
        raise SpoolError(
            f"{what} {str(uid)[:80]!r} is not a DICOM UID (digits and dots, at most "
            f"{UID_MAX} characters); the sender must fix the instance"
        )
    return uid


@dataclass(frozen=True)
class Spool:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "queue.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "serve.lock"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "serve.log"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def instance(self, study: str, series: str, sop: str) -> Path:
        """Where an instance goes; refuses anything but UIDs (no ``..``, ``/``, names)."""
        parts = (
            check_uid(study, "StudyInstanceUID"),
            check_uid(series, "SeriesInstanceUID"),
            check_uid(sop, "SOPInstanceUID") + ".dcm",
        )
        path = self.incoming.joinpath(*parts)
        if path.resolve().parent.parent.parent != self.incoming.resolve():
            raise SpoolError(f"{path}: would leave {self.incoming}; refused")  # belt and braces
        return path

    def work(self, series: str, run: int) -> Path:
        return self.root / "work" / check_uid(series, "SeriesInstanceUID") / str(int(run))

    def results(self, series: str, run: int) -> Path:
        return self.root / "results" / check_uid(series, "SeriesInstanceUID") / str(int(run))

    def make(self) -> None:
        for folder in (self.root, self.incoming, self.log.parent):
            folder.mkdir(parents=True, exist_ok=True)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def copy_durable(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically and durably."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sync_dir(target.parent)


def snapshot(files: list[Path], folder: Path) -> Path:
    """``folder`` holding exactly ``files`` (hard links, copies across file systems): what
    one run predicts, unchanged by instances that arrive meanwhile."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, folder / f.name)
        except OSError:
            shutil.copyfile(f, folder / f.name)
    return folder


def stray_files(spool: Spool) -> tuple[list[Path], list[Path]]:
    """``(instances, temporaries)`` below ``incoming/``: every whole instance file, and
    the temporary files a crash left."""
    instances, temps = [], []
    if spool.incoming.is_dir():
        for path in sorted(spool.incoming.glob("*/*/*")):
            (temps if path.name.startswith(TEMP_PREFIX) else instances).append(path)
    return instances, temps
