"""nnU-Net v2's side of the GPU kit (run by ``kit_run.py``, one process per part).

    python kit_nnunet.py dice    PRE RESULT --device cuda --epochs 3 --iterations 250 \
        --val-iterations 5
    python kit_nnunet.py predict PRE RESULT --device cuda --cases 20 [--checkpoint PTH]

``PRE`` is ``nnUNet_preprocessed/DatasetXXX_Name`` (the ``nnUNet_*`` variables are set by
the caller). ``dice`` trains fold 0 with ``nnUNetTrainer`` (imported directly, not looked
up by name: ``../../../shared/NNUNET_ORACLE.md``) for ``epochs`` of ``iterations``, its
GPU defaults otherwise (torch.compile, its augmentation processes), then runs its own
final validation (sliding window with mirroring, export, Dice against
``gt_segmentations``). ``predict`` gives the same network (the checkpoint, or freshly
initialised weights without one) to nnU-Net's predictor and to medseg's sliding window,
on the fold-0 validation cases as nnU-Net preprocessed them, and times both per case.
Each writes its figures as JSON to ``RESULT``. Workers start with spawn, hence the
``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGURATION = "3d_fullres"


def _its(stamps: list[float], skip: int) -> float | None:
    """Iterations per second between stamp ``skip - 1`` and the last (all, if too few)."""
    if len(stamps) - skip < 2:
        skip = 1
    if len(stamps) - skip < 1:
        return None
    return (len(stamps) - skip) / (stamps[-1] - stamps[skip - 1])


def _trainer(pre: Path, device: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnUNetv2_train's entry point would set
    dataset = load_json(str(pre / "dataset.json"))
    return nnUNetTrainer(plans, CONFIGURATION, 0, dataset, device=torch.device(device))


def dice(args: argparse.Namespace) -> dict:
    trainer = _trainer(args.pre, args.device)
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    stamps: list[float] = []
    step = trainer.train_step

    def timed_step(batch: dict) -> dict:
        out = step(batch)  # returns the loss on the CPU: the step has finished on the GPU
        stamps.append(time.perf_counter())
        return out

    trainer.train_step = timed_step
    start = time.perf_counter()
    trainer.run_training()
    trained = time.perf_counter()
    trainer.perform_actual_validation(False)
    validated = time.perf_counter()
    summary = json.loads((Path(trainer.output_folder) / "validation" / "summary.json").read_text())
    names = {str(v): k for k, v in trainer.dataset_json["labels"].items()}
    per_class = {names[k]: float(v["Dice"]) for k, v in summary["mean"].items()}
    return {
        "dice": per_class,
        "mean_dice": float(summary["foreground_mean"]["Dice"]),
        "iterations": len(stamps),
        "its": _its(stamps, args.iterations),
        "train_seconds": trained - start,
        "validation_seconds": validated - trained,
        "validation_cases": len(summary["metric_per_case"]),
        "compiled": bool(trainer._do_i_compile()),
    }


def _network(pre: Path, checkpoint: Path | None):
    """nnU-Net's network for the plans, deep supervision off, with the checkpoint's weights."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medseg.nets.checkpoint import load_torch_weights

    plans = PlansManager(load_json(str(pre / "nnUNetPlans.json")))
    dataset = load_json(str(pre / "dataset.json"))
    config = plans.get_configuration(CONFIGURATION)
    n_in = determine_num_input_channels(plans, config, dataset)
    n_out = plans.get_label_manager(dataset).num_segmentation_heads
    network = nnUNetTrainer.build_network_architecture(plans, config, n_in, n_out, False)
    if checkpoint is not None:
        weights = load_torch_weights(checkpoint)["network_weights"]
        network.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in weights.items()})
    return network.eval(), plans, config, dataset


def _timed(predict, images: dict, device: str) -> tuple[list[float], dict, float | None]:
    """Seconds per case (after one untimed case), labels, and peak GPU memory (MiB)."""
    import torch

    predict(next(iter(images.values())))  # warm-up: cuDNN algorithm choice, allocator
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, labels = [], {}
    for case_id, image in images.items():
        start = time.perf_counter()
        labels[case_id] = predict(image)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1024**2 if device.startswith("cuda") else None
    return seconds, labels, peak


def predict(args: argparse.Namespace) -> dict:
    import blosc2
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medseg.inference.sliding_window import predict_logits

    network, plans, config, dataset = _network(args.pre, args.checkpoint)
    folds = json.loads((args.pre / "splits_final.json").read_text())
    folder = args.pre / config.data_identifier
    images = {
        k: np.asarray(blosc2.open(urlpath=str(folder / f"{k}.b2nd"), mode="r")[:])
        for k in folds[0]["val"][: args.cases]
    }
    on_gpu = args.device.startswith("cuda")
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=on_gpu,
        device=torch.device(args.device),
        verbose=False,
        allow_tqdm=False,
    )
    axes = tuple(range(len(config.patch_size)))
    predictor.manual_initialization(
        network, plans, config, [network.state_dict()], dataset, "nnUNetTrainer", axes
    )

    def theirs(image: np.ndarray) -> np.ndarray:  # nnUNetv2_predict's path after loading
        return predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image)).argmax(0)

    def ours(image: np.ndarray) -> np.ndarray:  # medseg predict's, for an nnU-Net model
        logits = predict_logits(
            network,
            image,
            config.patch_size,
            step=0.5,
            mirror_axes=axes,
            tile_batch=4,
            device=args.device,
            blend="nnunet",
            keep_on_device=True,
        )
        return logits.argmax(0).cpu()

    with torch.no_grad():
        nn_seconds, nn_labels, nn_peak = _timed(theirs, images, args.device)
        ms_seconds, ms_labels, ms_peak = _timed(ours, images, args.device)
    same = sum(int((ms_labels[k] == nn_labels[k]).sum()) for k in images)
    total = sum(int(np.prod(images[k].shape[1:])) for k in images)
    return {
        "cases": len(images),
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "medseg": {"seconds_per_case": float(np.mean(ms_seconds)), "peak_gpu_mib": ms_peak},
        "nnunet": {"seconds_per_case": float(np.mean(nn_seconds)), "peak_gpu_mib": nn_peak},
        "labels_agree": same / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("dice", "predict"))
    parser.add_argument("pre", type=Path, help="nnUNet_preprocessed/DatasetXXX_Name")
    parser.add_argument("result", type=Path, help="JSON file to write")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=250, help="per epoch")
    parser.add_argument("--val-iterations", type=int, default=5, help="per epoch")
    parser.add_argument("--cases", type=int, default=20, help="cases to predict")
    parser.add_argument("--checkpoint", type=Path, help="nnU-Net checkpoint (.pth)")
    args = parser.parse_args()
    result = dice(args) if args.mode == "dice" else predict(args)
    args.result.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
