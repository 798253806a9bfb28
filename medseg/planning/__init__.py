"""Layer 2: planning from a fingerprint (records in, records out, no file I/O)."""
