"""Batch prediction for hospital folders: many inputs, a manifest, no stop on a bad case.

Inputs are volume files (NIfTI, NRRD, MHA), DICOM series folders, or folders
holding many studies (every DICOM series found recursively is a case). Each case
is read, predicted and written atomically; a case that fails (unreadable, wrong
modality, not a volume, too large for memory) is recorded in the manifest and
the batch goes on. ``OUTDIR/manifest.jsonl`` gets one line per case and run:
input, outputs (absolute paths), status, error, seconds per stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.io.atomic import full_suffix

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
FORMATS = ("nifti", "dicom-seg", "probabilities")
#: Channel names that mean "this model expects CT" / "expects MR".
CT_NAMES = {"ct"}
MR_NAMES = {"mr", "mri", "t1", "t1w", "t1gd", "t1ce", "t2", "t2w", "flair", "adc", "dwi", "pd"}


@dataclass(frozen=True)
class CaseInput:
    """One case to predict: a volume file, or one DICOM series in a folder."""

    case_id: str
    path: Path
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def _file_case_id(path: Path) -> str:
    return path.name[: -len(full_suffix(path))] if full_suffix(path) else path.name


def _dicom_cases(folder: Path) -> list[CaseInput]:
    from medseg.io.dicom_series import scan_series

    by_folder: dict[Path, list] = {}
    for series in scan_series(folder, recursive=True):
        parents = {f.parent for f in series.files}
        by_folder.setdefault(min(parents), []).append(series)
    cases = []
    for parent, group in sorted(by_folder.items()):
        rel = parent.relative_to(folder).as_posix()
        base = folder.name if rel == "." else rel.replace("/", "_")
        for s in group:
            suffix = f"_{s.uid.split('.')[-1]}" if len(group) > 1 else ""
            cases.append(CaseInput(base + suffix, parent, s.uid or None))
    return cases


def discover_inputs(paths: list[Path]) -> tuple[list[CaseInput], list[dict]]:
    """Cases found in ``paths``, and failures for paths that hold nothing usable."""
    cases, failures = [], []
    for path in map(Path, paths):
        if path.is_file() and full_suffix(path).lower() in VOLUME_SUFFIXES:
            cases.append(CaseInput(_file_case_id(path), path))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and full_suffix(p).lower() in VOLUME_SUFFIXES)  # fmt: skip
            cases += [CaseInput(_file_case_id(f), f) for f in files]
            found = _dicom_cases(path)
            cases += found
            if not files and not found:
                failures.append({"input": str(path), "error": "no volume files or DICOM series"})
        else:
            what = "not found" if not path.exists() else "not a volume file or folder"
            failures.append({"input": str(path), "error": what})
    seen: dict[str, int] = {}
    unique = []
    for case in cases:  # make ids unique, keeping the first as is
        n = seen.get(case.case_id, 0)
        seen[case.case_id] = n + 1
        unique.append(case if n == 0 else CaseInput(f"{case.case_id}_{n}", case.path,
                                                    case.series_uid))  # fmt: skip
    return unique, failures


def check_modality(modality: str, channel_names: list[str]) -> None:
    """Refuse a DICOM series whose modality the model was clearly not trained on."""
    names = {n.casefold() for n in channel_names}
    if names & CT_NAMES and modality and modality != "CT":
        raise MedsegError(f"wrong modality: the model expects CT, this series is {modality}")
    if names & MR_NAMES and modality and modality != "MR":
        raise MedsegError(f"wrong modality: the model expects MR, this series is {modality}")


def check_memory(shape, n_channels: int, n_classes: int) -> None:
    """Fail early, clearly, when a volume cannot fit in the memory that is free."""
    import psutil

    voxels = math.prod(shape)
    need = voxels * 4 * (3 * n_channels + 4 * n_classes)  # float32 copies: input, logits, probs
    free = psutil.virtual_memory().available
    if need > free:
        raise MedsegError(
            f"too large for memory: {tuple(shape)} voxels need about {need / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB are free; use a machine with more memory"
        )


@dataclass(frozen=True)
class BatchSettings:
    """What to write, whether to skip finished cases, and how many cases at once.

    With ``workers > 1`` each worker process loads the model once and takes cases
    in turn, the CPU cores shared out among them (on CPU, several single-threaded
    cases at once use the cores better than one case on all of them).
    """

    formats: tuple[str, ...] = ("nifti", "dicom-seg")
    skip_existing: bool = False
    workers: int = 1


@dataclass
class BatchResult:
    records: list[dict] = field(default_factory=list)


def outputs_for(case: CaseInput, out: Path, formats) -> dict[str, Path]:
    paths = {}
    if "nifti" in formats:
        paths["nifti"] = out / f"{case.case_id}.nii.gz"
    if "dicom-seg" in formats and case.is_dicom:
        paths["dicom-seg"] = out / f"{case.case_id}.seg.dcm"
    if "probabilities" in formats:
        paths["probabilities"] = out / f"{case.case_id}_probabilities.npz"
    return paths


def _predict_case(bundle, case: CaseInput, paths: dict, options, timing: dict, progress):
    from medseg.inference.predict import predict_volume
    from medseg.io.volumes import read_volume, write_volume

    t = time.perf_counter()
    series = None
    if case.is_dicom:
        from medseg.io.dicom_series import read_dicom_series

        image, series = read_dicom_series(case.path, case.series_uid)
        check_modality(series.modality, bundle.channel_names)
    else:
        image = read_volume(case.path)
    check_memory(image.spatial_shape, image.n_channels, len(bundle.labels))
    timing["read"], t = time.perf_counter() - t, time.perf_counter()
    probs, label = predict_volume(bundle, image, options, progress)
    timing["predict"], t = time.perf_counter() - t, time.perf_counter()
    if "nifti" in paths:
        write_volume(label, paths["nifti"])
    if "dicom-seg" in paths:
        from medseg.io.dicom_seg import write_dicom_seg

        write_dicom_seg(label.array, series, bundle.label_names, paths["dicom-seg"])
    if "probabilities" in paths:
        from medseg.io.probabilities import save_probabilities

        save_probabilities(paths["probabilities"], probs.array, probs.affine)
    timing["write"] = time.perf_counter() - t


def _case_record(bundle, case: CaseInput, out: Path, options, settings, run_id, progress):
    """Predict (or skip) one case and describe what happened, for the manifest."""
    paths = outputs_for(case, out, settings.formats)
    record = {"run": run_id, "case_id": case.case_id, "input": str(case.path.resolve()),
              "series_uid": case.series_uid,
              "outputs": {k: str(v.resolve()) for k, v in paths.items()}}  # fmt: skip
    timing: dict[str, float] = {}
    if settings.skip_existing and paths and all(p.exists() for p in paths.values()):
        record.update(status="skipped", error=None)
    else:
        record.update(_attempt(bundle, case, paths, options, timing, progress))
    record["seconds"] = {k: round(v, 3) for k, v in timing.items()}
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
    case, out, options, settings, run_id = args
    return _case_record(_worker["bundle"], case, out, options, settings, run_id, None)


def _records(bundle, cases, out, options, settings, run_id, progress, model):
    """Records of ``cases`` as they finish: in this process, or in worker processes."""
    if settings.workers <= 1 or len(cases) <= 1 or model is None:
        for case in cases:
            yield _case_record(bundle, case, out, options, settings, run_id, progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(settings.workers, len(cases))
    threads = max(1, (os.cpu_count() or 1) // workers)
    init = (model, str(options.device), threads)
    context = multiprocessing.get_context("spawn")  # no fork after torch set up its threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=init) as pool:  # fmt: skip
        jobs = [pool.submit(_worker_case, (c, out, options, settings, run_id)) for c in cases]
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

    ``unusable`` are inputs :func:`discover_inputs` could not use; they are recorded
    as failed so the manifest accounts for every input given. ``model`` lets worker
    processes load the model themselves when ``settings.workers > 1``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = BatchResult()
    with open(out / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for bad in unusable:
            record = {"run": run_id, "case_id": None, "input": bad["input"], "series_uid": None,
                      "outputs": {}, "status": "failed", "error": bad["error"],
                      "seconds": {}}  # fmt: skip
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


def _attempt(bundle, case, paths, options, timing, progress) -> dict:
    try:
        _predict_case(bundle, case, paths, options, timing, progress)
        return {"status": "ok", "error": None}
    except MedsegError as e:
        message = str(e)
    except MemoryError:
        message = "too large for memory while predicting; use a machine with more memory"
    except Exception as e:  # a batch never stops on one case; the log has the traceback
        log.exception("unexpected failure on %s", case.path)
        message = f"unexpected {type(e).__name__}: {e}"
    for p in paths.values():  # nothing half-made stays: outputs are atomic, drop finished ones
        p.unlink(missing_ok=True)
    log.warning("%s failed: %s", case.case_id, message)
    return {"status": "failed", "error": message}
