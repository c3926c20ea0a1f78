"""Layer 9: one module per training stage, each a call into ``train``."""
