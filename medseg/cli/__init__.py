"""Layer 4: the command line, the only place that touches argv and the console."""
