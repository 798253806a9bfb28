"""One call on the lent GPU machine: medseg vs nnU-Net v2 on Hippocampus 3d_fullres.

    python3 benchmarks/gpu/kit_run.py                      # there (README.md: the call)
    .venv/bin/python benchmarks/gpu/kit_run.py --device cpu --smoke --no-install \
        --emulate-device --out DIR                         # here: the CPU dry run

Installs the kit's wheels offline into a folder of their own (``pip --target``,
``--no-deps``: the machine's torch and numpy stay), puts medseg on ``PYTHONPATH`` from
the working tree, stubs what is imported but unused (``kit_packages.STUBBED``), unpacks
the prepared data, then runs four parts, each in processes of its own with its own time
budget (what a part leaves unused goes to the next; a part out of time is stopped and
reported as such, and the rest still run):

(a) ``pytest -m gpu`` on the test files that carry the marker;
(b) training iterations/s, medseg vs ``nnUNetTrainer``, nnU-Net's default plans, each
    with its GPU defaults (benchmarks/train.py's two drivers);
(c) Dice after the same short schedule, each tool's own training and fold validation
    (``kit_medseg.py``, ``kit_nnunet.py dice``);
(d) prediction seconds per case of one nnU-Net model (the one trained in (c)) by
    nnU-Net's predictor and medseg's sliding window (``kit_nnunet.py predict``).

Writes ``results.md``, ``results.json`` and ``kit_run.log`` (every process's output) to
``--out``, by default ``$OUT``. ``--smoke`` shrinks everything (patch 16x24x16, batch
2, a few iterations and cases) so that the whole run takes a minute or two on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benchmarks"))
from kit_report import markdown  # noqa: E402
from kit_setup import NNUNET_FOLDER, PROBE, environment, install, stubs, unpack  # noqa: E402

NNUNET_MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
#: Seconds per part; with the set-up (install, unpack: about 15 s) within 8 minutes.
BUDGETS = {"tests": 40, "speed": 120, "dice": 250, "predict": 50}


@dataclass
class Run:
    """One kit run: its settings, folders, the children's environment, what it found."""

    args: argparse.Namespace
    work: Path
    env: dict
    start: float = field(default_factory=time.monotonic)
    logs: list[Path] = field(default_factory=list)
    errors: dict = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def nnunet_pre(self) -> Path:
        return self.data / "nnunet" / "nnUNet_preprocessed" / NNUNET_FOLDER

    def left(self) -> float:
        return self.args.budget_total - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:4.0f} s] {text}", flush=True)


def _kill(proc: subprocess.Popen) -> None:
    """Stop a child and everything it started (data-loader workers too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def child(run: Run, name: str, cmd: list, timeout: float, env: dict | None = None) -> dict:
    """Run one process with a time limit; its status, seconds and log file."""
    log = run.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run.logs.append(log)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or run.env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=max(1.0, timeout))
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            _kill(proc)
            status = "out of time"
    seconds = time.monotonic() - start
    if status != "ok":
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        run.errors[name] = f"{status} after {seconds:.0f} s: " + " / ".join(tail)[-600:]
    return {"status": status, "seconds": seconds, "log": log}


def _result(outcome: dict, path: Path) -> dict:
    """A tool's figures (its JSON result file) with its status."""
    figures = json.loads(path.read_text()) if outcome["status"] == "ok" else {}
    return {"status": outcome["status"], "seconds": round(outcome["seconds"], 1), **figures}


def _medseg_work(run: Run, folder: Path) -> Path:
    """A medseg work folder: the data's plans, splits and store, a model of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "splits.json", "pre"):
        (folder / name).symlink_to(run.data / "medseg" / name)
    return folder


def _nnunet_env(run: Run, results: Path) -> dict:
    env = {**run.env, "nnUNet_results": str(results)}
    if run.args.nnunet_workers is not None:
        env["nnUNet_n_proc_DA"] = str(run.args.nnunet_workers)
    return env


def part_tests(run: Run, allowed: float) -> dict:
    files = sorted(p for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    xml = run.work / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    outcome = child(run, "tests", [*cmd, f"--junitxml={xml}", *files], allowed)
    part = {"status": outcome["status"], "files": [p.name for p in files]}
    if xml.is_file():
        import xml.etree.ElementTree as ET

        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        part.update(
            passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            failed=counts["failures"],
            errors=counts["errors"],
            skipped=counts["skipped"],
            failures=[
                f"{case.get('classname')}::{case.get('name')}"
                for case in suite.iter("testcase")
                if case.find("failure") is not None or case.find("error") is not None
            ],
        )
        if outcome["status"].startswith("failed (exit 1)"):  # tests failed, pytest ran
            part["status"] = "tests failed"
    return part


def part_speed(run: Run, allowed: float) -> dict:
    from train import MEDSEG_DRIVER, NNUNET_DRIVER, _last_json  # benchmarks/train.py

    a = run.args
    folder = run.work / "speed"
    _medseg_work(run, folder / "medseg")
    drivers = {}
    for name, text in (("medseg", MEDSEG_DRIVER), ("nnunet", NNUNET_DRIVER)):
        drivers[name] = folder / f"{name}_driver.py"
        drivers[name].write_text(text)
    timed = [a.iterations, a.warmup, a.device]
    deadline = time.monotonic() + allowed
    part = {"warmup": a.warmup, "iterations": a.iterations, "workers": a.workers}
    cmd = [sys.executable, drivers["medseg"], folder / "medseg", *timed, a.workers]
    ours = child(run, "speed_medseg", cmd, allowed / 2)
    env = _nnunet_env(run, folder / "nnunet_results")
    cmd = [sys.executable, drivers["nnunet"], run.nnunet_pre, *timed]
    theirs = child(run, "speed_nnunet", cmd, deadline - time.monotonic(), env)
    for name, outcome in (("medseg", ours), ("nnunet", theirs)):
        figures = _last_json(outcome["log"].read_text()) if outcome["status"] == "ok" else {}
        part[name] = {"status": outcome["status"], "seconds": round(outcome["seconds"], 1)}
        part[name].update(figures)
    return part


def part_dice(run: Run, allowed: float) -> dict:
    a = run.args
    folder = run.work / "dice"
    schedule = ["--device", a.device, "--epochs", a.epochs, "--iterations", a.epoch_iterations]
    schedule += ["--val-iterations", a.val_iterations]
    deadline = time.monotonic() + allowed
    work = _medseg_work(run, folder / "medseg")
    cmd = [sys.executable, HERE / "kit_medseg.py", work, folder / "medseg.json", *schedule]
    ours = child(run, "dice_medseg", [*cmd, "--workers", a.workers], allowed / 2)
    env = _nnunet_env(run, folder / "nnunet_results")
    cmd = [sys.executable, HERE / "kit_nnunet.py", "dice", run.nnunet_pre, folder / "nnunet.json"]
    theirs = child(run, "dice_nnunet", [*cmd, *schedule], deadline - time.monotonic(), env)
    return {
        "epochs": a.epochs,
        "epoch_iterations": a.epoch_iterations,
        "medseg": _result(ours, folder / "medseg.json"),
        "nnunet": _result(theirs, folder / "nnunet.json"),
    }


def part_predict(run: Run, allowed: float) -> dict:
    a = run.args
    trained = [
        run.work / part / "nnunet_results" / NNUNET_FOLDER / NNUNET_MODEL / "fold_0"
        for part in ("dice", "speed")
    ]
    found = [f / "checkpoint_final.pth" for f in trained if (f / "checkpoint_final.pth").is_file()]
    result = run.work / "predict.json"
    cmd = [sys.executable, HERE / "kit_nnunet.py", "predict", run.nnunet_pre, result]
    cmd += ["--device", a.device, "--cases", a.cases]
    cmd += ["--checkpoint", found[0]] if found else []
    env = _nnunet_env(run, run.work / "predict_results")
    outcome = child(run, "predict", cmd, allowed, env)
    part = {"status": outcome["status"], "cases": a.cases}
    if outcome["status"] == "ok":
        part["result"] = json.loads(result.read_text())
    if not found:
        part["note"] = "no trained checkpoint: freshly initialised weights"
    return part


PARTS = {"tests": part_tests, "speed": part_speed, "dice": part_dice, "predict": part_predict}


def _defaults(args: argparse.Namespace) -> None:
    smoke = {"warmup": 1, "iterations": 2, "epochs": 1, "epoch_iterations": 3, "cases": 2}
    full = {"warmup": 20, "iterations": 100, "epochs": 3, "epoch_iterations": 250, "cases": 20}
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.workers is None:  # medseg train's default
        args.workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    if args.out is None:
        if not os.environ.get("OUT"):
            raise SystemExit("give --out DIR (or set OUT)")
        args.out = Path(os.environ["OUT"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny plans and counts (CPU dry run)")
    p.add_argument("--no-install", action="store_true", help="use this interpreter's packages")
    p.add_argument("--emulate-device", action="store_true", help="block what the GPU lacks")
    p.add_argument("--kit", type=Path, default=HERE / "kit", help="wheels/, data.tar.xz")
    p.add_argument("--out", type=Path, help="results folder (default: $OUT)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of parts")
    p.add_argument("--budget-total", type=float, default=460, help="seconds for all parts")
    for name, seconds in BUDGETS.items():
        p.add_argument(f"--budget-{name}", type=float, default=seconds, metavar="S")
    p.add_argument("--warmup", type=int, help="(b) untimed iterations (default 20)")
    p.add_argument("--iterations", type=int, help="(b) timed iterations (default 100)")
    p.add_argument("--epochs", type=int, help="(c) epochs (default 3)")
    p.add_argument("--epoch-iterations", type=int, help="(c) iterations per epoch (250)")
    p.add_argument("--val-iterations", type=int, default=5, help="(c) per epoch")
    p.add_argument("--cases", type=int, help="(d) cases predicted (default 20)")
    p.add_argument("--workers", type=int, help="medseg's data workers (its default)")
    p.add_argument("--nnunet-workers", type=int, help="nnU-Net's augmentation processes")
    p.add_argument("--nnunet-compile", choices=("default", "on", "off"), default="default")
    args = p.parse_args(argv)
    _defaults(args)
    return args


def _write(run: Run, results: dict) -> None:
    out = run.args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    with open(out / "kit_run.log", "w") as log:
        for path in run.logs:
            log.write(f"===== {path.name}\n{path.read_text(errors='replace')[-2_000_000:]}\n")


def _part(run: Run, name: str, allowed: float) -> dict:
    """One part, its status (a part of two tools is ok when both are) and its seconds."""
    started = time.monotonic()
    try:
        part = PARTS[name](run, allowed) if allowed >= 1 else {"status": "out of time"}
    except Exception as e:  # a broken part must not cost the others their turn
        run.errors[name] = f"{type(e).__name__}: {e}"
        part = {"status": f"failed ({type(e).__name__})"}
    if "status" not in part:
        tools = {"medseg": "medseg", "nnunet": "nnU-Net"}
        states = {t: part[t]["status"] for t in tools}
        ok = all(v == "ok" for v in states.values())
        part["status"] = "ok" if ok else ", ".join(f"{tools[t]} {v}" for t, v in states.items())
    part.update(seconds=round(time.monotonic() - started, 1), allowed=round(allowed, 1))
    return part


def run_parts(run: Run, budgets: dict, wanted: list[str], results: dict) -> None:
    """The wanted parts in order; what one leaves of its budget goes to the next."""
    slack = 0.0
    for name in (p for p in PARTS if p in wanted):
        allowed = min(budgets[name] + slack, run.left())
        results[name] = part = _part(run, name, allowed)
        slack = max(0.0, allowed - part["seconds"])
        run.say(f"{name}: {part['status']} ({part['seconds']:.0f} s of {allowed:.0f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begun = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-gpu-kit-"))
    work.mkdir(parents=True, exist_ok=True)
    site = None if args.no_install else work / "site"
    if site is not None:
        install(args.kit, site)
    plans = unpack(args.kit, work / "data", args.smoke)
    stubbed = stubs(work, args.emulate_device)
    run = Run(args, work, environment(args, work, site, stubbed))
    run.say(f"kit ready in {work} (stubs: {', '.join(stubbed) or 'none'})")
    probe = child(run, "probe", [sys.executable, "-c", PROBE], 120)
    info = json.loads(probe["log"].read_text().splitlines()[-1]) if probe["status"] == "ok" else {}
    manifest = args.kit / "manifest.json"
    kit = json.loads(manifest.read_text()) if manifest.is_file() else {}
    cases = len((kit.get("data") or {}).get("cases", [])) or None
    run.say(f"{info.get('gpu') or args.device}, torch {info.get('torch')}, {cases} cases")
    budgets = {"total": args.budget_total, **{k: getattr(args, f"budget_{k}") for k in BUDGETS}}
    results = {"device": args.device, "smoke": args.smoke, "info": info, "plans": plans}
    results.update(kit=kit, cases=cases, stubs=stubbed, budgets=budgets, parts={})
    results["settings"] = {k: getattr(args, k) for k in ("workers", "nnunet_workers")}
    results["settings"]["nnunet_compile"] = args.nnunet_compile
    run_parts(run, budgets, [p for p in args.parts.split(",") if p], results["parts"])
    results.update(setup_seconds=run.start - begun, errors=run.errors)
    results["wall_seconds"] = time.monotonic() - begun
    _write(run, results)
    print("\n" + markdown(results), flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
