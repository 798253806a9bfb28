"""Run a benchmark command with its process tree's peak RSS sampled, under a memory cap.

``benchmarks/large.py`` runs medseg and nnU-Net on CT-sized scans, where nnU-Net can
need more memory than the machine has: a run over the cap (or past its time) is
killed and reported as such instead of driving the machine into the OOM killer.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _kill_tree(root: psutil.Process) -> None:
    try:
        tree = [*root.children(recursive=True), root]
    except psutil.Error:
        tree = [root]
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def run_capped(cmd: list, env: dict, log: Path, cap_bytes: int, timeout_s: float) -> dict:
    """Run ``cmd`` like ``preprocess.run_measured`` (wall s, peak RSS of its process tree),
    but kill the tree above ``cap_bytes`` or after ``timeout_s`` and report, not raise.

    Returns ``{"wall", "peak", "status", "cap", "log"}``; ``status`` is ``"ok"`` or says
    why the run did not finish; output goes to ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=out, stderr=out)
    root, peak, status = psutil.Process(proc.pid), 0, "ok"
    while proc.poll() is None:
        rss = _tree_rss(root)
        peak = max(peak, rss)
        if rss > cap_bytes:
            status = f"killed by the benchmark at {rss / 1e9:.1f} GB (cap {cap_bytes / 1e9:.1f})"
        elif time.perf_counter() - start > timeout_s:
            status = f"timed out after {timeout_s:.0f} s"
        if status != "ok":
            _kill_tree(root)
            break
        time.sleep(0.02)
    proc.wait()
    wall = time.perf_counter() - start
    if status == "ok" and proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        memory = proc.returncode == -9 or "MemoryError" in tail or "6 feet under" in tail
        status = f"{'out of memory? ' if memory else ''}exit code {proc.returncode}"
        if "too large for the memory" in tail:  # medseg refused the scan (--max-memory)
            status = f"refused: too large for memory (exit code {proc.returncode})"
    return {"wall": wall, "peak": peak, "status": status, "cap": cap_bytes, "log": str(log)}


def memory_cap(cap_gb: float | None) -> int:
    """``cap_gb`` in bytes; None: 90% of the memory available now."""
    if cap_gb is not None:
        return int(cap_gb * 1e9)
    return int(0.9 * psutil.virtual_memory().available)
