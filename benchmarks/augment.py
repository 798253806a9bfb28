"""Augmentation cost per batch: medseg's batched torch augmentation vs nnU-Net v2's
transforms (batchgeneratorsv2, as nnUNetTrainer.get_training_transforms builds them),
side by side on the same CPU, the same patch and the same source batch.

nnU-Net applies its transforms sample by sample in data-loader workers; medseg
augments a whole batch at once (on the GPU when training there). Both are timed
for one batch on one thread, the median of ``--repeat`` runs after a warm-up.

    .venv/bin/python benchmarks/augment.py [--repeat 8] [--threads 1]

Not a test (it was one that asserted nothing); quote its figures in notes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from medseg.training.augment import augment, settings_for_patch, source_patch_size

#: (batch, channels, *patch): Hippocampus 3d_fullres (nnU-Net's default plans) and a 64^3 CT.
SHAPES = [(7, 1, 40, 56, 40), (2, 1, 64, 64, 64)]


def _batch(shape: tuple[int, ...], source: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((shape[0], shape[1], *source), generator=g)
    label = torch.randint(0, 3, (shape[0], 1, *source), generator=g).to(torch.int16)
    return image, label


def _median_ms(run, repeat: int) -> float:
    run(0)  # warm-up
    times = []
    for seed in range(1, repeat + 1):
        start = time.perf_counter()
        run(seed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def medseg_ms(shape: tuple[int, ...], repeat: int) -> float:
    patch = shape[2:]
    settings = settings_for_patch(patch)
    image, label = _batch(shape, source_patch_size(patch, settings))

    def run(seed: int) -> None:
        augment(image, label, patch, settings, torch.Generator().manual_seed(seed))

    return _median_ms(run, repeat)


def nnunet_ms(shape: tuple[int, ...], repeat: int) -> float:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    patch = shape[2:]
    settings = settings_for_patch(patch)  # the same rotation / dummy-2D / mirroring choice
    transforms = nnUNetTrainer.get_training_transforms(
        patch,
        settings.rotation,
        None,
        settings.mirror_axes,
        settings.dummy_2d,
        use_mask_for_norm=[False],
        foreground_labels=[1, 2],
    )
    image, label = _batch(shape, source_patch_size(patch, settings))

    def run(seed: int) -> None:
        torch.manual_seed(seed)  # batchgeneratorsv2 draws from the global generators
        np.random.seed(seed)
        for i in range(shape[0]):  # nnU-Net's loader: one sample at a time
            transforms(image=image[i], segmentation=label[i])

    return _median_ms(run, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"augmentation per batch, CPU, {args.threads} thread(s), median of {args.repeat}")
    print(f"{'batch (B, C, patch)':<24} {'medseg ms':>10} {'nnU-Net ms':>11} {'ratio':>6}")
    for shape in SHAPES:
        ours, theirs = medseg_ms(shape, args.repeat), nnunet_ms(shape, args.repeat)
        print(f"{str(shape):<24} {ours:>10.1f} {theirs:>11.1f} {ours / theirs:>6.2f}")


if __name__ == "__main__":
    main()
