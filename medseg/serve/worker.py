"""Predicting: models loaded once (warm), one series at a time, through ``run_batch``.

A run predicts a fixed snapshot of the series' instances (hard links in
``spool/work/<SeriesUID>/<run>/``), so instances arriving meanwhile never change the
files being read; its outputs go to ``spool/results/<SeriesUID>/<run>/`` as
``medseg predict`` writes them (atomically, with its manifest). A run that is
predicted again after a crash writes into the same folder: the ledger of
:mod:`medseg.inference.batch` knows those files as its own.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from medseg.core.options import OutputFormat
from medseg.serve.config import ServeConfig
from medseg.serve.spool import Spool, snapshot
from medseg.serve.state import claim_next, complete_quiet, fail, finish, instance_files

log = logging.getLogger(__name__)

#: What a C-STORE destination can take; a folder takes every output.
DICOM_FORMATS = {OutputFormat.DICOM_SEG.value, OutputFormat.RTSTRUCT.value}


class Models:
    """Every model of the configuration, loaded once at start and kept (a cache)."""

    def __init__(self, config: ServeConfig):
        from medseg.inference.predict import PredictOptions
        from medseg.nets.device import resolve_device

        device = resolve_device(config.prediction.device)
        self.options = PredictOptions(
            step=config.prediction.step, mirroring=config.prediction.mirroring, device=str(device)
        )
        self.bundles = {}
        for name, path in config.models.items():
            from medseg.inference.bundle import load_model

            self.bundles[name] = load_model(path, device)
            log.info("model %s loaded from %s on %s", name, path, device)


def planned_deliveries(config: ServeConfig, outputs: dict[str, str]) -> list[tuple[str, str]]:
    """``(destination, file)`` for every output each destination takes. Pure."""
    pairs = []
    for dest in config.destinations:
        for fmt, file in sorted(outputs.items()):
            if dest.is_folder or fmt in DICOM_FORMATS:
                pairs.append((dest.name, file))
    return pairs


def predict_run(models: Models, config: ServeConfig, spool: Spool, series, files) -> dict:
    """Predict one run of a series; the manifest record of :func:`run_batch`."""
    from medseg.inference.batch import BatchSettings, run_batch
    from medseg.inference.inputs import CaseInput

    uid, run = series["uid"], series["run"]
    folder = snapshot(files, spool.work(uid, run))
    case = CaseInput(uid, folder, uid)
    settings = BatchSettings(
        formats=config.formats, statistics=config.statistics, preview=config.preview
    )
    bundle = models.bundles[series["model"]]
    result = run_batch(bundle, [case], spool.results(uid, run), models.options, settings)
    shutil.rmtree(folder, ignore_errors=True)
    return result.records[0]


def work_once(models: Models, config: ServeConfig, spool: Spool, conn) -> bool:
    """Predict the next complete series, if any; True if one was taken."""
    series = claim_next(conn, time.time())
    if series is None:
        return False
    uid, run = series["uid"], series["run"]
    model, attempt = series["model"], series["attempts"]
    log.info("series %s run %d: predicting with %s (try %d)", uid, run, model, attempt)
    started = time.monotonic()
    try:
        record = predict_run(models, config, spool, series, instance_files(conn, uid))
    except Exception as e:  # an unexpected error fails this series, not the service
        log.exception("series %s run %d: prediction crashed", uid, run)
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "outputs": {}}
    if record["status"] == "ok":
        finish(conn, uid, run, planned_deliveries(config, record["outputs"]), time.time())
        log.info("series %s run %d: done in %.1f s", uid, run, time.monotonic() - started)
    else:
        fail(conn, uid, run, record["error"] or "failed", time.time())
        log.warning("series %s run %d: failed: %s", uid, run, record["error"])
    return True


def schedule_once(config: ServeConfig, conn) -> None:
    """Series quiet for ``quiet_seconds`` become complete or ignored."""
    for uid, state, route in complete_quiet(conn, time.time(), config.quiet_seconds, config.routes):
        if state == "ignored":
            log.info("series %s ignored: no route matches it", uid)
        else:
            log.info("series %s complete: route %s", uid, route)


def result_files(spool: Spool, series: str, run: int) -> list[Path]:
    folder = spool.results(series, run)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
