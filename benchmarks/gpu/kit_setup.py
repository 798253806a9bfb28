"""Setting the GPU kit up on the machine it runs on (``kit_run.py``'s first steps).

Install the wheels offline into a folder of their own, unpack the prepared data (shrunk
plans for a smoke run), stub what cannot be imported, and make the children's
environment: ``PYTHONPATH`` (medseg from the working tree, the kit, the stubs; first, a
device-like import blocker when emulating) and nnU-Net's folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import device_like
from kit_packages import STUBBED

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NNUNET_FOLDER = "Dataset004_Hippocampus"
SMOKE_PLANS = {"batch_size": 2}  # the patch stays: one tile per case in validation
PROBE = """import importlib.metadata as m, json, os, platform, torch
def v(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
    "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count(),
    "numpy": v("numpy"), "nnunetv2": v("nnunetv2"), "blosc2": v("blosc2"),
    "monai": v("monai")}))
"""


def install(kit: Path, site: Path) -> None:
    """The kit's wheels into ``site``, offline, without dependencies."""
    wheels = kit / "wheels"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--disable-pip-version-check"]
    cmd += ["--target", site, "--find-links", wheels, "-r", wheels / "requirements.txt"]
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"installing the kit failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    sys.path.insert(0, str(site))  # this process imports benchmarks/train.py (nibabel)


def unpack(kit: Path, data: Path, smoke: bool) -> dict:
    """The prepared data into ``data``; its 3d_fullres patch and batch (smoke: shrunk)."""
    with tarfile.open(kit / "data.tar.xz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(data, filter="data")
        else:  # Python before 3.11.4: our own archive, from build_kit.py
            tar.extractall(data)  # noqa: S202
    documents = [
        data / "medseg" / "plans.json",
        data / "nnunet" / "nnUNet_preprocessed" / NNUNET_FOLDER / "nnUNetPlans.json",
    ]
    for path in documents:
        plans = json.loads(path.read_text())
        config = plans["configurations"]["3d_fullres"]
        if smoke:
            config.update(SMOKE_PLANS)
            path.write_text(json.dumps(plans, indent=1))
    return {k: config[k] for k in ("patch_size", "batch_size")}


def stubs(work: Path, emulate: bool) -> list[str]:
    """Copy the stubs of the modules that cannot be imported (all, when emulating) into
    ``work/stubs``; their names."""
    import importlib.util

    names = [m for m in STUBBED if emulate or importlib.util.find_spec(m) is None]
    for name in names:
        shutil.copytree(HERE / "stubs" / name, work / "stubs" / name)
    return names


def environment(args: argparse.Namespace, work: Path, site: Path | None, stubbed: list) -> dict:
    """The children's environment: PYTHONPATH, nnU-Net's folders, smoke settings."""
    paths = [str(device_like.write_sitecustomize(work / "emulate"))] if args.emulate_device else []
    paths += [str(ROOT)] + ([str(site)] if site else [])
    paths += [str(work / "stubs")] if stubbed else []
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
    env["nnUNet_raw"] = str(work / "nnUNet_raw")
    env["nnUNet_preprocessed"] = str(work / "data" / "nnunet" / "nnUNet_preprocessed")
    env["nnUNet_results"] = str(work / "nnUNet_results")
    if args.smoke:
        env["nnUNet_def_n_proc"] = "2"  # nnU-Net's export processes in its validation
    if args.nnunet_compile != "default":
        env["nnUNet_compile"] = "t" if args.nnunet_compile == "on" else "f"
    return env
