"""Layer 3: inference (sliding window, prediction, export). Never imports medseg.training."""
