"""Train a tiny real nnU-Net v2 model on CPU, and predict with nnU-Net's own predictor.

Test and benchmark support for running nnU-Net v2 results folders in medseg: it makes a
genuine ``nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres`` folder
(``plans.json``, ``dataset.json``, ``fold_K/checkpoint_final.pth``) and gives nnU-Net's
predictions for it, to compare medseg's with.

nnU-Net's trainer registry, ``nnUNetv2_train`` and ``nnUNetv2_predict`` import torchvision,
which is broken on CPU-only machines (``../shared/NNUNET_ORACLE.md``). So this file is
also the driver script that runs nnU-Net in a subprocess, with the ``nnUNet_*``
environment of a work folder:

- ``train``: ``nnUNetTrainer`` imported directly (``plans["continue_training"] = False``),
  one epoch of a few iterations, ``run_training()`` (nnU-Net's final validation, which
  its CLI runs afterwards, is not run). Data augmentation runs in the main process
  (``nnUNet_n_proc_DA=0``: no augmentation workers on a small machine).
- ``predict``: ``nnUNetPredictor`` (tile step 0.5, Gaussian, mirroring as asked,
  ``perform_everything_on_device=False`` on CPU) set up with ``manual_initialization``
  from the network built from the plans (deep supervision off) and each fold's weights,
  then ``predict_from_files`` with background processes for pre- and postprocessing,
  exactly the path ``nnUNetv2_predict`` takes after loading the model. With ``--float32``
  its tile blending is patched to float32 (an exact reference; see ``_blend_in_float32``).

nnU-Net writes ``CASE.nii.gz`` (SimpleITK, the input's geometry) and, with probabilities,
``CASE.npz`` (``probabilities`` float32 ``(K, *spatial)`` in the reader's array order:
SimpleITK ``(z, y, x)``, i.e. nibabel's ``(X, Y, Z)`` reversed) and ``CASE.pkl``.
Workers start with spawn, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from nnunet_oracle import _nnunet_env, _tails, run_nnunet, to_nnunet_raw

CONFIGURATION = "3d_fullres"
MODEL_FOLDER = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
STEP_TIMEOUT_S = 1800


def nnunet_env(work: Path, threads: int | None = None) -> dict[str, str]:
    """The ``nnUNet_*`` environment of ``work``, data augmentation in the main process.

    ``threads`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads); None leaves it.
    """
    env = _nnunet_env(Path(work).resolve())
    env["nnUNet_n_proc_DA"] = "0"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_tiny_model(
    source: Path,
    work: Path,
    cases: list[str],
    *,
    dataset_id: int = 931,
    name: str = "TinyHippo",
    gpu_memory_gb: float = 0.1,
    base_features: int | None = 8,
    iterations: int = 10,
    folds: tuple[int, ...] = (0,),
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """Plan, preprocess and train a small nnU-Net v2 ``3d_fullres`` model on the CPU.

    Parameters
    ----------
    source : Path
        An MSD or nnU-Net v2 raw dataset folder (see :func:`nnunet_oracle.to_nnunet_raw`).
    work : Path
        Work folder; gets ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``.
    cases : list of str
        Training cases. nnU-Net's own 5-fold split of them decides the validation cases.
    dataset_id, name : int, str
        nnU-Net dataset id and name.
    gpu_memory_gb : float
        Planner memory target: small values give a small patch and fewer stages.
    base_features : int or None
        If given, the plans' ``features_per_stage`` become ``base_features * 2**stage``
        (at most 320) before training, as a user edits nnU-Net plans: the planner's
        32..320 features make a network far too slow for CPU tests. None keeps them.
    iterations : int
        Training iterations of the single epoch.
    folds : tuple of int
        Folds to train, one after the other.
    seed : int
        Seeds torch, numpy and random in the training process.
    threads : int, optional
        Torch threads of the nnU-Net processes (see :func:`nnunet_env`).

    Returns
    -------
    Path
        The results folder, ``nnUNet_results/DatasetXXX_name/`` + :data:`MODEL_FOLDER`.
    """
    work = Path(work).resolve()
    # nnU-Net's default reader (SimpleITK, no reorientation): medseg must follow the plans
    raw = to_nnunet_raw(source, work / "nnUNet_raw", dataset_id, name, reader=None, cases=cases)
    run = run_nnunet(raw, work, configurations=(CONFIGURATION,), gpu_memory_gb=gpu_memory_gb)
    if base_features is not None:
        _set_features(run.preprocessed / f"{run.plans['plans_name']}.json", base_features)
    for fold in folds:
        run_driver(["train", run.preprocessed, fold, iterations, seed], work, threads)
    model = work / "nnUNet_results" / raw.name / MODEL_FOLDER
    missing = [f for f in folds if not (model / f"fold_{f}" / "checkpoint_final.pth").is_file()]
    if missing:
        raise RuntimeError(f"nnU-Net training wrote no checkpoint_final.pth for folds {missing}")
    return model


def _set_features(plans_file: Path, base_features: int) -> None:
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    stages = range(kwargs["n_stages"])
    kwargs["features_per_stage"] = [min(base_features * 2**i, 320) for i in stages]
    plans_file.write_text(json.dumps(plans, indent=4))


def predict_command(
    model: Path,
    inputs: list[Path],
    out: Path,
    *,
    folds: tuple[int, ...] = (0,),
    mirroring: bool = True,
    probabilities: bool = False,
    processes: int = 2,
    float32: bool = False,
) -> list[str]:
    """The command that predicts ``inputs`` (one single-channel file each) with nnU-Net.

    ``out / CASE.nii.gz`` is written for each input, ``CASE`` being the file name without
    its extension; with ``probabilities`` also ``out / CASE.npz``. ``processes``: for
    preprocessing and for export each (``nnUNetv2_predict -npp -nps``). ``float32``: blend
    tiles in float32 instead of nnU-Net's float16 (patched in; see :func:`_blend_in_float32`).
    """
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "predict",
        str(model),
        str(out),
        "--folds",
        *map(str, folds),
        "--processes",
        str(processes),
        "--inputs",
        *map(str, inputs),
    ]
    if not mirroring:
        cmd.append("--no-mirroring")
    if probabilities:
        cmd.append("--probabilities")
    if float32:
        cmd.append("--float32")
    return cmd


def run_driver(args: list, work: Path, threads: int | None = None) -> str:
    """Run this file with ``args`` in the nnU-Net environment of ``work``; return stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *map(str, args)]
    return run_checked(cmd, nnunet_env(work, threads))


def run_checked(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; return its stdout, raise with its output tail if it fails."""
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out: {' '.join(cmd)}\n{_tails(exc.stdout, exc.stderr)}") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"exit code {done.returncode}: {' '.join(cmd)}\n{_tails(done.stdout, done.stderr)}"
        )
    return done.stdout


def case_id(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (as nnU-Net and medseg name outputs)."""
    name = Path(path).name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    raise ValueError(f"{path}: expected a .nii.gz or .nii file")


# --------------------------------------------------------------------------------------
# The driver: runs inside the nnU-Net environment
# --------------------------------------------------------------------------------------


def _train(preprocessed: Path, fold: int, iterations: int, seed: int) -> None:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnUNetv2_train's entry point sets
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    trainer = nnUNetTrainer(plans, CONFIGURATION, fold, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()  # writes fold_K/checkpoint_final.pth, plans.json, dataset.json


def _predictor(model: Path, folds: list[int], mirroring: bool):
    """nnUNetPredictor for ``model`` without nnU-Net's trainer lookup (torchvision)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(load_json(str(model / "plans.json")))
    dataset_json = load_json(str(model / "dataset.json"))
    config = plans.get_configuration(model.name.split("__")[-1])
    parameters, axes = [], None
    for fold in folds:  # as nnUNetPredictor.initialize_from_trained_model_folder loads them
        checkpoint = torch.load(
            model / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False
        )
        parameters.append(checkpoint["network_weights"])
        axes = checkpoint.get("inference_allowed_mirroring_axes", axes)
    network = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        allow_init=True,
        deep_supervision=False,
    )
    network.load_state_dict(parameters[0])
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network, plans, config, parameters, dataset_json, "nnUNetTrainer", axes
    )
    return predictor


def _blend_in_float32() -> None:
    """Make nnU-Net's sliding window accumulate logits and weights in float32, not float16.

    Its accumulators are allocated as ``torch.half`` and its Gaussian map as float16 (scaled
    by 10): in float16 the map underflows towards tile corners, which moves logits near
    the image's edges and corners by up to about 0.5. With this patch nnU-Net computes the
    exact Gaussian-weighted mean it means to.
    """
    import torch
    from nnunetv2.inference import predict_from_raw_data as pfrd
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    class Float32Torch:  # pfrd's view of torch, with torch.half meaning float32
        half = torch.float32

        def __getattr__(self, name: str):
            return getattr(torch, name)

    def gaussian(*args, **kwargs):
        return compute_gaussian(*args, **{**kwargs, "dtype": torch.float32})

    gaussian.cache_clear = compute_gaussian.cache_clear  # called after each batch of cases
    pfrd.torch = Float32Torch()
    pfrd.compute_gaussian = gaussian


def _predict(args: argparse.Namespace) -> None:
    if args.float32:
        _blend_in_float32()
    predictor = _predictor(args.model, args.folds, not args.no_mirroring)
    args.out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files(
        [[str(p)] for p in args.inputs],
        [str(args.out / case_id(p)) for p in args.inputs],
        save_probabilities=args.probabilities,
        overwrite=True,
        num_processes_preprocessing=args.processes,
        num_processes_segmentation_export=args.processes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nnU-Net v2 driver (run in its environment)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("preprocessed", type=Path)
    train.add_argument("fold", type=int)
    train.add_argument("iterations", type=int)
    train.add_argument("seed", type=int)
    predict = sub.add_parser("predict")
    predict.add_argument("model", type=Path)
    predict.add_argument("out", type=Path)
    predict.add_argument("--inputs", type=Path, nargs="+", required=True)
    predict.add_argument("--folds", type=int, nargs="+", default=[0])
    predict.add_argument("--processes", type=int, default=2)
    predict.add_argument("--no-mirroring", action="store_true")
    predict.add_argument("--probabilities", action="store_true")
    predict.add_argument("--float32", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        _train(args.preprocessed, args.fold, args.iterations, args.seed)
    else:
        _predict(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    sys.exit(main())
