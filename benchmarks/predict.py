"""medseg predict vs nnU-Net's predictor, side by side, with the same nnU-Net v2 model.

Both predict the same images with the same nnU-Net v2 results folder
(``Trainer__Plans__3d_fullres`` with ``fold_K/checkpoint_final.pth``), on the same
device, with test-time mirroring on, one run each, as their users run them: medseg as
``medseg predict -m MODEL -i FILES -o OUT --formats nifti``; nnU-Net through
``nnUNetPredictor.predict_from_files`` with 2 processes for preprocessing and 2 for
export (``nnUNetv2_predict``'s ``-npp 2 -nps 2``). Reports wall time (total and per
case, process start-up included), peak resident memory (summed over each tool's process
tree, sampled every 20 ms), the share of voxels whose labels agree, and the ratios.

``nnUNetv2_predict`` itself cannot start on a CPU-only machine: it finds the trainer
class by name, which imports every trainer module, including ``primus/``, which imports
timm and so torchvision, a CUDA build that fails on import there (see
``../shared/NNUNET_ORACLE.md``). So nnU-Net's side runs ``tests/nnunet_model.py
predict``: it builds the network from the plans (deep supervision off), loads each fold's
weights, sets the predictor up with ``manual_initialization`` (tile step 0.5, Gaussian,
mirroring on, ``perform_everything_on_device=False`` on CPU) and calls
``predict_from_files``: after loading the model, the very path ``nnUNetv2_predict`` takes.

Without ``--model``, a model is made first (not timed): nnU-Net plans and preprocesses
10 Hippocampus cases (its default SimpleITK reader; planner memory target
``--gpu-memory-gb``, 8 GB by default, gives nnU-Net's own Hippocampus plans: patch
40x56x40, 4 stages, 32..256 features) and ``nnUNetTrainer`` trains fold 0 for a few
iterations (the weights do not change the timing). The next ``--cases`` images
of the dataset are predicted.

    .venv/bin/python benchmarks/predict.py [--model DIR] [--cases 10] [--threads N]
        [--workers N] [--engine openvino|torch]

medseg runs with ``--workers`` (default 1: one case at a time on all cores) and
``--engine openvino`` (default; OpenVINO's CPU kernels, float32). Its one-time
conversion of the model into the engine cache (as after installing a model) is done
first and reported separately, not in the timed runs.

``--threads`` sets ``OMP_NUM_THREADS`` for both tools (default: torch's default). On a
shared machine, torch's intra-op threads waiting on a busy core can slow convolutions
down several times, for both tools alike but not evenly: quote figures from a quiet
machine. Not a test: run it by hand and quote its table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the nnU-Net model and driver used by the tests
import nnunet_model  # noqa: E402
from preprocess import BIN, run_measured, warm_page_cache  # noqa: E402  (benchmarks/)

N_TRAIN = 10


def make_model(dataset: Path, work: Path, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Train a small nnU-Net model on the first cases; return it and the other case ids."""
    meta = json.loads((dataset / "dataset.json").read_text())
    ids = [nnunet_model.case_id(Path(item["image"])) for item in meta["training"]]
    model = nnunet_model.train_tiny_model(
        dataset,
        work / "train",
        ids[:N_TRAIN],
        dataset_id=932,
        name="BenchPredict",
        gpu_memory_gb=args.gpu_memory_gb,
        base_features=args.base_features,
        iterations=args.iterations,
        folds=tuple(args.folds),
        threads=args.threads,
    )
    return model, ids[N_TRAIN:]


def run_medseg(model: Path, inputs: list[Path], out: Path, args, env: dict) -> dict:
    cmd = [
        BIN / "medseg",
        "predict",
        "-m",
        model,
        "-i",
        *inputs,
        "-o",
        out,
        "--formats",
        "nifti",
        "--device",
        args.device,
        "--folds",
        *args.folds,
        "--workers",
        str(args.workers),
        "--engine",
        args.engine,
        "--engine-cache",
        out.parent / "engine-cache",
    ]
    wall, peak = run_measured(cmd, env)
    return {"wall": wall, "peak": peak}


def run_nnunet(model: Path, inputs: list[Path], out: Path, args, env: dict) -> dict:
    if args.device != "cpu":
        raise SystemExit("the nnU-Net driver runs on the CPU only; use --device cpu")
    cmd = nnunet_model.predict_command(
        model, inputs, out, folds=tuple(args.folds), mirroring=True, processes=args.processes
    )
    wall, peak = run_measured(cmd, env)
    return {"wall": wall, "peak": peak}


def label_agreement(ours: Path, theirs: Path, inputs: list[Path]) -> float:
    """Share of all voxels (of all cases) with the same label in both outputs."""
    same = total = 0
    for image in inputs:
        name = f"{nnunet_model.case_id(image)}.nii.gz"
        a = np.asanyarray(nib.load(ours / name).dataobj)
        b = np.asanyarray(nib.load(theirs / name).dataobj)
        if a.shape != b.shape:
            raise RuntimeError(f"{name}: medseg {a.shape} vs nnU-Net {b.shape}")
        same, total = same + int(np.sum(a == b)), total + a.size
    return same / total


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="nnU-Net v2 results folder (default: train one); the last "
        "--cases images of the dataset are predicted",
    )
    parser.add_argument("--cases", type=int, default=10, help="images to predict")
    parser.add_argument("--folds", nargs="+", default=["0"], help="folds to use")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "-j",
        "--processes",
        type=int,
        default=2,
        help="nnU-Net's preprocessing and export processes (each)",
    )
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both tools")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="medseg predict --workers (default: 1)",
    )
    parser.add_argument(
        "--engine",
        choices=("torch", "openvino"),
        default="openvino",
        help="medseg predict --engine (default: openvino)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (median reported)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, help="planner target")
    parser.add_argument("--base-features", type=int, help="narrower network (default: plans')")
    parser.add_argument("--iterations", type=int, default=3, help="training iterations")
    parser.add_argument("--workdir", type=Path, help="keep outputs here (default: a temp dir)")
    return parser.parse_args()


def print_table(runs: dict[str, list[dict]], agreement: float, n: int, header: str) -> None:
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    ours, theirs = med["medseg"], med["nnU-Net"]
    print(f"\n{header}\n")
    print(f"| {'':<22} | {'medseg':>10} | {'nnU-Net':>10} | {'ratio':>6} |")
    print(f"| {'-' * 22} | {'-' * 10} | {'-' * 10} | {'-' * 6} |")
    rows = [
        ("total wall time (s)", ours["wall"], theirs["wall"], ".1f"),
        ("per case (s)", ours["wall"] / n, theirs["wall"] / n, ".2f"),
        ("peak RSS (MB)", ours["peak"] / 1e6, theirs["peak"] / 1e6, ".0f"),
    ]
    for label, a, b, fmt in rows:
        print(f"| {label:<22} | {a:>10{fmt}} | {b:>10{fmt}} | {a / b:>6.2f} |")
    print(f"| {'labels agree (voxels)':<22} | {agreement:>23.4%} | {'':>6} |")


def main() -> int:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-bench-predict-"))
    if args.model is None:
        model, candidates = make_model(args.dataset, work, args)
        inputs = [args.dataset / "imagesTr" / f"{c}.nii.gz" for c in candidates[: args.cases]]
    else:
        model = args.model.resolve()
        inputs = sorted((args.dataset / "imagesTr").glob("*.nii.gz"))[-args.cases :]
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    warm_page_cache(model)
    for image in inputs:
        image.read_bytes()
    if args.engine == "openvino":  # fill the engine cache: a one-time cost per model
        convert = run_medseg(model, inputs[:1], work / "convert", args, env)["wall"]
        print(f"one-time conversion run (1 case, start-up included): {convert:.1f} s")
    load_before = os.getloadavg()[0]
    runs = {"medseg": [], "nnU-Net": []}
    for _ in range(args.repeat):  # alternate, so drift affects both alike
        for name in ("medseg", "nnunet"):
            shutil.rmtree(work / name, ignore_errors=True)
        nnunet_env = nnunet_model.nnunet_env(work, args.threads)
        runs["nnU-Net"].append(run_nnunet(model, inputs, work / "nnunet", args, nnunet_env))
        runs["medseg"].append(run_medseg(model, inputs, work / "medseg", args, env))
    agreement = label_agreement(work / "medseg", work / "nnunet", inputs)
    config = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    features = config["architecture"]["arch_kwargs"]["features_per_stage"]
    print_table(
        runs,
        agreement,
        len(inputs),
        f"{len(inputs)} cases of {args.dataset.name}, {model.parent.name}, folds "
        f"{' '.join(args.folds)}, patch {config['patch_size']}, features {features}, "
        f"device {args.device}, mirroring on, medseg --workers {args.workers} "
        f"--engine {args.engine}, "
        f"{args.repeat} run(s) each, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{env.get('OMP_NUM_THREADS', 'unset')}, 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
