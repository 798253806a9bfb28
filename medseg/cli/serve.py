"""``medseg serve``: a DICOM node with its models loaded once."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from medseg.cli.console import add_command, out

HELP = (
    "run a DICOM node: receive series by C-STORE or DICOMweb, segment them, send the results back"
)
EPILOG = """\
medseg serve listens as a DICOM application entity (AE). A PACS sends it series by
C-STORE; each instance is written to the spool before it is acknowledged. A series
is complete when no instance came for quiet_seconds; the first route that matches
it (Modality, BodyPartExamined, SeriesDescription, number of instances, ImageType)
names the model, which was loaded once at start. One series is predicted at a time
(as 'medseg predict' does) and each result (DICOM-SEG, RTSTRUCT) is sent by
C-STORE to every destination (or copied to a folder), retried with back-off while
a destination is down. A series no route matches is ignored (logged by its UID).

DICOMweb: each of dicomweb_sources is polled every poll_seconds (QIDO-RS, by
StudyDate from 'since', later from the last good poll's date minus lookback_days);
each new series is fetched once by WADO-RS into the same spool (a series is fetched
again only if the server reports more instances), and is complete quiet_seconds
after its last instance, as if it came by C-STORE. A destination with a url gets
the results by STOW-RS. Credentials (username/password, or token) live in a YAML
file named by 'credentials', refused unless private (chmod 600), never in the URL.

Nothing is lost when the service is killed: at the next start a series that was
being predicted is predicted again, a result already delivered is not sent again,
and every acknowledged instance is in the spool. SIGTERM or Ctrl-C stops receiving,
finishes the series being predicted and exits 0 (a second signal exits at once;
that series is then predicted again at the next start). Logs, without patient
names or IDs, go to SPOOL/logs/serve.log and stderr.

Files under the spool are named by DICOM UIDs only: SPOOL/incoming/<StudyUID>/
<SeriesUID>/<SOPInstanceUID>.dcm, SPOOL/results/<SeriesUID>/<run>/, and the queue
SPOOL/queue.sqlite. A new instance of a series already done starts a new run (the
whole series is predicted again, run + 1); an instance received twice (same
SOPInstanceUID) is acknowledged and ignored.

CONFIG is a YAML file (relative paths are relative to it); print a commented example
with --example-config. Only the calling AE titles in allowed_callers may connect.

Examples:
  medseg serve --example-config > serve.yaml     then edit it
  medseg serve serve.yaml -v                      run until SIGTERM / Ctrl-C
  medseg serve serve.yaml --status                what is queued, done, failed;
                                                  sources' last poll, pending deliveries
  medseg serve serve.yaml --status --json         the same as JSON (schema_version 1)
"""


def add_parser(sub) -> None:
    p = add_command(sub, "serve", HELP, EPILOG, run)
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG", help="the YAML config")
    p.add_argument(
        "--status", action="store_true", help="show the queue of a (running) service and exit"
    )
    p.add_argument("--json", action="store_true", help="with --status: print JSON")
    p.add_argument("--example-config", action="store_true", help="print a commented example config")


def run(args: argparse.Namespace) -> int:
    from medseg.core.errors import UsageError
    from medseg.serve.config import EXAMPLE_CONFIG, load_config

    if args.example_config:
        out.print(EXAMPLE_CONFIG, end="", markup=False, highlight=False)
        return 0
    if args.config is None:
        raise UsageError("medseg serve needs CONFIG (see 'medseg serve --example-config')")
    config = load_config(args.config)
    if args.status:
        return _status(config, args.json)
    if args.verbose < 2:  # pynetdicom's INFO is one line per message exchanged
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return _serve(config)


def _status(config, as_json: bool) -> int:
    from medseg.serve.status import read_status

    summary = read_status(config.spool)
    if as_json:
        out.print(json.dumps(summary, indent=2), markup=False, highlight=False)
    else:
        _print_status(summary)
    return 0


def _print_status(summary: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    counts = ", ".join(f"{n} {state}" for state, n in summary["series"].items())
    sent = ", ".join(f"{n} {state}" for state, n in summary["deliveries"].items())
    out.print(f"series: {counts}\ndeliveries: {sent}", highlight=False)
    waiting = summary.get("pending_by_destination", {})
    if waiting:
        by_dest = ", ".join(f"{name} {n}" for name, n in waiting.items())
        out.print(f"pending by destination: {by_dest}", highlight=False, markup=False)
    sources = [_source_row(s) for s in summary.get("sources", [])]
    for title, rows, columns in (
        ("last results", summary["last_done"], ("uid", "run", "route", "instances")),
        ("failed series", summary["failed"], ("uid", "run", "attempts", "error")),
        ("deliveries not (yet) made", summary["delivery_problems"],
         ("series", "destination", "state", "attempts", "error")),
        ("DICOMweb sources", sources,
         ("name", "last_success", "polls", "failures", "series_fetched", "last_error")),
    ):  # fmt: skip
        if not rows:
            continue
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(str(row[c])) for c in columns))
        out.print(table)


def _source_row(source: dict) -> dict:
    """A source's status with its times readable (local time) and its error shortened."""
    import time

    row = dict(source)
    for key in ("last_success", "last_poll", "last_error_time"):
        value = row.get(key)
        row[key] = "never" if value is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                                time.localtime(value))  # fmt: skip
    row["last_error"] = (row.get("last_error") or "")[:120]
    return row


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("medseg.serve")
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))


def _serve(config) -> int:
    from medseg.serve.service import Service
    from medseg.serve.spool import Spool

    _log_to_file(Spool(config.spool).log)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():  # a second signal: leave now; the queue is safe as it is
            logging.getLogger("medseg.serve").warning("second signal: exiting at once")
            logging.shutdown()
            import os

            os._exit(0)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    service = Service(config)
    service.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0
