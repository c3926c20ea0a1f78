"""What the seven exercise scripts share: flags, checks, tiny models, metrics, plots, KL.

Not a package: each script puts this folder on ``sys.path`` (Python does when
it runs a script from here) and imports this module by name. Everything the
exercises train goes through the package's own stage entry points
(``run_reward``, ``run_dpo``, ``run_sft``, ``run_grpo``); this module only
builds inputs, reads ``metrics.jsonl`` and measures the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "runs" / "exercises"


def parse_args(
    name: str, doc: str, argv: Sequence[str] | None, extra=None
) -> argparse.Namespace:
    """``--quick`` (the smallest size, for the test suite), ``--out``, ``--seed``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smallest size (the test suite's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder; this exercise writes {name}/ and {name}.png there",
    )
    parser.add_argument("--seed", type=int, default=0)
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    args.name = name
    args.work = args.out / name  # run directories, data, models
    args.plot = args.out / f"{name}.png"
    args.work.mkdir(parents=True, exist_ok=True)
    # DPO caches reference log-probs on disk: keep them with the exercise.
    os.environ.setdefault("MLX_ALIGN_CACHE", str(args.out / "cache"))
    return args


class Checks:
    """Collects named pass/fail checks, prints each, and gives the exit status."""

    def __init__(self, name: str) -> None:
        self.name, self.failed = name, []

    def __call__(self, label: str, ok: bool, detail: str = "") -> bool:
        ok = bool(ok)
        print(
            f"[{'PASS' if ok else 'FAIL'}] {label}" + (f": {detail}" if detail else "")
        )
        if not ok:
            self.failed.append(label)
        return ok

    def exit_code(self) -> int:
        if self.failed:
            print(f"{self.name}: {len(self.failed)} check(s) FAILED")
            return 1
        print(f"{self.name}: all checks passed")
        return 0


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows a stage wrote to ``run_dir/metrics.jsonl``."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the rows that hold it."""
    kept = [(row["step"], row[key]) for row in rows if key in row]
    return [s for s, _ in kept], [v for _, v in kept]


def tiny_model(
    out: Path,
    corpus: list[str],
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 512,
    chat_template: str = "qa",
) -> Path:
    """A fresh llama-style mlx-lm model directory (BPE tokenizer trained on ``corpus``)."""
    from mlx_align.model.tiny import PRESETS, init_model

    base = PRESETS["tiny"]  # hidden 64, 2 layers, 4/2 heads
    spec = type(base)(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=base.num_attention_heads,
        num_key_value_heads=base.num_key_value_heads,
        intermediate_size=3 * hidden,
        vocab_size=vocab,
        max_position_embeddings=base.max_position_embeddings,
    )
    return init_model(out, spec, corpus, seed=seed, chat_template=chat_template)


def figure(n_panels: int, width: float = 4.8, height: float = 3.6):
    """A matplotlib Figure on the Agg canvas (no pyplot, as ``mlx_align.apps.plot``) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False).ravel()
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, list(axes)


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")
    return path


def sample_completions(
    model,
    prompt: list[int],
    n: int,
    max_tokens: int,
    eos_ids: set[int],
    temperature: float = 1.0,
) -> list[list[int]]:
    """``n`` completions of one prompt (ids), each cut after its first EOS (kept).

    Temperature 0 is greedy. Uses mlx-lm's KV cache; draws from MLX's global
    random state (seed it with ``mx.random.seed``).
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt] * n), cache=cache)[:, -1, :]
    completions: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_tokens):
        if temperature == 0:
            tokens = mx.argmax(logits, axis=-1)
        else:
            tokens = mx.random.categorical(logits.astype(mx.float32) / temperature)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                completions[row].append(token)
                done[row] = token in eos_ids
        if all(done):
            break
        logits = model(tokens[:, None], cache=cache)[:, -1, :]
    return completions


def completion_kl(policy, reference, prompt: list[int], completions: list[list[int]]):
    """Σ_t KL(π(·|x, y<t) ‖ π_ref(·|x, y<t)) over each completion's positions, (n,).

    Exact over the vocabulary at every position the completion was drawn at
    (its EOS included). With completions sampled from π it estimates the
    sequence-level KL(π ‖ π_ref) without bias (exercise 6's chain rule).
    """
    import mlx.core as mx

    width = max(len(c) for c in completions)
    rows = [prompt + c + [0] * (width - len(c)) for c in completions]
    tokens = mx.array(rows)  # (n, P + width)
    start = len(prompt)
    logp = policy(tokens)[:, start - 1 : -1].astype(mx.float32)  # (n, width, V)
    logq = reference(tokens)[:, start - 1 : -1].astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    logq = logq - mx.logsumexp(logq, axis=-1, keepdims=True)
    per_position = (mx.exp(logp) * (logp - logq)).sum(-1)  # (n, width)
    mask = mx.array([[1.0] * len(c) + [0.0] * (width - len(c)) for c in completions])
    return (per_position * mask).sum(-1)


def main_guard(main) -> None:
    """Run ``main`` as a script: fast BLAS first (as the CLI), exit with its status."""
    from mlx_align.core.blas import ensure_fast_blas

    ensure_fast_blas()
    sys.exit(main())
