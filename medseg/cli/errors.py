"""What the command line says when a command fails: one line, never a traceback.

Exit codes of every ``medseg`` command:

* 0: done;
* 1: the command ran but some cases failed or problems were found (``predict``
  batches, ``check``), each named in the output;
* 2: bad usage or input (a path, a permission, a full disk, a broken model
  folder, record or config): nothing was done, or what was done is intact;
* 3: an internal error (a bug): the traceback is in a file named in the message;
* 75: ``train`` stopped by SIGTERM/SIGUSR1 (a cluster's time limit or preemption) after
  writing its checkpoint: the same command with ``--resume`` continues it;
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno

from medseg.core.crash import internal_error_message, write_crash_report
from medseg.core.errors import MedsegError

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: try again (with --resume)
EXIT_INTERRUPTED = 130

#: What to do about common operating-system errors.
_OS_HINTS = {
    errno.EACCES: "check its permissions, or choose a folder you can write to",
    errno.EPERM: "check its permissions, or choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENOSPC: "the disk is full; free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.ENOENT: "check the path",
    errno.EEXIST: "a file is in the way; choose another name or move that file",
    errno.ENOTDIR: "a file stands where a folder is needed; check the path",
    errno.EISDIR: "a folder stands where a file is needed; check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def describe_os_error(error: OSError) -> str:
    """``PATH: what went wrong; what to do`` for an operating-system error."""
    where = error.filename if error.filename is not None else "(no path)"
    what = error.strerror or str(error)
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    hint = _OS_HINTS.get(error.errno)
    return f"{where}: {what.lower() if what[:1].isupper() else what}" + (
        f"; {hint}" if hint else ""
    )


def describe_error(error: BaseException, command: str) -> tuple[str, int]:
    """The one-line message and exit code for an error that ended ``command``."""
    if isinstance(error, MedsegError):
        return str(error), EXIT_INPUT
    if isinstance(error, OSError):
        return describe_os_error(error), EXIT_INPUT
    if isinstance(error, MemoryError):
        return (
            "out of memory; use a machine with more memory, or fewer processes or workers",
            EXIT_INPUT,
        )
    report = write_crash_report(error, f"medseg {command}")
    return internal_error_message(error, report), EXIT_INTERNAL
