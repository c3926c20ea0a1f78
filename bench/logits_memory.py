"""Peak memory and time of completion log-probs: whole logits vs chunks (``logprobs.head_logps``).

The output head of a preference or SFT step turns (positions, D) hidden
states into (positions, V) logits; with a large vocabulary those logits, their
softmax and their gradient are a step's largest arrays. ``head_logps`` forms
them a chunk at a time above ``LOGITS_IN_ONE_PIECE`` elements. This script
times one forward + backward (gradient for the hidden states, frozen head:
LoRA) of a random head, both ways, and prints a table::

    .venv/bin/python bench/logits_memory.py                 # D = 896 (Qwen2.5-0.5B)
    .venv/bin/python bench/logits_memory.py --hidden 256 --positions 512,2048

Not a test: run it by hand on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from mlx_align.model import logprobs


def measure(fn, hidden: mx.array, repeats: int) -> tuple[float, float]:
    """(peak MB above the inputs, median seconds) of ``fn(hidden)``."""
    mx.eval(fn(hidden))  # warm-up: allocations, kernels
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn(hidden))
        seconds.append(time.perf_counter() - start)
    return (mx.get_peak_memory() - base) / 1e6, sorted(seconds)[len(seconds) // 2]


def compare(vocab: int, n: int, hidden_size: int, repeats: int) -> str:
    """One table row: a random (vocab, hidden_size) head over n positions, both ways."""
    mx.random.seed(0)
    weight = mx.random.normal((vocab, hidden_size)) * hidden_size**-0.5
    hidden = mx.random.normal((n, hidden_size))
    targets = mx.random.randint(0, vocab, (n,))
    mx.eval(weight, hidden, targets)
    rows = max(logprobs.MIN_CHUNK_ROWS, logprobs.CHUNK_ELEMENTS // vocab)

    def whole(h):
        return logprobs.token_logps(h @ weight.T, targets).sum()

    def chunked(h):
        return logprobs.chunked_linear_logps(weight, h, targets, rows).sum()

    whole_mb, whole_s = measure(mx.grad(whole), hidden, repeats)
    chunk_mb, chunk_s = measure(mx.grad(chunked), hidden, repeats)
    return (
        f"| {vocab:,} | {n:,} | {n * vocab * 4 / 1e6:,.0f} | {whole_mb:,.0f} | "
        f"{whole_s:.2f} | {chunk_mb:,.0f} | {chunk_s:.2f} | {chunk_mb / whole_mb:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", default="32768,151936")
    parser.add_argument("--positions", default="512,2048")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    print(
        f"hidden {opts.hidden}, float32, gradient for the hidden states only "
        f"(frozen head); chunks of max({logprobs.MIN_CHUNK_ROWS}, "
        f"{logprobs.CHUNK_ELEMENTS:,} / V) positions\n"
    )
    print(
        "| V | positions | logits MB (one copy) | whole: peak MB | s "
        "| chunked: peak MB | s | peak ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in (int(v) for v in opts.vocab.split(",")):
        for n in (int(p) for p in opts.positions.split(",")):
            print(compare(vocab, n, opts.hidden, opts.repeats), flush=True)


if __name__ == "__main__":
    main()
