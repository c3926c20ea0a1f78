"""Layer 6: drawing completions from a policy and judging them."""
