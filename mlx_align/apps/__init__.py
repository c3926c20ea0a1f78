"""Layer 10: commands around the stages: eval-math, rerank, plot, serve, the tools."""
