"""Layer 2: crop, normalize, resample and their inverses (pure numpy)."""
