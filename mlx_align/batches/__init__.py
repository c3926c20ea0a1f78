"""Layer 5: planning batches and laying them out for the model (padded, shared-prompt, packed)."""
