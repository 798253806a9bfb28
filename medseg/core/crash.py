"""Reports of unexpected internal errors: the traceback goes to a file, not the console.

A user never sees a traceback for something they caused (those are
:class:`~medseg.core.errors.MedsegError` messages). An error medseg did not
expect is a bug: its traceback is written to a file whose path the user is
given, to attach to a bug report.
"""

from __future__ import annotations

import os
import platform
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path


def write_crash_report(error: BaseException, what: str, folder: Path | None = None) -> Path:
    """Write ``error``'s traceback (and versions) to a new file; return its path.

    ``what`` says what was running (e.g. ``"medseg predict"``); ``folder``
    defaults to the system's temporary folder.
    """
    from medseg import __version__

    folder = Path(folder or tempfile.gettempdir())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"medseg-crash-{stamp}-", suffix=".txt", dir=folder)
    lines = [
        f"medseg {__version__}, Python {platform.python_version()}, {platform.platform()}",
        f"while running: {what}",
        "",
        *traceback.format_exception(type(error), error, error.__traceback__),
    ]
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(line.rstrip("\n") for line in lines) + "\n")
    return Path(name)


def internal_error_message(error: BaseException, report: Path) -> str:
    """What to tell the user about an unexpected error whose traceback is in ``report``."""
    return (
        f"internal error (a bug in medseg, not a problem with your input): "
        f"{type(error).__name__}: {error}. The traceback is in {report}; please send it "
        "with a bug report to the medseg developers (check first that it names no patient)."
    )
