"""Layer 7: the CLI's settings: one dataclass per stage, built from flags and YAML, checked."""
