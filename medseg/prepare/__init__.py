"""Layer 3: the preprocessing stage (reads a dataset, writes the preprocessed store)."""
