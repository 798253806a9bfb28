"""medseg fingerprint + plan + preprocess vs nnUNetv2_plan_and_preprocess, side by side.

Both run on the same dataset, on the same machine, in one go, with the same
number of processes, as their users run them (medseg: three commands, as the
workflow calls them; nnU-Net: one command, its default reader). Reports wall
time, peak resident memory (summed over each tool's process tree, sampled every
20 ms) and the disk footprint of what each leaves behind, and the ratios.

    .venv/bin/python benchmarks/preprocess.py [--dataset DIR] [-j 2] [--repeat 1]

Not a test: run it by hand and quote its table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the nnU-Net conversion helpers used by the tests
from nnunet_oracle import _nnunet_env, to_nnunet_raw  # noqa: E402

BIN = Path(sys.executable).parent


def run_measured(cmd: list, env: dict | None = None) -> tuple[float, int]:
    """Run ``cmd``; return wall seconds and peak RSS (bytes) of its whole process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{err.decode()[-3000:]}")
    return time.perf_counter() - start, peak


def disk_bytes(*paths: Path) -> int:
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(f.stat().st_blocks * 512 for f in files)
    return total


def run_medseg(dataset: Path, work: Path, processes: int) -> dict:
    out = work / "medseg"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    medseg = BIN / "medseg"
    steps = [
        [medseg, "fingerprint", dataset, "-o", out / "fingerprint.json", "-j", processes],
        [
            medseg,
            "plan",
            out / "fingerprint.json",
            "-o",
            out / "plans.json",
            "--configurations",
            "3d_fullres",
        ],
        [
            medseg,
            "preprocess",
            dataset,
            out / "plans.json",
            "--config",
            "3d_fullres",
            "-o",
            out / "3d_fullres",
            "-j",
            processes,
        ],
    ]
    wall, peak = 0.0, 0
    for cmd in steps:
        seconds, rss = run_measured(cmd)
        wall, peak = wall + seconds, max(peak, rss)
    return {"wall": wall, "peak": peak, "disk": disk_bytes(out)}


def run_nnunet(dataset: Path, work: Path, processes: int) -> dict:
    base = work / "nnunet"
    shutil.rmtree(base, ignore_errors=True)
    raw = to_nnunet_raw(dataset, base / "nnUNet_raw", 990, "Bench", reader=None)
    env = _nnunet_env(base)
    cmd = [
        BIN / "nnUNetv2_plan_and_preprocess",
        "-d",
        "990",
        "-c",
        "3d_fullres",
        "-np",
        processes,
        "-npfp",
        processes,
        "--no_pbar",
    ]
    wall, peak = run_measured(cmd, env)
    return {"wall": wall, "peak": peak, "disk": disk_bytes(base / "nnUNet_preprocessed" / raw.name)}


def warm_page_cache(dataset: Path) -> None:
    for f in dataset.rglob("*"):
        if f.is_file():
            f.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
    )
    parser.add_argument("-j", "--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (median reported)")
    parser.add_argument("--workdir", type=Path, help="keep outputs here (default: a temp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    warm_page_cache(args.dataset)
    runs = {"medseg": [], "nnU-Net": []}
    for _ in range(args.repeat):  # alternate, so drift affects both alike
        runs["nnU-Net"].append(run_nnunet(args.dataset, work, args.processes))
        runs["medseg"].append(run_medseg(args.dataset, work, args.processes))
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    print(
        f"\ndataset {args.dataset.name}, {args.processes} processes, {args.repeat} run(s) each, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(f"| {'':<18} | {'medseg':>10} | {'nnU-Net':>10} | {'ratio':>6} |")
    print(f"| {'-' * 18} | {'-' * 10} | {'-' * 10} | {'-' * 6} |")
    rows = [
        ("wall time (s)", "wall", 1.0, ".1f"),
        ("peak RSS (MB)", "peak", 1e6, ".0f"),
        ("disk (MB)", "disk", 1e6, ".1f"),
    ]
    for label, key, scale, fmt in rows:
        ours, theirs = med["medseg"][key] / scale, med["nnU-Net"][key] / scale
        print(f"| {label:<18} | {ours:>10{fmt}} | {theirs:>10{fmt}} | {ours / theirs:>6.2f} |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
