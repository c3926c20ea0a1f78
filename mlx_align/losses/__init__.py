"""Layer 2: losses as pure functions of log-probs or rewards, and GRPO's advantages."""
