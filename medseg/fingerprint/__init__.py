"""Layer 3: the fingerprint stage."""
