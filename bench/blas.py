"""Benchmark mlx-cpu's bundled reference BLAS against the system OpenBLAS.

Each measurement runs in a fresh worker process (this script with `--worker`),
once without and once with `LD_PRELOAD=<system libopenblas>`, because the
loader only honours LD_PRELOAD at process start. Prints a markdown table:
fp32 1024x1024 matmul GFLOP/s, and the time of one compiled training step
(forward + backward + AdamW) of a small mlx-lm llama, batch 8 x seq 128.

    .venv/bin/python bench/blas.py [--steps 5] [--matmul-iters 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

BATCH, SEQ_LEN, MATMUL_N = 8, 128, 1024


def time_matmul_gflops(iters: int) -> float:
    import mlx.core as mx

    a = mx.random.normal((MATMUL_N, MATMUL_N))
    b = mx.random.normal((MATMUL_N, MATMUL_N))
    mx.eval(a, b, a @ b)  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        mx.eval(mx.matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2 * MATMUL_N**3 / statistics.median(times) / 1e9


def time_train_step(steps: int) -> float:
    """Median seconds of one compiled forward+backward+AdamW step."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=688,
        num_attention_heads=8,
        num_key_value_heads=4,
        rms_norm_eps=1e-5,
        vocab_size=2048,
        tie_word_embeddings=True,
    )
    model = llama.Model(args)
    optimizer = optim.AdamW(learning_rate=1e-4)
    tokens = mx.random.randint(0, args.vocab_size, (BATCH, SEQ_LEN + 1))

    def next_token_loss(model: nn.Module, batch: mx.array) -> mx.array:
        logits = model(batch[:, :-1])  # (B, T, V)
        return nn.losses.cross_entropy(logits, batch[:, 1:], reduction="mean")

    loss_and_grad = nn.value_and_grad(model, next_token_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(batch: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, batch)
        optimizer.update(model, grads)
        return loss

    mx.eval(state, train_step(tokens), state)  # warm-up: compile + optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        mx.eval(train_step(tokens), state)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_worker(preload: str | None, opts: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    cmd = [sys.executable, __file__, "--worker", "--steps", str(opts.steps)]
    cmd += ["--matmul-iters", str(opts.matmul_iters)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: dict[str, dict]) -> None:
    base = results["reference BLAS (mlx-cpu bundled)"]
    print(
        "| BLAS | matmul 1024² fp32 GFLOP/s | train step s | tokens/s | step speedup |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        tokens_per_s = BATCH * SEQ_LEN / r["step_s"]
        speedup = base["step_s"] / r["step_s"]
        print(
            f"| {name} | {r['gflops']:.1f} | {r['step_s']:.3f} "
            f"| {tokens_per_s:,.0f} | {speedup:.1f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="measure in-process")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--matmul-iters", type=int, default=10, help="timed matmuls")
    opts = parser.parse_args()
    if opts.worker:
        from mlx_align.core.blas import loaded_openblas

        gflops = time_matmul_gflops(opts.matmul_iters)
        step_s = time_train_step(opts.steps)
        result = {"gflops": gflops, "step_s": step_s, "openblas": loaded_openblas()}
        print(json.dumps(result))
        return

    from mlx_align.core.blas import openblas_path

    library = openblas_path()
    if library is None:
        sys.exit("no system OpenBLAS found (apt-get install libopenblas0-pthread)")
    results = {
        "reference BLAS (mlx-cpu bundled)": run_worker(None, opts),
        "OpenBLAS (LD_PRELOAD)": run_worker(library, opts),
    }
    if results["OpenBLAS (LD_PRELOAD)"]["openblas"] is None:
        sys.exit(f"LD_PRELOAD={library} did not load libopenblas")
    print(f"{os.cpu_count()} CPUs; OpenBLAS = {library}; batch {BATCH} x seq {SEQ_LEN}")
    print_table(results)


if __name__ == "__main__":
    main()
