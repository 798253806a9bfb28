"""What ``medseg predict --statistics`` and ``--preview`` add to each case, and the table.

Per case, beside its label map: ``CASE.statistics.json`` (a ``medseg.statistics``
record, :mod:`medseg.evaluation.statistics`), ``CASE.statistics.csv`` (one row per
structure) and ``CASE.preview.png`` (:mod:`medseg.evaluation.preview`), each written
atomically; they are outputs of the case like the others (listed in its manifest
record, removed if the case fails). The manifest record also gets a compact
``statistics`` field: per structure name, ``volume_ml`` and ``voxels``.

At the end of a batch, ``OUTDIR/statistics.csv`` (one row per case and structure)
is rebuilt from the per-case JSON files of every case whose latest manifest record
in this OUTDIR is ``ok`` or ``skipped``: cases predicted by earlier runs (resumed
with ``--skip-existing``) stay in it, cases that failed since leave it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from medseg.core.errors import MedsegError, OutputError, RecordError, ReportError
from medseg.core.layout import PredictionDir
from medseg.core.records import read_record
from medseg.inference.inputs import PREVIEW, STATISTICS, STATISTICS_CSV
from medseg.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

__all__ = ["check_statistics_table", "write_case_reports", "write_statistics_table"]


def is_hounsfield(series, channel_names) -> bool:
    """Whether channel 0 is CT in HU: a CT DICOM series, or a model whose channel 0 is CT."""
    if series is not None and getattr(series, "modality", ""):
        return str(series.modality).upper() == "CT"
    return bool(channel_names) and str(channel_names[0]).strip().upper() == "CT"


def write_case_reports(job, image, label, series, bundle) -> dict | None:
    """Write the case's measurements and preview if ``job.paths`` asks for them; return
    the compact statistics for its manifest record (None without ``--statistics``).

    Raises :class:`ReportError` naming the file (the case then fails like any other)."""
    from medseg.evaluation.statistics import structure_statistics, summary, write_statistics

    hounsfield = is_hounsfield(series, bundle.channel_names)
    compact = None
    if STATISTICS in job.paths:
        path = job.paths[STATISTICS]
        with _reported(path, "measure the structures"):
            record = structure_statistics(
                label,
                image,
                bundle.label_names,
                case_id=job.case.case_id,
                intensity_unit="HU" if hounsfield else "",
                lps=series is not None,
            )
            write_statistics(record, path, job.paths[STATISTICS_CSV])
        compact = summary(record)
    if PREVIEW in job.paths:
        from medseg.evaluation.preview import write_preview

        path = job.paths[PREVIEW]
        with _reported(path, "draw the preview picture"):
            write_preview(
                image,
                label,
                bundle.label_names,
                path,
                hounsfield=hounsfield,
                title=job.case.case_id,
            )
    return compact


@contextlib.contextmanager
def _reported(path: Path, what: str) -> Iterator[None]:
    """Turn an unexpected error while making ``path`` into a :class:`ReportError` naming
    it (errors medseg or the operating system raise already say what and where)."""
    try:
        yield
    except (MedsegError, OSError):
        raise
    except Exception as error:
        raise ReportError(
            f"{path}: could not {what} ({type(error).__name__}: {error}); the case's other "
            "outputs were removed with it. Run it again without --statistics/--preview to get "
            "its label map, and report this"
        ) from error


def check_statistics_table(out: Path, owned: frozenset[str]) -> None:
    """Before a batch with ``--statistics``: refuse an ``OUTDIR/statistics.csv`` that medseg
    did not write (it is never overwritten)."""
    table = PredictionDir(out).statistics_table
    if table.exists() and str(table.resolve()) not in owned:
        raise OutputError(
            f"{table}: exists and was not written by medseg predict (not in its ledger); "
            "--statistics writes the batch table there and never overwrites another file. "
            "Move it away or choose another output folder."
        )


def _latest_records(out: Path) -> dict[str, dict]:
    """The latest manifest record of each case id in ``out`` (in order of last appearance)."""
    latest: dict[str, dict] = {}
    manifest = PredictionDir(out).manifest
    if not manifest.is_file():
        return latest
    for line in manifest.read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(record, dict) and record.get("case_id"):
            latest.pop(record["case_id"], None)
            latest[record["case_id"]] = record
    return latest


def write_statistics_table(out: Path) -> int:
    """Rebuild ``OUTDIR/statistics.csv`` from the cases that succeeded in ``out``; the
    number of cases in it. Written atomically."""
    from medseg.evaluation.statistics import STATISTICS_SCHEMA, statistics_csv, statistics_rows

    rows, cases = [], 0
    for case_id, record in _latest_records(out).items():
        path = record.get("outputs", {}).get(STATISTICS)
        if record.get("status") not in ("ok", "skipped") or not path or not Path(path).is_file():
            continue
        try:
            rows += statistics_rows(read_record(path, STATISTICS_SCHEMA))
        except (RecordError, KeyError, TypeError) as e:
            log.warning("%s: left out of the statistics table: %s", case_id, e)
            continue
        cases += 1
    write_text_atomic(PredictionDir(out).statistics_table, statistics_csv(rows))
    return cases


def table_claim(out: Path) -> Mapping[str, Path]:
    """The batch table as a ledger entry (claimed before it is first written)."""
    return {"statistics-table": PredictionDir(out).statistics_table}
