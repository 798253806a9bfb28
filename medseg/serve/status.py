"""What ``medseg serve --status`` reads: the queue, opened read-only.

A read-only SQLite connection in WAL mode never blocks the running service nor
changes anything in the spool.
"""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.serve.spool import Spool
from medseg.serve.state import connect, summary


class NoQueueError(MedsegError, FileNotFoundError):
    """The spool has no queue yet: the service never ran with it."""


def read_status(spool_root: Path, last: int = 10) -> dict:
    """The queue's summary (:func:`medseg.serve.state.summary`) for the spool."""
    database = Spool(Path(spool_root)).database
    if not database.is_file():
        raise NoQueueError(
            f"{database}: no queue yet; start the service once with 'medseg serve CONFIG'"
        )
    conn = connect(database, readonly=True)
    try:
        return summary(conn, last)
    finally:
        conn.close()
