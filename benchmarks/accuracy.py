"""Accuracy: medseg's trainer vs nnU-Net v2's nnUNetTrainer, same plans, split and schedule.

Both tools train 3d_fullres on the same fold of the same 5-fold split of MSD
Hippocampus, from ONE plans file, for the same number of iterations, with two seeds
each; each predicts that fold's validation cases with its own sliding window (step
0.5, Gaussian, mirroring on), and both are scored by the same code (medseg's Dice,
:func:`medseg.evaluation.metrics.evaluate_folder`, on the NIfTI predictions against the
original labels). It prints Dice per class (1 anterior, 2 posterior) and the mean
foreground Dice per tool and seed, each tool's seed mean and seed-to-seed spread
(max - min), medseg - nnU-Net of the seed means, and the wall seconds of each training.

    .venv/bin/python benchmarks/accuracy.py [--epochs 20] [--iterations-per-epoch 25]
        [--seeds 0,1] [--fold 0] [--features 8] [--threads 2] [--work DIR] [--keep]
        [--save results.json] [--smoke]

What is shared (see :mod:`accuracy_runs`): nnU-Net plans the dataset (its fingerprint,
planner and 3d_fullres preprocessing, run through ``tests/nnunet_oracle.py``); the plans'
``features_per_stage`` are cut to ``--features`` x 2**stage (8, 16, 32, 64 for
Hippocampus's 4 stages) for the CPU, patch (40 x 56 x 40) and batch size (7) stay
nnU-Net's. That file, with medseg's ``schema``/``labels``/``channel_names`` keys added,
is given to nnU-Net's trainer and to ``medseg preprocess``/``train``/``validate``. One
``splits_final.json`` goes to nnU-Net's preprocessed folder and, through ``medseg split
--from``, to medseg. Each tool preprocesses with its own code.

Runs: every training and every prediction is its own subprocess with ``--threads`` torch
threads (``OMP_NUM_THREADS`` too), data augmentation in the training process (nnU-Net
``nnUNet_n_proc_DA=0``, medseg ``--workers 0``), ``--val-iterations`` validation batches
per epoch for both (they only feed the pseudo-Dice log; the final checkpoint is
predicted), on the CPU. Seeds: medseg's ``--seed``; nnU-Net has no seed option and draws
from the global torch/numpy/``random`` state, so ``accuracy_nnunet.py`` seeds all three in
its process before building the trainer. nnU-Net's trainer is imported directly (not
looked up by name; see ../shared/NNUNET_ORACLE.md) and predicts through
``nnUNetPredictor.manual_initialization`` (``tests/nnunet_model.py``).

Schedule: the plans' 3d_fullres batch is cut to ``--batch`` (default 2; 0 keeps
nnU-Net's 7): at nnU-Net's batch 7 and 500 iterations nnU-Net's own trainer never left
pseudo-Dice 0 with the 8-feature network, so the default is 20 epochs x 100 iterations
of batch 2 (nnU-Net's poly learning rate decays over the 20 epochs). A calibration run
showed the first non-zero validation pseudo-Dice after about 500 iterations for nnU-Net
and about 300 for medseg.

Time (2 CPU cores): with ``--parallel --threads 1`` (both tools of a seed at once, one
torch thread each) a training takes about 25 min (about 0.75 s per iteration, the
machine shared with other work) and predicting the 40 validation cases 1.5-2 min; the
whole default run with two seeds took 57 min. Sequentially with ``--threads 2`` it is
about the same. ``--smoke`` (2 epochs x 2 iterations, 20 cases of which 16 train and 4
validate, nnU-Net's batch for 20 cases, seed 0) takes about 3 min. Not a test;
``tests/test_benchmark_accuracy.py`` runs the smoke.

Result (2026-11-29, ``--parallel --threads 1``, seeds 0 and 1): mean foreground Dice
nnU-Net 0.8487 (seed spread 0.0035), medseg 0.8532 (spread 0.0013), medseg - nnU-Net
+0.0045; see benchmarks/README.md for the table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_runs import (  # noqa: E402
    Schedule,
    dataset_cases,
    prepare,
    run_medseg_seed,
    run_nnunet_seed,
    score,
)

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("nnU-Net", "medseg")
COLUMNS = ("1", "2", "mean")
FULL = {"epochs": 20, "iterations_per_epoch": 100, "seeds": "0,1", "cases": None, "batch": 2}
SMOKE = {"epochs": 2, "iterations_per_epoch": 2, "seeds": "0", "cases": 20, "batch": None}


def pick_cases(cases: list[str], n: int | None) -> list[str]:
    """``n`` cases spread evenly over the sorted list (all of them for None)."""
    if n is None or n >= len(cases):
        return list(cases)
    step = len(cases) / n
    return [cases[int(i * step)] for i in range(n)]


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds: comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds: one or more distinct integers, got {text!r}")
    return seeds


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def summarize(runs: list[dict]) -> dict:
    """Per tool: seed mean and spread (max - min) of each Dice column and the training
    seconds; and medseg - nnU-Net of the seed means."""
    out = {}
    for tool in TOOLS:
        mine = [r for r in runs if r["tool"] == tool]
        out[tool] = {
            "mean": {c: sum(r["dice"][c] for r in mine) / len(mine) for c in COLUMNS},
            "spread": {c: spread([r["dice"][c] for r in mine]) for c in COLUMNS},
            "train_s": sum(r["train_s"] for r in mine) / len(mine),
            "train_cpu_s": sum(r["train_cpu_s"] for r in mine) / len(mine),
        }
    out["difference"] = {c: out["medseg"]["mean"][c] - out["nnU-Net"]["mean"][c] for c in COLUMNS}
    return out


def table(runs: list[dict], summary: dict, labels: dict[int, str]) -> str:
    """The markdown table: one row per tool and seed, then means, spreads, difference."""
    names = [f"Dice {c} ({labels[int(c)]})" for c in COLUMNS[:2]]
    lines = [
        f"| run | {names[0]} | {names[1]} | mean fg Dice | train wall (s) | train CPU (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(label: str, dice: dict, times: dict | None, sign: str = "") -> None:
        cells = [f"{dice[c]:{sign}.4f}" for c in COLUMNS]
        keys = ("train_s", "train_cpu_s")
        cells += ["-"] * 2 if times is None else [f"{times[k]:.0f}" for k in keys]
        lines.append(f"| {label} | {' | '.join(cells)} |")

    for tool in TOOLS:
        for r in (r for r in runs if r["tool"] == tool):
            row(f"{tool} seed {r['seed']}", r["dice"], r)
    for tool in TOOLS:
        row(f"{tool} seed mean", summary[tool]["mean"], summary[tool])
    for tool in TOOLS:
        row(f"{tool} seed spread (max - min)", summary[tool]["spread"], None)
    row("medseg - nnU-Net (seed means)", summary["difference"], None, "+")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
    )
    parser.add_argument("--epochs", type=int, help=f"default {FULL['epochs']}")
    parser.add_argument(
        "--iterations-per-epoch", type=int, help=f"default {FULL['iterations_per_epoch']}"
    )
    parser.add_argument(
        "--val-iterations", type=int, default=2, help="validation batches per epoch, both tools"
    )
    parser.add_argument("--seeds", help=f"comma-separated (default {FULL['seeds']})")
    parser.add_argument("--fold", type=int, default=0, help="fold of the 5-fold split")
    parser.add_argument("--features", type=int, default=8, help="first stage's features")
    parser.add_argument(
        "--batch", type=int, help=f"3d_fullres batch size (default {FULL['batch']}; 0: nnU-Net's)"
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train and predict both tools of a seed at the same time (give each --threads 1)",
    )
    parser.add_argument("--cases", type=int, help="use this many cases, spread (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--save", type=Path, metavar="JSON", help="write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny run (a test: about 3 min)")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.seeds = seed_list(args.seeds)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.batch == 0:
        args.batch = None
    if not 0 <= args.fold < 5:
        parser.error(f"--fold must be 0..4, got {args.fold}")
    return args


def _work_folder(work: Path | None) -> Path:
    if work is None:
        return Path(tempfile.mkdtemp(prefix="medseg-accuracy-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty; give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    return work.resolve()


def run_all(setup, schedule, seeds, work: Path, parallel: bool, log) -> list[dict]:
    """Train, predict and score every tool and seed; with ``parallel`` the two tools of
    a seed run at the same time (each its own subprocesses)."""

    def one(tool: str, seed: int) -> dict:
        log(f"{tool} seed {seed}: training")
        run = run_nnunet_seed if tool == "nnU-Net" else run_medseg_seed
        result = run(setup, schedule, seed, work / "runs" / f"{tool}_seed{seed}")
        result["dice"] = score(result.pop("predictions"), setup)
        log(f"{tool} seed {seed}: {result}")
        return {"tool": tool, "seed": seed, **result}

    runs = []
    with ThreadPoolExecutor(max_workers=2 if parallel else 1) as pool:
        for seed in seeds:
            runs += list(pool.map(one, TOOLS, (seed, seed)))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = _work_folder(args.work)
    cases = pick_cases(dataset_cases(args.dataset), args.cases)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"preparing {len(cases)} cases in {work}")
    setup = prepare(args.dataset, work, cases, args.features, args.fold, args.batch)
    schedule = Schedule(
        args.fold, args.epochs, args.iterations_per_epoch, args.val_iterations, args.threads
    )
    runs = run_all(setup, schedule, args.seeds, work, args.parallel, log)
    summary = summarize(runs)
    print(
        f"\n{args.dataset.name} {'3d_fullres'} fold {args.fold}: {len(setup.train_ids)} "
        f"training / {len(setup.val_ids)} validation cases, patch "
        f"{'x'.join(map(str, setup.patch))}, batch {setup.batch}, features "
        f"{','.join(map(str, setup.features))}, {args.epochs} epochs x "
        f"{args.iterations_per_epoch} iterations, {args.threads} threads"
        f"{' each, both tools at once' if args.parallel else ''}, CPU\n"
    )
    print(table(runs, summary, setup.labels))
    if args.save:
        figures = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "setup": {"patch": setup.patch, "batch": setup.batch, "features": setup.features,
                      "train_cases": len(setup.train_ids), "val_cases": setup.val_ids},
            "runs": runs,
            "summary": summary,
        }  # fmt: skip
        args.save.write_text(json.dumps(figures, indent=1, allow_nan=False) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(math.isfinite(r["dice"]["mean"]) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
