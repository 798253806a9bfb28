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
error, findings (the gate's refusals and warnings), seconds per stage. An
existing file in OUTDIR that medseg did not write is never overwritten: that case
fails instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medseg.core.crash import internal_error_message, write_crash_report
from medseg.core.errors import MedsegError
from medseg.core.layout import PredictionDir
from medseg.core.options import OutputFormat
from medseg.inference.inputs import CaseInput, outputs_for

log = logging.getLogger(__name__)

__all__ = ["BatchResult", "BatchSettings", "WorkerModel", "run_batch"]


@dataclass(frozen=True)
class BatchSettings:
    """What to write, whether to skip finished cases, and how many cases at once.

    With ``workers > 1`` each worker process loads the model once and takes cases
    in turn, the CPU cores shared out among them (on CPU, several single-threaded
    cases at once use the cores better than one case on all of them).
    """

    formats: tuple[OutputFormat, ...] = (OutputFormat.NIFTI, OutputFormat.DICOM_SEG)
    skip_existing: bool = False
    workers: int = 1


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


def _predict_case(bundle, case: CaseInput, paths: dict, options, notes: dict, progress):
    from medseg.inference.gate import ModelFacts, enforce, scan_findings
    from medseg.inference.predict import predict_volume
    from medseg.io.volumes import write_volume

    t = time.perf_counter()
    image, series, header = _read_scan(case)
    modality = series.modality if series else None
    findings = scan_findings(image, ModelFacts.of(bundle), header=header, modality=modality)
    where = str(case.path)
    if len(case.channel_files) > 1:  # each message names its own file already
        findings, where = _named(findings, case), ""
    notes["findings"] = [f.to_dict() for f in findings]
    for warning in enforce(findings, where):
        log.warning("%s: %s", case.case_id, warning.message)
    notes["read"], t = time.perf_counter() - t, time.perf_counter()
    label = predict_volume(
        bundle, image, options, progress, probabilities=paths.get(OutputFormat.PROBABILITIES)
    )
    notes["predict"], t = time.perf_counter() - t, time.perf_counter()
    if OutputFormat.NIFTI in paths:
        write_volume(label, paths[OutputFormat.NIFTI])
    if OutputFormat.DICOM_SEG in paths:
        from medseg.io.dicom_seg import write_dicom_seg

        write_dicom_seg(label.array, series, bundle.label_names, paths[OutputFormat.DICOM_SEG])
    notes["write"] = time.perf_counter() - t


def _foreign(paths: dict[str, Path], owned: frozenset[str]) -> str | None:
    """Why ``paths`` may not be written: an existing file medseg did not write."""
    taken = [p for p in paths.values() if p.exists() and str(p.resolve()) not in owned]
    if not taken:
        return None
    return (
        f"{taken[0]}: exists and was not written by medseg predict (not in manifest.jsonl); "
        "medseg never overwrites it. Move it away or choose another output folder."
    )


def _case_record(
    bundle,
    case: CaseInput,
    out: Path,
    options,
    settings,
    run_id,
    progress,
    owned: frozenset[str] = frozenset(),
):
    """Predict (or skip) one case and describe what happened, for the manifest."""
    paths = outputs_for(case, out, settings.formats)
    record = {
        "run": run_id,
        "case_id": case.case_id,
        "input": str(case.path.resolve()),
        "inputs": [str(p.resolve()) for p in case.files],
        "series_uid": case.series_uid,
        "outputs": {k: str(v.resolve()) for k, v in paths.items()},
    }
    notes: dict = {}
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
        record.update(_attempt(bundle, case, paths, options, notes, progress))
        if record["status"] == "failed":  # its files are gone: the names are free again
            _ledger(out, paths, "-")
    record["findings"] = notes.pop("findings", [])
    record["seconds"] = {k: round(v, 3) for k, v in notes.items()}
    return record


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


def _records(bundle, cases, out, options, settings, run_id, progress, model):
    """Records of ``cases`` as they finish: in this process, or in worker processes."""
    owned = owned_outputs(out)
    if settings.workers <= 1 or len(cases) <= 1 or model is None:
        for case in cases:
            yield _case_record(bundle, case, out, options, settings, run_id, progress, owned)
        return
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
    ``model`` lets worker processes load the model themselves when ``settings.workers > 1``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        for record in _records(bundle, cases, out, options, settings, run_id, progress, model):
            _append(manifest, record)
            result.records.append(record)
            if on_case:
                on_case(record)
    return result


def _append(manifest, record: dict) -> None:
    """One durable manifest line (flushed and synced: it survives a killed batch)."""
    manifest.write(json.dumps(record) + "\n")
    manifest.flush()
    os.fsync(manifest.fileno())


def _attempt(bundle, case, paths, options, notes, progress) -> dict:
    try:
        _predict_case(bundle, case, paths, options, notes, progress)
        return {"status": "ok", "error": None}
    except MedsegError as e:
        message = str(e)
    except OSError as e:  # e.g. the output disk is full: this case fails, the batch goes on
        message = f"{e.filename or case.path}: {e.strerror or e}"
    except MemoryError:
        message = "too large for memory while predicting; use a machine with more memory"
    except Exception as e:  # a bug: the batch goes on, the traceback goes to a crash file
        message = internal_error_message(e, write_crash_report(e, "medseg predict (one case)"))
    for p in paths.values():  # nothing half-made stays: outputs are atomic, drop finished ones
        p.unlink(missing_ok=True)
    log.warning("%s failed: %s", case.case_id, message)
    return {"status": "failed", "error": message}
