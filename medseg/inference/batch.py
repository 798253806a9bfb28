"""Batch prediction for hospital folders: many inputs, a manifest, no stop on a bad case.

Inputs are volume files (NIfTI, NRRD, MHA), the channel files of a case in the
nnU-Net layout (:mod:`medseg.inference.inputs`; read and stacked in channel order,
each on channel 0's voxel grid), DICOM series folders, or folders holding many
studies (every DICOM series found recursively is a case). Each case is read,
passed through the sanity gate (:mod:`medseg.inference.gate`), predicted and
written atomically; a case that fails (unreadable, a channel file missing or on
another grid, refused by the gate, too large for memory) is recorded in the
manifest and the batch goes on. ``OUTDIR/manifest.jsonl`` gets one line per case
and run: input (the volume file, channel 0's file, or the DICOM folder), inputs
(every file of the case, in channel order), outputs (absolute paths), status,
error, findings (the gate's refusals and warnings), seconds per stage, and with
``statistics`` each structure's volume and voxel count. An
existing file in OUTDIR that medseg did not write is never overwritten: that case
fails instead.

With one worker (the default) the cases go through a pipeline
(:mod:`medseg.inference.prefetch`): the next case is read and gated in a reader
thread and the previous one's outputs written in a writer thread while a case is
predicted. Its queues are bounded, one case read ahead and one being written, and
their memory counts against the machine: at the peak one image and one label map
more than one case at a time. ``--max-memory`` plans each prediction from the
memory the process holds as it starts, which counts the case being written but not
all of the one still being read: leave room for one more image. The manifest gets
the same records in the same order, each stage timed in the thread that did it.
With ``workers > 1`` worker processes take whole cases instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medseg.core.layout import PredictionDir
from medseg.core.options import OutputFormat
from medseg.inference.inputs import CaseInput, outputs_for
from medseg.inference.prefetch import CaseJob, case_stages, run_pipelined
from medseg.inference.reports import check_statistics_table, table_claim, write_statistics_table

log = logging.getLogger(__name__)

__all__ = ["BatchResult", "BatchSettings", "WorkerModel", "run_batch"]


@dataclass(frozen=True)
class BatchSettings:
    """What to write, whether to skip finished cases, and how many cases at once.

    ``statistics``: also each case's measurements (``CASE.statistics.json`` and ``.csv``)
    and the batch table ``statistics.csv``; ``preview``: also ``CASE.preview.png``
    (:mod:`medseg.inference.reports`). Either keeps each case's image in memory until
    its outputs are written (one image more at the peak).

    With ``workers > 1`` each worker process loads the model once and takes cases
    in turn, the CPU cores shared out among them (on CPU, several single-threaded
    cases at once use the cores better than one case on all of them).
    """

    formats: tuple[OutputFormat, ...] = (OutputFormat.NIFTI, OutputFormat.DICOM_SEG)
    skip_existing: bool = False
    workers: int = 1
    statistics: bool = False
    preview: bool = False


@dataclass
class BatchResult:
    records: list[dict] = field(default_factory=list)


def owned_outputs(out: Path) -> frozenset[str]:
    """Files in ``out`` that medseg predict wrote or is writing: claimed in the ledger and
    not released (a failed case releases its paths), or outputs of finished cases in the
    manifest (folders written before the ledger existed)."""
    owned: set[str] = set()
    folder = PredictionDir(out)
    if folder.manifest.is_file():
        for line in folder.manifest.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed run
            if isinstance(record, dict) and record.get("status") in ("ok", "skipped"):
                owned.update(record.get("outputs", {}).values())
    if folder.claims.is_file():
        for line in folder.claims.read_text("utf-8").splitlines():
            if line.startswith("-"):
                owned.discard(line[1:])
            elif line:
                owned.add(line.removeprefix("+"))
    return frozenset(owned)


def _ledger(out: Path, paths: dict[str, Path], sign: str) -> None:
    """Claim (``+``) or release (``-``) ``paths`` in the ledger, one durable line each."""
    with open(PredictionDir(out).claims, "a", encoding="utf-8") as ledger:
        ledger.write("".join(f"{sign}{p.resolve()}\n" for p in paths.values()))
        ledger.flush()
        os.fsync(ledger.fileno())


def _foreign(paths: dict[str, Path], owned: frozenset[str]) -> str | None:
    """Why ``paths`` may not be written: an existing file medseg did not write."""
    taken = [p for p in paths.values() if p.exists() and str(p.resolve()) not in owned]
    if not taken:
        return None
    return (
        f"{taken[0]}: exists and was not written by medseg predict (not in manifest.jsonl); "
        "medseg never overwrites it. Move it away or choose another output folder."
    )


def _start(case: CaseInput, out: Path, settings, run_id, owned: frozenset[str]) -> CaseJob:
    """The case's record so far: decided already (skipped, or failed before anything is
    read), or to run, its outputs then claimed in the ledger."""
    paths = outputs_for(
        case, out, settings.formats, statistics=settings.statistics, preview=settings.preview
    )
    record = {
        "run": run_id,
        "case_id": case.case_id,
        "input": str(case.path.resolve()),
        "inputs": [str(p.resolve()) for p in case.files],
        "series_uid": case.series_uid,
        "outputs": {k: str(v.resolve()) for k, v in paths.items()},
    }
    foreign = _foreign(paths, owned)
    if case.problem:  # known before reading (a missing channel file): nothing is read
        log.warning("%s failed: %s", case.case_id, case.problem)
        record.update(status="failed", error=case.problem)
    elif foreign:
        record.update(status="failed", error=foreign)
    elif settings.skip_existing and paths and all(p.exists() for p in paths.values()):
        record.update(status="skipped", error=None)
    else:
        _ledger(out, paths, "+")  # before writing: a killed run's files stay medseg's
        return CaseJob(case, paths, record, claimed=True)
    return CaseJob(case, paths, record)


def _finish(out: Path, job: CaseJob) -> dict:
    """The case's manifest record, once its last stage is done."""
    record = job.record
    if job.pending:
        record.update(status="ok", error=None)
    elif record["status"] == "failed" and job.claimed:
        _ledger(out, job.paths, "-")  # its files are gone: the names are free again
    record["findings"] = job.notes.pop("findings", [])
    record["seconds"] = {k: round(v, 3) for k, v in job.notes.items()}
    job.image = job.series = job.label = None
    return record


def _case_record(bundle, case, out, options, settings, run_id, progress, owned=frozenset()):
    """Predict (or skip) one case, stage after stage, and describe what happened."""
    job = _start(case, out, settings, run_id, owned)
    stages = case_stages(bundle, options, progress)
    if job.pending and stages.read(job) and stages.predict(job):
        stages.write(job)
    return _finish(out, job)


@dataclass(frozen=True)
class WorkerModel:
    """How a worker process loads the model: folder, folds, and OpenVINO IR if converted."""

    path: Path
    folds: list | None = None
    openvino: dict | None = None


_worker: dict = {}  # the model a pool worker process loaded once (a per-process resource)


def _init_worker(model: WorkerModel, device: str, threads: int) -> None:
    import torch

    from medseg.inference.bundle import load_model

    torch.set_num_threads(threads)
    bundle = load_model(model.path, device, model.folds)
    if model.openvino:
        from medseg.inference.engines import use_openvino

        use_openvino(bundle, model.openvino, threads)
    _worker["bundle"] = bundle


def _worker_case(args) -> dict:
    case, out, options, settings, run_id, owned = args
    return _case_record(_worker["bundle"], case, out, options, settings, run_id, None, owned)


def _pool_records(cases, out, options, settings, run_id, model, owned):
    """Records of ``cases`` as they finish in ``settings.workers`` worker processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(settings.workers, len(cases))
    threads = max(1, (os.cpu_count() or 1) // workers)
    init = (model, str(options.device), threads)
    context = multiprocessing.get_context("spawn")  # no fork after torch set up its threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=init
    ) as pool:
        jobs = [
            pool.submit(_worker_case, (c, out, options, settings, run_id, owned)) for c in cases
        ]
        for job in as_completed(jobs):
            yield job.result()


def run_batch(
    bundle,
    cases: list[CaseInput],
    out: Path,
    options,
    settings: BatchSettings = BatchSettings(),
    *,
    unusable: list[dict] = (),
    on_case: Callable[[dict], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    model: WorkerModel | None = None,
) -> BatchResult:
    """Predict every case, appending one manifest line per case; never stop on a bad case.

    ``unusable`` are inputs :func:`~medseg.inference.inputs.discover_inputs` could not
    use; they are recorded as failed so the manifest accounts for every input given.
    ``model`` lets worker processes load the model themselves when ``settings.workers > 1``;
    otherwise cases go through this process's pipeline (:mod:`medseg.inference.prefetch`):
    the next case is read and the previous one written while one is predicted.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.statistics:  # the batch table: never over a file medseg did not write
        check_statistics_table(out, owned_outputs(out))
        _ledger(out, table_claim(out), "+")
    run_id = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = BatchResult()
    with open(PredictionDir(out).manifest, "a", encoding="utf-8") as manifest:
        for bad in unusable:
            record = {
                "run": run_id,
                "case_id": None,
                "input": bad["input"],
                "inputs": [bad["input"]],
                "series_uid": None,
                "outputs": {},
                "status": "failed",
                "error": bad["error"],
                "findings": [],
                "seconds": {},
            }
            _append(manifest, record)
            result.records.append(record)

        def emit(record: dict) -> None:
            _append(manifest, record)
            result.records.append(record)
            if on_case:
                on_case(record)

        owned = owned_outputs(out)
        if settings.workers > 1 and len(cases) > 1 and model is not None:
            for record in _pool_records(cases, out, options, settings, run_id, model, owned):
                emit(record)
        else:
            jobs = (_start(case, out, settings, run_id, owned) for case in cases)
            stages = case_stages(bundle, options, progress)
            run_pipelined(jobs, stages, lambda job: emit(_finish(out, job)))
    if settings.statistics:
        write_statistics_table(out)
    return result


def _append(manifest, record: dict) -> None:
    """One durable manifest line (flushed and synced: it survives a killed batch)."""
    manifest.write(json.dumps(record) + "\n")
    manifest.flush()
    os.fsync(manifest.fileno())
