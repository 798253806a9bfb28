"""Build the GPU kit: the wheels the lent GPU machine lacks, and prepared Hippocampus data.

    .venv/bin/python benchmarks/gpu/build_kit.py [--out benchmarks/gpu/kit] [--cases 100]
        [--skip-wheels] [--skip-data] [--dataset DIR] [-j 2]

(``make gpu-kit``.) Writes, into the ignored folder OUT:

- ``wheels/``: :data:`kit_packages.KIT_PACKAGES` at the versions installed in this
  interpreter, without dependencies: pure wheels once, binary wheels for CPython 3.11
  and 3.12 manylinux x86_64 (sdist-only packages are built into wheels here), and
  ``requirements.txt`` naming them, for ``pip install --no-index --find-links``;
- ``data.tar.xz``: ``medseg/`` (``plans.json``, ``splits.json``, ``pre/``: medseg's
  3d_fullres store) and ``nnunet/nnUNet_preprocessed/Dataset004_Hippocampus/`` (nnU-Net
  v2's plans, dataset.json, ``splits_final.json``, ``nnUNetPlans_3d_fullres/`` and
  ``gt_segmentations/``) for the first ``--cases`` cases. Both tools plan on the whole
  dataset (nnU-Net's default plans: patch 40x56x40, batch 7), then preprocess the subset;
  both get the same 5-fold split (medseg's, written in both formats). Each tool's own
  files, unchanged, in the formats the GPU machine reads with the kit's blosc2 and pickle;
  xz because nnU-Net's class-location pickles shrink tenfold;
- ``manifest.json``: what is in it, with sizes; the sizes are also printed, beside the
  working tree's, against the 64 MiB that may travel.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # nnU-Net conversion and driving, as the tests use
sys.path.insert(0, str(HERE))
from kit_packages import (  # noqa: E402
    BINARY_PACKAGES,
    DEVICE_PLATFORMS,
    DEVICE_PYTHONS,
    KIT_PACKAGES,
    PURE_PACKAGES,
)
from nnunet_oracle import _nnunet_env, _run_step, run_nnunet, to_nnunet_raw  # noqa: E402

DATASET = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
NNUNET_ID, NNUNET_NAME = 4, "Hippocampus"
NNUNET_FOLDER = f"Dataset{NNUNET_ID:03d}_{NNUNET_NAME}"
DATA_FILE = "data.tar.xz"
TRAVEL_LIMIT = 64 * 1024**2
MEDSEG = [sys.executable, "-m", "medseg.cli.main"]


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"pip {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def download_wheels(dest: Path) -> dict[str, str]:
    """Fetch the kit's wheels into an emptied ``dest``; return name -> version."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pins = {name: importlib.metadata.version(name) for name in KIT_PACKAGES}
    for name in PURE_PACKAGES:
        spec = f"{name}=={pins[name]}"
        try:
            _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec)
        except RuntimeError:  # published as an sdist only (acvl_utils): build the wheel here
            _pip("wheel", "--no-deps", "-w", str(dest), spec)
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    for name in BINARY_PACKAGES:
        for python in DEVICE_PYTHONS:
            _pip(
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                python,
                *platforms,
                "-d",
                str(dest),
                f"{name}=={pins[name]}",
            )
    lines = [f"{name}=={version}" for name, version in pins.items()]
    (dest / "requirements.txt").write_text("\n".join(lines) + "\n")
    return pins


def _subset_dataset(dataset: Path, cases: list[str], dest: Path) -> Path:
    """An MSD-layout folder of ``cases`` only (files symlinked), for medseg's preprocess."""
    meta = json.loads((dataset / "dataset.json").read_text())
    keep = [e for e in meta["training"] if _case_id(e["image"]) in set(cases)]
    for entry in keep:
        for key in ("image", "label"):
            target = dest / entry[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((dataset / entry[key]).resolve())
    meta.update(training=keep, numTraining=len(keep), test=[], numTest=0)
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest


def _case_id(image: str) -> str:
    return Path(image).name.removesuffix(".nii.gz")


def prepare_medseg(dataset: Path, subset: Path, out: Path, jobs: int) -> dict:
    """medseg fingerprint + plan on the whole dataset, split + preprocess the subset."""
    steps = [
        ["fingerprint", dataset, "-o", out / "fingerprint.json", "-j", jobs],
        ["plan", out / "fingerprint.json", "-o", out / "plans.json"]
        + ["--configurations", "3d_fullres"],
        ["split", subset, "-o", out / "splits.json", "--folds", "5"],
        ["preprocess", subset, out / "plans.json", "--config", "3d_fullres"]
        + ["-o", out / "pre", "-j", jobs],
    ]
    for step in steps:
        subprocess.run([*MEDSEG, *map(str, step)], check=True, capture_output=True)
    return json.loads((out / "splits.json").read_text())


def prepare_nnunet(dataset: Path, cases: list[str], work: Path, splits: dict, jobs: int) -> Path:
    """nnU-Net fingerprint + plan on the whole dataset, preprocess the subset; its folder."""
    raw = to_nnunet_raw(dataset, work / "nnUNet_raw", NNUNET_ID, NNUNET_NAME)
    run = run_nnunet(raw, work, configurations=("3d_fullres",), processes=jobs, preprocess=False)
    for folder in ("imagesTr", "labelsTr"):  # planned on all cases; preprocess the subset
        for path in (raw / folder).iterdir():
            if path.name.split(".")[0].removesuffix("_0000") not in set(cases):
                path.unlink()
    meta = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(cases)}, indent=2))
    bin_dir = Path(sys.executable).parent
    cmd = [bin_dir / "nnUNetv2_preprocess", "-d", str(NNUNET_ID), "-plans_name", "nnUNetPlans"]
    _run_step([*cmd, "-c", "3d_fullres", "-np", str(jobs), "--no_pbar"], _nnunet_env(work))
    folds = [{"train": f["train"], "val": f["val"]} for f in splits["folds"]]
    (run.preprocessed / "splits_final.json").write_text(json.dumps(folds, indent=1))
    return run.preprocessed


def build_data(dataset: Path, n_cases: int, out: Path, jobs: int) -> dict:
    """Write ``out/data.tar.xz``; return its manifest entry."""
    meta = json.loads((dataset / "dataset.json").read_text())
    cases = sorted(_case_id(e["image"]) for e in meta["training"])[:n_cases]
    with tempfile.TemporaryDirectory(prefix="medseg-gpu-kit-") as tmp:
        work = Path(tmp)
        subset = _subset_dataset(dataset, cases, work / "subset" / dataset.name)
        splits = prepare_medseg(dataset, subset, work / "medseg", jobs)
        pre = prepare_nnunet(dataset, cases, work / "nnunet", splits, jobs)
        members = {
            "medseg/plans.json": work / "medseg" / "plans.json",
            "medseg/splits.json": work / "medseg" / "splits.json",
            "medseg/pre": work / "medseg" / "pre",
        }
        nn_arc = f"nnunet/nnUNet_preprocessed/{NNUNET_FOLDER}"
        for name in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
            members[f"{nn_arc}/{name}"] = pre / name
        for name in ("splits_final.json", "nnUNetPlans_3d_fullres", "gt_segmentations"):
            members[f"{nn_arc}/{name}"] = pre / name
        with tarfile.open(out / DATA_FILE, "w:xz") as tar:
            for arcname, path in members.items():
                tar.add(path, arcname=arcname)
        theirs = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]
        ours = json.loads((work / "medseg" / "plans.json").read_text())["configurations"]
    return {
        "file": DATA_FILE,
        "bytes": (out / DATA_FILE).stat().st_size,
        "dataset": dataset.name,
        "cases": cases,
        "nnunet_folder": NNUNET_FOLDER,
        "plans": {
            tool: {k: plans["3d_fullres"][k] for k in ("patch_size", "batch_size")}
            for tool, plans in (("medseg", ours), ("nnunet", theirs))
        },
    }


def tree_bytes() -> dict[str, int]:
    """Bytes of what travels with the working tree besides the kit: tracked files, and
    untracked files git does not ignore."""

    def total(*args: str) -> int:
        names = subprocess.run(
            ["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True
        ).stdout.split(b"\0")
        paths = (ROOT / n.decode() for n in names if n)
        return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())

    return {"tracked": total(), "untracked": total("--others", "--exclude-standard")}


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    return git("rev-parse", "--short", "HEAD").strip() + ("-dirty" if git("status", "-s") else "")


def _mb(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def report(out: Path, manifest: dict) -> None:
    wheels = sum(w["bytes"] for w in manifest["wheels"])
    data = manifest["data"]["bytes"] if manifest.get("data") else 0
    tree = tree_bytes()
    kit = wheels + data
    travel = kit + tree["tracked"] + tree["untracked"]
    print(f"kit {out}: wheels {_mb(wheels)} ({len(manifest['wheels'])} files), data {_mb(data)}")
    print(
        f"working tree {_mb(tree['tracked'])} tracked + {_mb(tree['untracked'])} untracked; "
        f"all that travels {_mb(travel)} of {_mb(TRAVEL_LIMIT)}"
    )
    if travel > TRAVEL_LIMIT:
        print("warning: over the limit; build with fewer --cases")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "kit")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--cases", type=int, default=100, help="cases preprocessed (default 100)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="processes for preprocessing")
    parser.add_argument("--skip-wheels", action="store_true", help="keep the wheels there are")
    parser.add_argument("--skip-data", action="store_true", help="keep the data there is")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    start = time.perf_counter()
    if not args.skip_wheels:
        manifest["requirements"] = download_wheels(args.out / "wheels")
    wheels = sorted((args.out / "wheels").glob("*.whl"))
    manifest["wheels"] = [{"file": w.name, "bytes": w.stat().st_size} for w in wheels]
    if not args.skip_data:
        manifest["data"] = build_data(args.dataset, args.cases, args.out, args.jobs)
    manifest.update(medseg_commit=_commit(), built=time.strftime("%Y-%m-%d %H:%M:%S"))
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"built in {time.perf_counter() - start:.0f} s")
    report(args.out, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
