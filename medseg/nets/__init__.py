"""Layer 2: network builders (the only planning-time user of torch)."""
