"""Robustness suite: bad inputs, and what medseg promises about each."""
