"""Shared fixtures: where the real data lives, and the demo dataset generator.

Real data sits beside the project at ``../shared/data``. On a developer machine
without it, tests that need it skip; in CI (``CI=true``) a missing folder is a
failure, so CI can never pass by skipping the real-data tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The medseg command line, run as a real subprocess with this interpreter.
MEDSEG = [sys.executable, "-m", "medseg.cli.main"]
SHARED_DATA = ROOT.parent / "shared" / "data"
DICOM = SHARED_DATA / "dicom"


def run_medseg(*args, **kwargs) -> subprocess.CompletedProcess:
    """``medseg ARGS`` as a user runs it (a subprocess), output captured as text."""
    return subprocess.run([*MEDSEG, *map(str, args)], capture_output=True, text=True, **kwargs)


def markdown_rows(text: str) -> dict[str, list[str]]:
    """Row label -> cells of the markdown tables in ``text`` (the benchmarks print them);
    rows with an empty first cell (a header over the labels) and rules are left out."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| -"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0]:
                rows[cells[0]] = cells[1:]
    return rows


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real test data missing in CI: {path}")
        pytest.skip(f"real test data not available: {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def hippocampus(shared_data: Path) -> Path:
    return _require(shared_data / "Task04_Hippocampus")


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    return _require(shared_data / "dicom")


def load_demo_module(script: str = "demo.py", name: str = "medseg_demo"):
    """Import a generator from ``datasets/`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "datasets" / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_module():
    return load_demo_module()


@pytest.fixture(scope="session")
def cascade_module():
    """``datasets/cascade_demo.py``: large enough for nnU-Net's rules to plan the cascade."""
    return load_demo_module("cascade_demo.py", "medseg_cascade_demo")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory, demo_module) -> Path:
    """A small demo dataset (6 training, 2 test cases), generated once per session."""
    return demo_module.write_dataset(tmp_path_factory.mktemp("demo") / "Demo", 6, 2, seed=0)


#: Fixtures that train models: every test using one (directly or through another fixture)
#: is marked slow, so 'make test-fast' stays fast and CI still runs them.
TRAINING_FIXTURES = {"demo_models"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory, demo_dataset):
    """Tiny 3d_fullres and 2d models, two folds each, trained and fold-validated on the
    demo data (seconds each on CPU). Returns (root, plans, splits, checkpoints) with
    root/<config>/fold_<k>/ laid out as 'medseg train' writes it."""
    from medseg.dataset import load_dataset
    from medseg.fingerprint.extract import extract_fingerprint
    from medseg.planning.planner import PlannerSettings, plan_experiment
    from medseg.planning.splits import make_splits
    from medseg.prepare.preprocess import preprocess_dataset
    from medseg.training.loop import TrainSettings, train
    from medseg.validation.fold import ValidationSettings, validate_fold

    root = tmp_path_factory.mktemp("demo_models")
    spec = load_dataset(demo_dataset)
    tiny = PlannerSettings(
        gpu_memory_gb=0.5,
        base_features=4,
        configurations=("2d", "3d_fullres"),
        patch_size={"3d_fullres": (8, 32, 32), "2d": (32, 32)},
    )
    plans = plan_experiment(extract_fingerprint(spec), tiny)
    splits = make_splits([c.case_id for c in spec.training], 2, seed=0)
    checkpoints: dict = {}
    for config in ("3d_fullres", "2d"):
        preprocess_dataset(spec, plans, config, root / "pre" / config)
        for fold in (0, 1):
            out = root / "models" / config / f"fold_{fold}"
            settings = TrainSettings(
                config, fold, device="cpu", epochs=2, iterations=6, val_iterations=1, workers=0
            )
            train(plans, splits, root / "pre" / config, out, settings)
            checked = ValidationSettings(fold, device="cpu", mirroring=False)
            validate_fold(out, plans, splits, root / "pre" / config, checked, dataset=demo_dataset)
            checkpoints.setdefault(config, {})[fold] = out / "checkpoint_final.safetensors"
    return root, plans, splits, checkpoints


def make_untrained_model(
    dataset: Path, root: Path, patch: tuple[int, ...], cases: int | None = None
) -> Path:
    """A tiny untrained 3d_fullres model folder in ``root``, planned on ``dataset`` (its
    first ``cases`` training cases) with ``patch``: seeded random weights give a noisy,
    non-empty label map in seconds, for tests of reading, prediction and writing."""
    import torch

    from medseg.dataset import load_dataset
    from medseg.dataset.layout import DatasetSpec
    from medseg.fingerprint.extract import extract_fingerprint
    from medseg.inference.bundle import export_model
    from medseg.nets.checkpoint import save_checkpoint
    from medseg.nets.unet import build_network
    from medseg.planning.planner import PlannerSettings, plan_experiment

    full = load_dataset(dataset)
    spec = DatasetSpec(**{**full.__dict__, "training": full.training[:cases]})
    tiny = PlannerSettings(
        gpu_memory_gb=0.5,
        base_features=4,
        configurations=("3d_fullres",),
        patch_size={"3d_fullres": tuple(patch)},
    )
    plans = plan_experiment(extract_fingerprint(spec), tiny)
    config = plans["configurations"]["3d_fullres"]
    torch.manual_seed(0)
    network = build_network(config["architecture"], 1, len(plans["labels"]))
    save_checkpoint(root / "weights.safetensors", network, {"configuration": config})
    members = [{"configuration": "3d_fullres", "folds": [0]}]
    return export_model(
        root / "model", plans, members, {"3d_fullres": {0: root / "weights.safetensors"}}
    )


@pytest.fixture(scope="session")
def untrained_model(hippocampus, tmp_path_factory) -> Path:
    """A tiny untrained model planned on 4 Hippocampus cases (MR, 3 labels): a noisy,
    non-empty label map on the real MR series."""
    return make_untrained_model(hippocampus, tmp_path_factory.mktemp("mr_model"), (32, 32, 32), 4)
