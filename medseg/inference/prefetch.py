"""A three-stage pipeline for one-process batches: read ahead, predict, write behind.

:func:`run_pipelined` takes jobs (cases) in order through three stages: *read*
(read and check the input) in a reader thread, *predict* in the calling thread
(which has the model and all the cores), *write* (the outputs) in a writer thread.
While job ``i`` is predicted, job ``i + 1`` is read and job ``i - 1`` written:
reading and writing files (NIfTI, DICOM) is I/O and numpy/zlib work that releases
the GIL, so it runs beside the prediction almost for free.

Memory: the queues are bounded, at most one job read ahead and one being written.
At the peak, three cases are held at once: the one read ahead (its image), the one
being predicted (its image, the network's working memory) and the one being
written (its label map and, for DICOM, the series headers). A batch therefore
needs room for one image and one label map more than a strictly sequential run.
The prediction's memory plan (``--max-memory``) starts from the memory the process
holds when the prediction starts: that counts the label map being written, but not
all of the image still being read, which grows during the prediction.

Jobs finish in order: each is handed to ``emit`` after every job before it, so the
manifest keeps the order of the cases. A stage that fails ends its job there (the
stage functions catch and record the error themselves and return False); the
others go on. If the calling thread is interrupted (``KeyboardInterrupt``) or
crashes, the write in progress is finished and its job emitted before the
exception goes on: both threads are joined before :func:`run_pipelined` returns or
raises, so no output is left half-written by a thread still running.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

from medseg.core.crash import internal_error_message, write_crash_report
from medseg.core.errors import InputRefusedError, MedsegError
from medseg.core.options import OutputFormat
from medseg.inference.inputs import PREVIEW, STATISTICS, CaseInput

log = logging.getLogger(__name__)

__all__ = ["CaseJob", "Stages", "case_stages", "run_pipelined"]

J = TypeVar("J")


@dataclass(frozen=True)
class Stages(Generic[J]):
    """What happens to a job, stage by stage.

    ``runs(job)``: False for a job finished before reading (skipped, refused); it is
    only emitted, in its turn. ``read`` (reader thread) and ``predict`` (calling
    thread) return False when the job failed: it goes no further. ``write`` runs in
    the writer thread. Stage functions catch the errors of their job themselves.
    """

    runs: Callable[[J], bool]
    read: Callable[[J], bool]
    predict: Callable[[J], bool]
    write: Callable[[J], object]


def run_pipelined(jobs: Iterable[J], stages: Stages[J], emit: Callable[[J], None]) -> None:
    """Take ``jobs`` through ``stages``, reading one ahead and writing one behind; hand
    each finished job to ``emit``, in the order of ``jobs``.

    ``jobs`` is consumed lazily, one job ahead of the one being predicted (a job is
    made just before it is read, e.g. when its outputs are claimed).
    """
    pipeline = _Pipeline(iter(jobs), stages, emit)
    try:
        pipeline.run()
    except BaseException:
        pipeline.close()  # the write in progress ends whole ...
        pipeline.drain(wait=True)  # ... and its job is recorded
        raise
    finally:
        pipeline.close()


class _Pipeline(Generic[J]):
    """The reader and writer threads of one run and its two bounded queues."""

    def __init__(self, jobs: Iterator[J], stages: Stages[J], emit: Callable[[J], None]):
        self.jobs, self.stages, self.emit = jobs, stages, emit
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="medseg-read")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="medseg-write")
        #: jobs started, in order: at most one of them being read (or read, waiting)
        self.started: deque[tuple[J, Future | None]] = deque()
        #: jobs finished or being written, in order: at most one of them being written
        self.outbox: deque[tuple[J, Future | None]] = deque()

    def run(self) -> None:
        self.start_next_read()
        while self.started:
            job, reading = self.started.popleft()
            if reading is not None and reading.result():
                self.start_next_read()  # job i + 1 is read while job i is predicted
                self.drain(wait=False)
                if self.stages.predict(job):
                    self.drain(wait=True)  # the write of job i - 1 has ended
                    self.outbox.append((job, self.writer.submit(self.stages.write, job)))
                    continue
            else:  # nothing to do, or failed at read
                self.start_next_read()
            self.outbox.append((job, None))
            self.drain(wait=False)
        self.drain(wait=True)

    def start_next_read(self) -> None:
        """Start jobs until one is being read (or none is left); jobs that need no
        reading queue up before it, in order."""
        while not any(reading is not None for _, reading in self.started):
            job = next(self.jobs, None)
            if job is None:
                return
            runs = self.stages.runs(job)
            self.started.append((job, self.reader.submit(self.stages.read, job) if runs else None))

    def drain(self, *, wait: bool) -> None:
        """Emit the jobs at the front of the outbox that are finished (all of them,
        waiting for the write in progress, if ``wait``)."""
        while self.outbox:
            job, writing = self.outbox[0]
            if writing is not None and not (wait or writing.done()):
                return
            error = writing.exception() if writing is not None else None  # (waits)
            self.outbox.popleft()  # only now: an interrupted wait keeps the job here
            if error is not None:
                raise error  # the write stage catches its job's errors: this is a bug
            self.emit(job)

    def close(self) -> None:
        """Join both threads (a read not yet begun is dropped)."""
        self.reader.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True)


@dataclass
class CaseJob:
    """One case on its way through a batch: its manifest record (so far), its outputs,
    and what its stages made (``notes``: findings and seconds per stage; the image read
    and the label predicted, each dropped once used)."""

    case: CaseInput
    paths: dict[str, Path]
    record: dict
    notes: dict = field(default_factory=dict)
    claimed: bool = False  # its outputs claimed in the ledger: it is read, predicted, written
    image: object = None
    series: object = None
    label: object = None

    @property
    def pending(self) -> bool:
        """Whether the case is still to be read, predicted and written (not decided)."""
        return "status" not in self.record


def _read_case(bundle, job: CaseJob) -> None:
    """Read the case and pass it through the sanity gate (a refusal raises)."""
    from medseg.inference.gate import ModelFacts, enforce, scan_findings

    case = job.case
    image, series, header = _read_scan(case)
    modality = series.modality if series else None
    findings = scan_findings(image, ModelFacts.of(bundle), header=header, modality=modality)
    where = str(case.path)
    if len(case.channel_files) > 1:  # each message names its own file already
        findings, where = _named(findings, case), ""
    job.notes["findings"] = [f.to_dict() for f in findings]
    for warning in enforce(findings, where):
        log.warning("%s: %s", case.case_id, warning.message)
    job.image, job.series = image, series


def _predict_case(bundle, job: CaseJob, options, progress) -> None:
    """The label map of the case read (and its probabilities file, if asked for)."""
    from medseg.inference.predict import predict_volume

    image = job.image
    if not any(key in job.paths for key in (PREVIEW, STATISTICS)):
        job.image = None  # else kept for the measurements and the preview
    probabilities = job.paths.get(OutputFormat.PROBABILITIES)
    # room for the next case read meanwhile (about as large) and the label being written
    reserve = image.array.nbytes + math.prod(image.spatial_shape)
    report: dict = {}
    try:
        job.label = predict_volume(
            bundle, image, replace(options, reserve_bytes=reserve), progress, probabilities, report
        )
    except InputRefusedError as e:  # --max-memory: name the input, as the gate does
        raise InputRefusedError(f"{job.case.path}: {e}") from e
    finally:
        if "memory" in report:
            job.record["memory"] = report["memory"]


def _write_case(bundle, job: CaseJob) -> None:
    """Write the label map as NIfTI, DICOM-SEG and RTSTRUCT, then the measurements and
    preview asked for, each atomically."""
    from medseg.inference.reports import write_case_reports
    from medseg.io.volumes import write_volume

    label, series, job.label, job.series = job.label, job.series, None, None
    image, job.image = job.image, None
    if OutputFormat.NIFTI in job.paths:
        write_volume(label, job.paths[OutputFormat.NIFTI])
    if OutputFormat.DICOM_SEG in job.paths:
        from medseg.io.dicom_seg import write_dicom_seg

        write_dicom_seg(label.array, series, bundle.label_names, job.paths[OutputFormat.DICOM_SEG])
    if OutputFormat.RTSTRUCT in job.paths:
        from medseg.io.rtstruct import write_rtstruct

        write_rtstruct(label.array, series, bundle.label_names, job.paths[OutputFormat.RTSTRUCT])
    statistics = write_case_reports(job, image, label, series, bundle)
    if statistics is not None:  # only once every output is written
        job.record["statistics"] = statistics


def case_stages(bundle, options, progress) -> Stages[CaseJob]:
    """The stages of a case predicted in this process: read and gate, predict, write."""
    return Stages(
        runs=lambda job: job.pending,
        read=lambda job: _stage(job, "read", _read_case, bundle, job),
        predict=lambda job: _stage(job, "predict", _predict_case, bundle, job, options, progress),
        write=lambda job: _stage(job, "write", _write_case, bundle, job),
    )


def _stage(job: CaseJob, name: str, work: Callable, *args) -> bool:
    """Do one stage of the case, timed (``seconds[name]``, in the thread doing it); on an
    error the case fails alone: its outputs are removed and the error recorded."""
    t = time.perf_counter()
    try:
        work(*args)
    except Exception as e:
        message = _message(e, job.case)
    else:
        job.notes[name] = time.perf_counter() - t
        return True
    for p in job.paths.values():  # nothing half-made stays: outputs are atomic, drop finished
        p.unlink(missing_ok=True)
    log.warning("%s failed: %s", job.case.case_id, message)
    job.record.update(status="failed", error=message)
    return False


def _message(error: Exception, case: CaseInput) -> str:
    """What to record of an error in one case's stage."""
    if isinstance(error, MedsegError):
        return str(error)
    if isinstance(error, OSError):  # e.g. the output disk is full: the batch goes on
        return f"{error.filename or case.path}: {error.strerror or error}"
    if isinstance(error, MemoryError):
        return "too large for memory while predicting; use a machine with more memory"
    # a bug: the batch goes on, the traceback goes to a crash file
    return internal_error_message(error, write_crash_report(error, "medseg predict (one case)"))


def _read_channels(case: CaseInput):
    """The channel files of ``case`` stacked in channel order, and their header findings.

    Every file must hold one channel on channel 0's voxel grid (shape, spacing,
    direction, origin); the stack has channel 0's affine, so the outputs get its geometry.
    """
    import numpy as np

    from medseg.core.errors import InputRefusedError
    from medseg.core.volume import Kind, Volume
    from medseg.geometry.affine import grid_mismatch
    from medseg.io.volumes import header_findings, read_volume

    first, volumes, header = case.channel_files[0], [], []
    for path in case.channel_files:
        volume = read_volume(path)
        header += header_findings(path)
        if volume.n_channels != 1:
            raise InputRefusedError(
                f"{path}: holds {volume.n_channels} channels, but a channel file (named "
                "<case>_<4 digits>) holds one. Split it into one file per channel, or name it "
                "without the channel number if it is the whole case"
            )
        if volumes:
            ref = volumes[0]
            diff = (
                f"shape {ref.spatial_shape} vs {volume.spatial_shape}"
                if volume.spatial_shape != ref.spatial_shape
                else grid_mismatch(ref.affine, volume.affine, ref.spatial_shape)
            )
            if diff:
                raise InputRefusedError(
                    f"{path}: voxel grid differs from channel 0's ({first.name} vs this file: "
                    f"{diff}); every channel file of a case must share one grid. Resample it "
                    "onto channel 0's grid (or re-export the case)"
                )
        volumes.append(volume)
    array = np.concatenate([v.array for v in volumes])
    return Volume(array, volumes[0].affine, Kind.IMAGE), header


def _read_scan(case: CaseInput):
    """The case's image, its DICOM series (or None) and its files' header findings."""
    if case.is_dicom:
        from medseg.io.dicom_series import read_dicom_series

        image, series = read_dicom_series(case.path, case.series_uid)
        return image, series, []
    if len(case.channel_files) > 1:
        image, header = _read_channels(case)
        return image, None, header
    from medseg.io.volumes import header_findings, read_volume

    return read_volume(case.path), None, header_findings(case.path)


def _named(findings: list, case: CaseInput) -> list:
    """For a case of several channel files: each finding's message begins with the file it
    is about (``channel 1 holds NaN ...`` -> ``.../X_0001.nii.gz (channel 1) holds ...``),
    the others with channel 0's file (the grid every channel shares)."""
    from medseg.core.sanity import Finding

    files = [str(p) for p in case.channel_files]
    named = []
    for f in findings:
        message = f.message
        for c, path in enumerate(files):
            if message.startswith(f"channel {c} "):
                message = f"{path} (channel {c}) {message[len(f'channel {c} ') :]}"
        if not any(message.startswith(path) for path in files):
            message = f"{files[0]}: {message}"
        named.append(Finding(f.code, message, f.refuse))
    return named
