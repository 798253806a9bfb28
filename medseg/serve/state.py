"""The queue of ``medseg serve``: series and deliveries in SQLite (WAL), in the spool.

States of a series (one row per SeriesInstanceUID)::

    receiving --quiet_seconds without an instance--> complete (a route matched)
                                                  \\-> ignored  (no route)
    complete --worker claims it--> processing --outputs written--> done
                                              \\--prediction failed--> failed
    done / failed / ignored --a NEW instance arrives--> receiving, run + 1
    processing --a new instance arrives--> processing, then receiving (run + 1) when done

Every transition is one committed transaction (``synchronous=FULL``). When a run's
outputs are written, its deliveries (one row per destination and file) are inserted
in the same transaction that marks the series done; a delivery goes pending ->
delivered (or failed after ``retry.max_attempts``). After a crash, :func:`recover`
puts each ``processing`` series back to ``complete``: its run's outputs were never
delivered (no delivery rows existed), so it is predicted again and delivered once.

DICOMweb sources: ``sources`` holds each source's polls (last success, last error,
the StudyDate window asked), ``remote_series`` each series fetched from a source and
how many of its instances (a series is fetched again only when the server reports
more instances than were fetched).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from medseg.serve.config import Retry, Route, SeriesAttributes, match_route

SCHEMA_VERSION = 1
STATES = ("receiving", "complete", "processing", "done", "failed", "ignored")
DELIVERY_STATES = ("pending", "delivered", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY, study TEXT NOT NULL, state TEXT NOT NULL,
    run INTEGER NOT NULL DEFAULT 1, attempts INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0, again INTEGER NOT NULL DEFAULT 0,
    first_instance_time REAL NOT NULL, last_instance_time REAL NOT NULL,
    modality TEXT, body_part TEXT, description TEXT, image_type TEXT,
    route TEXT, model TEXT, error TEXT, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_instance_time);
CREATE TABLE IF NOT EXISTS instances (
    sop TEXT PRIMARY KEY, series TEXT NOT NULL, path TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, series TEXT NOT NULL, run INTEGER NOT NULL,
    destination TEXT NOT NULL, file TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, error TEXT,
    delivered REAL, UNIQUE (series, run, destination, file));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_try);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY, polls INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, study_dates TEXT, last_poll REAL, last_success REAL,
    last_error TEXT, last_error_time REAL);
CREATE TABLE IF NOT EXISTS remote_series (
    source TEXT NOT NULL, uid TEXT NOT NULL, study TEXT NOT NULL, remote_instances INTEGER,
    fetched_instances INTEGER NOT NULL, fetches INTEGER NOT NULL DEFAULT 0,
    first_fetch REAL NOT NULL, last_fetch REAL NOT NULL, PRIMARY KEY (source, uid));
"""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: :func:`transaction`)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = sqlite3.Row
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` if the body raises)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def record_instance(
    conn, sop: str, series: str, study: str, attrs: SeriesAttributes, path: Path, now: float
) -> str:
    """Record a received (already written) instance. Returns what it was: ``duplicate``
    (this SOPInstanceUID is known: nothing changes), ``new`` (a first or further instance
    of a series still receiving), or ``new run`` (a new instance of a series already
    done, failed or ignored: it is received again, run + 1)."""
    with transaction(conn):
        known = conn.execute("SELECT 1 FROM instances WHERE sop = ?", (sop,)).fetchone()
        if known:
            return "duplicate"
        conn.execute("INSERT INTO instances VALUES (?, ?, ?, ?)", (sop, series, str(path), now))
        row = conn.execute("SELECT state FROM series WHERE uid = ?", (series,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO series (uid, study, state, instances, first_instance_time, "
                "last_instance_time, modality, body_part, description, image_type, updated) "
                "VALUES (?, ?, 'receiving', 1, ?, ?, ?, ?, ?, ?, ?)",
                (series, study, now, now, attrs.modality, attrs.body_part,
                 attrs.description, "\\".join(attrs.image_type), now),
            )  # fmt: skip
            return "new"
        state = row["state"]
        update = "instances = instances + 1, last_instance_time = ?, updated = ?"
        if state == "processing":
            update += ", again = 1"
        elif state in ("done", "failed", "ignored"):
            update += ", state = 'receiving', run = run + 1, attempts = 0, error = NULL"
        elif state == "complete":
            update += ", state = 'receiving'"
        conn.execute(f"UPDATE series SET {update} WHERE uid = ?", (now, now, series))
        return "new run" if state in ("done", "failed", "ignored") else "new"


def _attributes(row) -> SeriesAttributes:
    image_type = tuple(v for v in (row["image_type"] or "").split("\\") if v)
    return SeriesAttributes(
        row["modality"] or "", row["body_part"] or "", row["description"] or "", image_type
    )


def complete_quiet(conn, now: float, quiet: float, routes: tuple[Route, ...]) -> list[tuple]:
    """Series quiet for ``quiet`` seconds become complete (routed) or ignored.
    Returns ``(uid, state, route name)`` of each."""
    changed = []
    with transaction(conn):
        rows = conn.execute(
            "SELECT * FROM series WHERE state = 'receiving' AND last_instance_time <= ?",
            (now - quiet,),
        ).fetchall()
        for row in rows:
            route = match_route(routes, _attributes(row), row["instances"])
            state = "complete" if route else "ignored"
            conn.execute(
                "UPDATE series SET state = ?, route = ?, model = ?, updated = ? WHERE uid = ?",
                (state, route and route.name, route and route.model, now, row["uid"]),
            )
            changed.append((row["uid"], state, route and route.name))
    return changed


def claim_next(conn, now: float):
    """The oldest complete series, now ``processing`` (attempts + 1), or None."""
    with transaction(conn):
        row = conn.execute(
            "SELECT * FROM series WHERE state = 'complete' ORDER BY last_instance_time LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE series SET state = 'processing', attempts = attempts + 1, updated = ? "
            "WHERE uid = ?",
            (now, row["uid"]),
        )
    return conn.execute("SELECT * FROM series WHERE uid = ?", (row["uid"],)).fetchone()


def instance_files(conn, series: str) -> list[Path]:
    rows = conn.execute("SELECT path FROM instances WHERE series = ? ORDER BY sop", (series,))
    return [Path(r["path"]) for r in rows]


def _end_state(conn, series: str, run: int, state: str, error: str | None, now: float) -> None:
    row = conn.execute("SELECT again FROM series WHERE uid = ?", (series,)).fetchone()
    if row["again"]:  # instances came during the run: receive the series again
        conn.execute(
            "UPDATE series SET state = 'receiving', run = run + 1, again = 0, attempts = 0, "
            "error = ?, updated = ? WHERE uid = ? AND run = ?",
            (error, now, series, run),
        )
    else:
        conn.execute(
            "UPDATE series SET state = ?, error = ?, updated = ? WHERE uid = ? AND run = ?",
            (state, error, now, series, run),
        )


def finish(conn, series: str, run: int, deliveries: list[tuple[str, str]], now: float) -> None:
    """One transaction: the run's deliveries (``(destination, file)``) and the series done."""
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO deliveries (series, run, destination, file, state, next_try) "
            "VALUES (?, ?, ?, ?, 'pending', ?)",
            [(series, run, dest, file, now) for dest, file in deliveries],
        )
        _end_state(conn, series, run, "done", None, now)


def fail(conn, series: str, run: int, error: str, now: float) -> None:
    with transaction(conn):
        _end_state(conn, series, run, "failed", error, now)


def recover(conn, max_attempts: int, now: float) -> dict[str, int]:
    """After a crash: series left ``processing`` go back to ``complete`` (or ``failed``
    once they have been tried ``max_attempts`` times: a series that kills the service
    must not kill it forever). Returns counts."""
    with transaction(conn):
        failed = conn.execute(
            "UPDATE series SET state = 'failed', error = 'the service stopped during its "
            "prediction too many times', updated = ? WHERE state = 'processing' "
            "AND attempts >= ?",
            (now, max_attempts),
        ).rowcount
        again = conn.execute(
            "UPDATE series SET state = 'complete', updated = ? WHERE state = 'processing'",
            (now,),
        ).rowcount
    return {"requeued": again, "failed": failed}


def due_deliveries(conn, now: float, limit: int = 20) -> list:
    return conn.execute(
        "SELECT d.*, s.study FROM deliveries d JOIN series s ON s.uid = d.series "
        "WHERE d.state = 'pending' AND d.next_try <= ? ORDER BY d.id LIMIT ?",
        (now, limit),
    ).fetchall()


def delivered(conn, delivery: int, now: float) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, "
            "delivered = ?, error = NULL WHERE id = ?",
            (now, delivery),
        )


def delivery_failed(conn, delivery: int, error: str, retry: Retry, now: float) -> str:
    """Count a failed try: pending again after the back-off, or failed for good."""
    with transaction(conn):
        row = conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery,)).fetchone()
        attempts = row["attempts"] + 1
        state = "failed" if attempts >= retry.max_attempts else "pending"
        conn.execute(
            "UPDATE deliveries SET state = ?, attempts = ?, error = ?, next_try = ? WHERE id = ?",
            (state, attempts, error, now + retry.delay(attempts), delivery),
        )
    return state


def summary(conn, last: int = 10) -> dict:
    """The queue at a glance: series and deliveries by state, the last results, failures."""
    by_state = dict.fromkeys(STATES, 0)
    for row in conn.execute("SELECT state, COUNT(*) AS n FROM series GROUP BY state"):
        by_state[row["state"]] = row["n"]
    deliveries = dict.fromkeys(DELIVERY_STATES, 0)
    for row in conn.execute("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state"):
        deliveries[row["state"]] = row["n"]
    columns = "uid, study, state, run, attempts, instances, route, error, updated"
    recent = conn.execute(
        f"SELECT {columns} FROM series WHERE state = 'done' ORDER BY updated DESC LIMIT ?",
        (last,),
    )
    failures = conn.execute(
        f"SELECT {columns} FROM series WHERE state = 'failed' ORDER BY updated DESC LIMIT ?",
        (last,),
    )
    problems = conn.execute(
        "SELECT series, run, destination, file, state, attempts, error, next_try "
        "FROM deliveries WHERE state != 'delivered' AND attempts > 0 ORDER BY id LIMIT ?",
        (last,),
    )
    pending = conn.execute(
        "SELECT destination, COUNT(*) AS n FROM deliveries WHERE state = 'pending' "
        "GROUP BY destination ORDER BY destination"
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "time": time.time(),
        "series": by_state,
        "deliveries": deliveries,
        "last_done": [dict(r) for r in recent],
        "failed": [dict(r) for r in failures],
        "delivery_problems": [dict(r) for r in problems],
        "pending_by_destination": {r["destination"]: r["n"] for r in pending},
        "sources": _sources(conn),
    }


def _sources(conn) -> list[dict]:
    """Each DICOMweb source's polls and series fetched ([] for a queue made before them)."""
    known = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sources'").fetchone()
    if not known:
        return []
    rows = conn.execute(
        "SELECT s.*, (SELECT COUNT(*) FROM remote_series r WHERE r.source = s.name) "
        "AS series_fetched FROM sources s ORDER BY s.name"
    )
    return [dict(r) for r in rows]


def poll_recorded(conn, source: str, now: float, dates: str, error: str | None = None) -> int:
    """Record one poll of ``source`` (``error`` None: it succeeded). Returns how many
    polls in a row have failed (0 after a success)."""
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO sources (name) VALUES (?)", (source,))
        if error is None:
            conn.execute(
                "UPDATE sources SET polls = polls + 1, failures = 0, study_dates = ?, "
                "last_poll = ?, last_success = ? WHERE name = ?",
                (dates, now, now, source),
            )
        else:
            conn.execute(
                "UPDATE sources SET polls = polls + 1, failures = failures + 1, study_dates = ?, "
                "last_poll = ?, last_error = ?, last_error_time = ? WHERE name = ?",
                (dates, now, error, now, source),
            )
        row = conn.execute("SELECT failures FROM sources WHERE name = ?", (source,)).fetchone()
    return row["failures"]


def source_polls(conn, source: str) -> tuple[float | None, int]:
    """``(last_success, failures)`` of ``source``: when it was last polled successfully
    (epoch seconds, None if never) and how many polls have failed since."""
    row = conn.execute(
        "SELECT last_success, failures FROM sources WHERE name = ?", (source,)
    ).fetchone()
    return (row["last_success"], row["failures"]) if row else (None, 0)


def fetched_counts(conn, source: str) -> dict[str, int]:
    """SeriesInstanceUID -> instances fetched, for every series fetched from ``source``."""
    rows = conn.execute(
        "SELECT uid, fetched_instances FROM remote_series WHERE source = ?", (source,)
    )
    return {r["uid"]: r["fetched_instances"] for r in rows}


def series_fetched(
    conn, source: str, uids: tuple[str, str], counts: tuple[int | None, int], now: float
) -> None:
    """Record a finished fetch of series ``uids`` (study, series) from ``source``:
    ``counts`` is (instances the server reported, instances now fetched)."""
    (study, series), (remote, fetched) = uids, counts
    with transaction(conn):
        conn.execute(
            "INSERT INTO remote_series (source, uid, study, remote_instances, "
            "fetched_instances, fetches, first_fetch, last_fetch) VALUES (?, ?, ?, ?, ?, 1, ?, ?) "
            "ON CONFLICT (source, uid) DO UPDATE SET remote_instances = excluded.remote_instances, "
            "fetched_instances = excluded.fetched_instances, fetches = fetches + 1, "
            "last_fetch = excluded.last_fetch",
            (source, series, study, remote, fetched, now, now),
        )
