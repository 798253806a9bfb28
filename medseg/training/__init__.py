"""Layer 3: training (data sampling, augmentation, loop, checkpoints)."""
