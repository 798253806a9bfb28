"""Layer 3: metrics, cross-validation summaries, postprocessing choice."""
