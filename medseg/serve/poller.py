"""Polling DICOMweb sources: QIDO-RS finds new series, WADO-RS fetches their instances.

Window: a poll asks for the series (with the source's ``filters``) whose StudyDate
is on or after a lower bound, so it does not list the whole archive each time. The
first poll starts at ``since`` (default: ``lookback_days`` before today); later
polls start ``lookback_days`` before the date of the last successful poll, never
before ``since``. By date, not time: QIDO-RS matches StudyDate and StudyTime
separately, so the day of overlap (the default) covers a study begun before
midnight. A poll is successful only when its query and every fetch succeeded;
otherwise the window stays where it was, so a server down for days loses nothing.

Once: the queue remembers each series fetched from a source and how many instances
the server had (``remote_series``). A series already fetched is skipped, unless the
server now reports more instances (NumberOfSeriesRelatedInstances); then only the
instances whose SOPInstanceUID the queue does not know are retrieved. Each
instance takes the C-STORE receiver's own path (:func:`~medseg.serve.receiver.
accept_instance`: UIDs checked, durable write, recorded), so routing and processing
are the same.

Complete: as for C-STORE, a series is complete ``quiet_seconds`` after its last
instance was spooled (a fetch spools a series within seconds). Instances the server
gets later are fetched by a later poll and, as late C-STORE instances do, make a new
run of the series.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

from medseg.core.errors import MedsegError
from medseg.serve.config import DicomwebSource
from medseg.serve.dicomweb import RemoteSeries, instance_uids, retrieve, search_series
from medseg.serve.receiver import accept_instance
from medseg.serve.spool import Spool, SpoolError, valid_uid
from medseg.serve.state import fetched_counts, poll_recorded, series_fetched, source_polls

log = logging.getLogger(__name__)


class SourceError(MedsegError, ValueError):
    """A DICOMweb source answered something unusable (the message says what)."""


class _Stopped(Exception):
    """The service is stopping: leave the poll where it is (nothing is recorded)."""


def study_dates(source: DicomwebSource, last_ok: float | None, today: datetime.date) -> str:
    """The QIDO-RS StudyDate range (``YYYYMMDD-``) of the next poll. Pure."""
    since = datetime.datetime.strptime(source.since, "%Y%m%d").date() if source.since else None
    back = datetime.timedelta(days=source.lookback_days)
    if last_ok is None:
        start = since or today - back
    else:
        start = datetime.date.fromtimestamp(last_ok) - back
        start = max(start, since) if since else start
    return start.strftime("%Y%m%d") + "-"


def to_fetch(found: list[RemoteSeries], fetched: dict[str, int]) -> list[RemoteSeries]:
    """The series never fetched, or for which the server reports more instances than
    were fetched. Pure."""
    return [
        s
        for s in found
        if s.series not in fetched or (s.instances is not None and s.instances > fetched[s.series])
    ]


def fetch_series(
    source: str, client, spool: Spool, conn, remote: RemoteSeries, stop: Callable
) -> tuple[int, int]:
    """Retrieve every instance of ``remote`` the queue does not know. Returns (instances
    new to the queue, instances on the server). Raises what the server or the spool
    raised (the poll records it)."""
    known = {r["sop"] for r in conn.execute("SELECT sop FROM instances WHERE series = ?",
                                            (remote.series,))}  # fmt: skip
    uids = instance_uids(client, remote.study, remote.series)
    missing = [sop for sop in uids if sop not in known]
    what = (source, remote.series, len(missing), len(uids))
    log.info("source %s: series %s: fetching %d of its %d instances", *what)
    new = 0
    for sop in missing:
        if stop():
            raise _Stopped
        ds, encode = retrieve(client, remote.study, remote.series, sop)
        got = tuple(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID"))
        got += (str(ds.get("SOPInstanceUID", "")),)
        if got != (remote.study, remote.series, sop):
            raise SourceError(f"series {remote.series}: instance {sop} came back with other UIDs")
        try:
            new += accept_instance(spool, conn, got, ds, encode) != "duplicate"
        except SpoolError as e:  # kept out for good, like a refused C-STORE
            log.warning("series %s: instance refused: %s", remote.series, e)
    return new, len(uids)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:400]


def _fetch_all(source, client, spool: Spool, conn, todo, stop) -> list[str]:
    """Fetch each series of ``todo``; the errors (the others are fetched all the same)."""
    errors = []
    for remote in todo:
        if not (valid_uid(remote.study) and valid_uid(remote.series)):
            log.warning("source %s: a series with invalid UIDs was skipped", source.name)
            counts = (remote.instances, remote.instances or 0)
        else:
            started = time.monotonic()
            try:
                new, total = fetch_series(source.name, client, spool, conn, remote, stop)
            except _Stopped:
                raise
            except Exception as e:  # this series is fetched again next poll
                errors.append(f"series {remote.series}: {_describe(e)}")
                continue
            took = time.monotonic() - started
            what = (source.name, remote.series, new, took)
            log.info("source %s: series %s: %d new instances fetched in %.1f s", *what)
            counts = (remote.instances, total)
        series_fetched(conn, source.name, (remote.study, remote.series), counts, time.time())
    return errors


def poll_once(
    source: DicomwebSource, client, spool: Spool, conn, stop: Callable = lambda: False
) -> bool:
    """One poll of ``source``: query, fetch what is new, record the poll. True if it
    succeeded; a failure is recorded and logged (a warning the first time in a row)."""
    now = time.time()
    last_ok, failed_before = source_polls(conn, source.name)
    dates = study_dates(source, last_ok, datetime.date.today())
    try:
        found = search_series(client, {**dict(source.filters), "StudyDate": dates})
        todo = to_fetch(found, fetched_counts(conn, source.name))
        log.debug("source %s: %d series since %s, %d to fetch", source.name, len(found),
                  dates, len(todo))  # fmt: skip
        errors = _fetch_all(source, client, spool, conn, todo, stop)
    except _Stopped:
        return False
    except Exception as e:  # the server is down or answered an error: try again later
        errors = [_describe(e)]
    if not errors:
        poll_recorded(conn, source.name, now, dates)
        if failed_before:
            log.info("source %s: answering again after %d failed polls", source.name,
                     failed_before)  # fmt: skip
        return True
    failures = poll_recorded(conn, source.name, now, dates, "; ".join(errors))
    level = logging.WARNING if failures == 1 else logging.DEBUG
    log.log(level, "source %s: poll failed (will retry every %g s): %s", source.name,
            source.poll_seconds, errors[0])  # fmt: skip
    return False
