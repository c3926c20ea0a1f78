"""Every stage on every architecture family mlx-lm 0.32 trains: hybrids with
linear attention or SSM state, MoE, sliding windows, KV sharing.

Each family is a tiny random-weight model built from mlx-lm's own classes
(``tests/families/<name>.json``, ``family_models.py``), so an mlx-lm release
that breaks one is caught here. The README's family table is this file's
output: ``MLX_ALIGN_WRITE_README=1 pytest tests/test_families.py`` rewrites it,
and a plain run fails while it is stale.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from functools import cache
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import FACTS, write_jsonl
from family_models import FAMILIES, build_family
from mlx_lm.models.cache import make_prompt_cache

from mlx_align.batches.layouts import FullRows, SharedPrompt
from mlx_align.batches.packing import supports_packing
from mlx_align.cli import main
from mlx_align.model.caches import cache_kinds
from mlx_align.model.load import load_model
from mlx_align.model.logprobs import full_logits, generation_logps, scores_without_cache
from mlx_align.model.reward_head import hidden_size_of
from mlx_align.model.shared_prompts import supports_shared_prompts
from mlx_align.sampling.rollout import (
    sample_groups,
    supports_compiled_decode,
    trim_at_eos,
)

README = Path(__file__).parents[1] / "README.md"
STAGES = ("sft", "dpo", "orpo", "kto", "reward", "grpo", "ppo", "online-dpo", "rerank", "fuse")  # fmt: skip
REWARD = "test_families:distinct_characters"


def distinct_characters(prompts, completions, **columns):
    """A reward that varies between a random model's samples: distinct characters / 10."""
    return [len(set(c)) / 10 for c in completions]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("families")
    rows = [{"prompt": p, "completion": c} for p, c in FACTS]
    write_jsonl(root / "data/sft/train.jsonl", rows)
    pairs = [
        {"prompt": p, "chosen": c, "rejected": " I do not know."} for p, c in FACTS
    ]
    write_jsonl(root / "data/pref/train.jsonl", pairs)
    labelled = [{**r, "label": i % 2 == 0} for i, r in enumerate(rows * 2)]
    write_jsonl(root / "data/kto/train.jsonl", labelled)
    questions = [{"prompt": f"Question: What is {i} + 1?\nAnswer:"} for i in range(8)]
    write_jsonl(root / "data/prompts/train.jsonl", questions)
    (root / "tokenizer").symlink_to(tiny_model)
    return root


@cache
def family_dir(root: Path, family: str) -> Path:
    return build_family(family, root / "models" / family, root / "tokenizer")


def stage_argv(stage: str, model: Path, root: Path, out: Path) -> list[str]:
    """Default flags, but for sizes that keep a run short."""
    data = root / "data"
    train = ["--steps", "2", "--save-every", "0", "--eval-every", "0"]
    sampled = ["--batch-size", "2", "--max-completion-tokens", "5", "--log-every", "1"]
    argv = {
        "sft": ["--data", data / "sft", "--batch-size", "2", *train],
        "dpo": ["--data", data / "pref", "--batch-size", "2", *train],
        "orpo": ["--data", data / "pref", "--batch-size", "2", *train],
        "kto": ["--data", data / "kto", "--batch-size", "4", *train],
        "reward": ["--data", data / "pref", "--batch-size", "2", *train],
        "grpo": [
            "--data",
            data / "prompts",
            "--reward",
            REWARD,
            "--group-size",
            "4",
            "--beta",
            "0.1",
            *sampled,
            *train,
        ],  # fmt: skip
        "ppo": ["--data", data / "prompts", "--reward", REWARD, *sampled, *train],
        "online-dpo": [
            "--data",
            data / "prompts",
            "--reward",
            REWARD,
            *sampled,
            *train,
        ],
        "rerank": [
            "--adapter-path",
            out / "dpo",
            "--data",
            data / "prompts/train.jsonl",
            "--k",
            "3",
            "--max-tokens",
            "4",
        ],  # fmt: skip
        "fuse": ["--adapter-path", out / "sft", "--save-path", out / "fused"],
    }[stage]
    where = [] if stage in ("rerank", "fuse") else ["--out", out / stage]
    return [str(a) for a in [stage, "--model", model, *where, *argv]]


@cache
def stage_results(root: Path, family: str) -> dict[str, str]:
    """Each stage's outcome on ``family``: "ok", or its exit and last message."""
    model, out = family_dir(root, family), root / "runs" / family
    results = {}
    for stage in STAGES:
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
                main(stage_argv(stage, model, root, out))
            results[stage] = "ok"
        except SystemExit as e:
            results[stage] = f"exit {e.code}: {said.getvalue().strip()[-300:]}"
        except Exception as e:  # noqa: BLE001 - the table says what broke
            results[stage] = f"{type(e).__name__}: {e}"
    return results


@cache
def fast_paths(root: Path, family: str) -> dict[str, bool | str]:
    model, _, _ = load_model(str(family_dir(root, family)))
    return {
        "caches": cache_kinds(make_prompt_cache(model)),
        "shared prompts": supports_shared_prompts(model),
        "packing": supports_packing(model),
        "compiled decode": supports_compiled_decode(model),
        "scores via cache": not scores_without_cache(model),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_runs_with_default_flags(workdir, family):
    results = stage_results(workdir, family)
    assert {s: r for s, r in results.items() if r != "ok"} == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_trains_on_every_family(workdir, family):
    """A varying reward, a gradient, and KL 0 at step 1 (policy == reference)."""
    assert stage_results(workdir, family)["grpo"] == "ok"
    out = workdir / "runs" / family / "grpo"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert max(s["reward_std"] for s in steps) > 0
    assert all(s["grad_norm"] > 0 for s in steps)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_and_scorer_compute_one_function(workdir, family):
    """Greedy group sampling equals a plain greedy loop over whole forwards (the
    scorer's forward), and the loss's log-probs of the sampled tokens equal
    generation's (mlx-lm's prompt cache), whichever layout scores them."""
    model, tokenizer, _ = load_model(str(family_dir(workdir, family)))
    eos = set(tokenizer.eos_token_ids)
    prompts = [tokenizer.encode(p) for p, _ in FACTS[:2]]
    groups = sample_groups(model, prompts, 2, 6, eos, temperature=0.0)
    for prompt, group in zip(prompts, groups, strict=True):
        tokens = list(prompt)
        for _ in range(6):
            logits = full_logits(model, mx.array(tokens)[None])
            tokens.append(mx.argmax(logits[0, -1]).item())
        assert group.completions == [trim_at_eos(tokens[len(prompt) :], eos)] * 2

    completions = [c for g in groups for c in g.completions]
    rows = [g.prompt + c for g in groups for c in g.completions]
    expected = generation_logps(model, rows)
    layouts = [FullRows.pad([_encoded(g.prompt, c) for g in groups for c in g.completions], 4, [64], 0)]  # fmt: skip
    if supports_shared_prompts(model):
        width = max(len(p) for p in prompts)
        layouts.append(SharedPrompt.pad(prompts, completions, 2, 0, (width, 6)))
    for inputs in layouts:
        scored, mask = (np.array(a) for a in inputs.token_logps(model))
        for row, (completion, reference) in enumerate(zip(completions, expected, strict=True)):  # fmt: skip
            got = scored[row][mask[row] > 0]
            assert np.allclose(got, np.array(reference[-len(completion) :]), atol=2e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_judge_margins_are_the_models_own(workdir, family):
    """The judge's batched, chunked, cached margins equal one forward of each text
    (as generation computes it), whatever the family's caches."""
    from test_llm_judge import CHATS, PAIRS

    from mlx_align.data.jsonl import Record
    from mlx_align.sampling.llm_judge import LLMPairwiseJudge

    model, tokenizer, _ = load_model(str(family_dir(workdir, family)))
    judge = LLMPairwiseJudge(model, tokenizer)
    records = [Record("t", i + 1, {"prompt": c}) for i, c in enumerate(CHATS)]
    rows = [judge.encode(judge.render(r.fields["prompt"], p)) for r, p in zip(records, PAIRS, strict=True)]  # fmt: skip
    want = []
    for row in rows:
        logits = full_logits(model, mx.array(row)[None])[0, -1].astype(mx.float32)
        logps = logits - mx.logsumexp(logits)
        want.append((logps[judge.answers[1]] - logps[judge.answers[0]]).item())
    np.testing.assert_allclose(judge.answer_margins(rows).tolist(), want, atol=1e-4)


def _encoded(prompt: list[int], completion: list[int]):
    from mlx_align.data.tokenize import Encoded

    return Encoded(prompt + completion, len(prompt))


def test_reward_heads_read_hidden_states_on_every_family(workdir):
    """Not logits: gemma3n's backbone applies its tied head itself."""
    for family in ("gemma3n", "mamba2", "nemotron_h", "qwen3_5"):
        lm, _ = mlx_lm.load(str(family_dir(workdir, family)))
        assert hidden_size_of(lm) == 64, family


def test_readme_family_table_is_current(workdir):
    table = family_table(workdir)
    text = README.read_text()
    block = re.compile(r"(<!-- families:start -->\n).*?(<!-- families:end -->)", re.S)
    if os.environ.get("MLX_ALIGN_WRITE_README"):
        README.write_text(block.sub(lambda m: m[1] + table + m[2], text))
        text = README.read_text()
    assert table in text, "README's family table is stale: MLX_ALIGN_WRITE_README=1"


def family_table(root: Path) -> str:
    paths = ("shared prompts", "packing", "compiled decode", "scores via cache")
    head = ["family", "caches", *STAGES, *paths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for family in FAMILIES:
        results, found = stage_results(root, family), fast_paths(root, family)
        marks = ["✓" if results[s] == "ok" else "✗" for s in STAGES]
        flags = ["yes" if found[p] else "-" for p in paths]
        lines.append(
            "| " + " | ".join([family, found["caches"], *marks, *flags]) + " |"
        )
    return "\n".join(lines) + "\n"
