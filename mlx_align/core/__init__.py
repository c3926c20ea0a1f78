"""Layer 0: what every layer may use: errors, events, the distributed world, BLAS."""
