"""``medseg status``: every training job's epoch, pseudo-Dice and time left, from its log."""

from __future__ import annotations

import json
import os
import shutil
import time

from conftest import run_medseg

from medseg.core.layout import FoldDir
from medseg.training.progress import fold_progress, read_history


def _history(n: int, planned: int | None = 10, seconds: float = 60.0) -> list[dict]:
    records = []
    for epoch in range(n):
        record = {"epoch": epoch, "pseudo_dice_mean": 0.1 * epoch, "ema_pseudo_dice": 0.05 * epoch}
        record["epoch_seconds"] = seconds + epoch  # the median of the last 5 counts
        if planned is not None:
            record["epochs"] = planned
        records.append(record)
    return records


def test_progress_of_a_running_a_stalled_and_a_finished_fold():
    running = fold_progress(_history(6), finished=False, log_age_seconds=10.0)
    assert (running.state, running.epochs_done, running.epochs) == ("running", 6, 10)
    assert running.epoch_seconds == 63.0  # median of 61..65
    assert running.eta_seconds == 4 * 63.0 - 10.0
    assert running.pseudo_dice == 0.5 and running.ema_pseudo_dice == 0.25
    stalled = fold_progress(_history(6), finished=False, log_age_seconds=3600.0)
    assert stalled.state == "stalled"
    done = fold_progress(_history(10), finished=True, log_age_seconds=99999.0)
    assert (done.state, done.epochs_done, done.eta_seconds) == ("finished", 10, None)
    assert fold_progress([], finished=False).state == "not started"
    legacy = fold_progress(_history(3, planned=None), finished=False, log_age_seconds=1.0)
    assert legacy.epochs is None and legacy.eta_seconds is None and legacy.state == "running"


def test_read_history_skips_foreign_lines(tmp_path):
    log = tmp_path / "training_log.jsonl"
    log.write_text('{"epoch": 0}\nnot json\n[1, 2]\n{"epoch": 1}\n')
    assert [r["epoch"] for r in read_history(log)] == [0, 1]
    assert read_history(tmp_path / "missing.jsonl") == []


def test_status_command_on_trained_and_running_folds(demo_models, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(demo_models[0] / "models", root / "models")
    running = FoldDir(root / "models" / "3d_fullres" / "fold_1")
    running.checkpoint().unlink()  # not finished yet: one epoch of two in its log
    lines = running.training_log.read_text().splitlines()
    running.training_log.write_text(lines[0] + "\n")
    now = time.time()
    os.utime(running.training_log, (now, now))
    done = run_medseg("status", root, "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["configuration"], r["fold"]): r for r in json.loads(done.stdout)}
    assert len(rows) == 4
    assert rows[("3d_fullres", "fold_1")]["state"] == "running"
    assert rows[("3d_fullres", "fold_1")]["epochs_done"] == 1
    assert rows[("3d_fullres", "fold_1")]["epochs"] == 2
    assert rows[("3d_fullres", "fold_1")]["eta_seconds"] is not None
    assert rows[("2d", "fold_0")]["state"] == "finished"
    assert rows[("2d", "fold_0")]["epochs_done"] == 2
    table = run_medseg("status", root)
    assert table.returncode == 0 and "running" in table.stdout and "2 of 2" in table.stdout


def test_status_of_a_folder_without_training_names_it(tmp_path):
    done = run_medseg("status", tmp_path)
    assert done.returncode == 2
    assert str(tmp_path) in done.stderr and "no training jobs" in done.stderr
    assert "Traceback" not in done.stderr
