"""Train nnU-Net v2's ``nnUNetTrainer`` for ``benchmarks/accuracy.py`` (run as a script).

    python benchmarks/accuracy_nnunet.py PLANS DATASET_JSON FOLD EPOCHS ITERATIONS \\
        VAL_ITERATIONS SEED THREADS

Runs in the ``nnUNet_*`` environment the caller sets (``nnUNet_preprocessed`` holds the
preprocessed data and ``splits_final.json``; ``nnUNet_results`` receives the model;
``nnUNet_n_proc_DA=0``: augmentation in this process). The trainer is imported directly,
not looked up by name (that needs a working torchvision, see ../shared/NNUNET_ORACLE.md),
and its schedule is set on the instance: ``num_epochs``, ``num_iterations_per_epoch``,
``num_val_iterations_per_epoch``. ``run_training()`` is nnU-Net's whole loop; its final
validation (which ``nnUNetv2_train`` runs afterwards) is not run here.

Seeding: nnU-Net draws everything (He initialisation, patch sampling, augmentation) from
the global torch, numpy and ``random`` state, so this driver seeds all three with SEED
before the trainer exists. nnU-Net has no seed option of its own.

Prints one JSON line: ``{"seconds": ..., "model": ...}`` (``run_training`` wall time and
the results folder). Spawned processes re-import this module, hence the ``__main__`` guard.
"""

from __future__ import annotations

import json
import random
import sys
import time


def train(argv: list[str]) -> dict:
    """Seed, build the trainer from the plans file, train; return seconds and the model."""
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans_file, dataset_json = argv[0], argv[1]
    fold, epochs, iterations, val_iterations, seed, threads = map(int, argv[2:8])
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    plans = load_json(plans_file)
    plans["continue_training"] = False  # what nnUNetv2_train's entry point sets
    trainer = nnUNetTrainer(
        plans, "3d_fullres", fold, load_json(dataset_json), device=torch.device("cpu")
    )
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    start = time.perf_counter()
    trainer.run_training()
    return {"seconds": time.perf_counter() - start, "model": trainer.output_folder_base}


if __name__ == "__main__":
    print(json.dumps(train(sys.argv[1:])))
