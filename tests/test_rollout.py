"""The compiled group decoder samples what the eager loop samples, with the current weights."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import mlx_lm
import pytest

from mlx_align.config.stages import AdapterSettings
from mlx_align.model.adapters import attach_adapters
from mlx_align.model.logprobs import sequence_logps
from mlx_align.sampling.rollout import (
    sample_group,
    sample_groups,
    supports_compiled_decode,
)
from mlx_align.sampling.slots import CHECK_EVERY
from mlx_align.train.adapted import adapter_config

NO_EOS = {10**6}


def greedy(model, prompt, group_size, max_tokens, eos_ids, compiled):
    group = sample_group(
        model, prompt, group_size, max_tokens, eos_ids, 0.0, compiled=compiled
    )
    return group.completions


@pytest.mark.parametrize("group_size", [1, 3])
@pytest.mark.parametrize("stop", ["max_tokens", "eos"])
def test_compiled_greedy_decode_matches_the_eager_loop(tiny_model, group_size, stop):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    assert supports_compiled_decode(model)
    prompt = tokenizer.encode("Green grass")
    max_tokens = 2 * CHECK_EVERY + 3
    free = greedy(model, prompt, 1, max_tokens, NO_EOS, compiled=False)[0]
    assert len(free) == max_tokens
    eos = NO_EOS
    if stop == "eos":  # the first new token the greedy run emits ends it
        end = next(i for i in range(1, max_tokens) if free[i] not in free[:i])
        eos = {free[end]}
        assert end < max_tokens - 1
    eager = greedy(model, prompt, group_size, max_tokens, eos, compiled=False)
    compiled = greedy(model, prompt, group_size, max_tokens, eos, compiled=True)
    assert compiled == eager
    assert len(compiled[0]) == (max_tokens if stop == "max_tokens" else end + 1)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_compiled_sampling_is_seeded_and_draws_what_the_eager_loop_draws(
    tiny_model, top_p
):
    """Both draw one key per step from ``mx.random.state``: same seed, same tokens."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    eos = set(tokenizer.eos_token_ids)

    def sample(compiled: bool) -> list[list[int]]:
        mx.random.seed(3)
        prompt = tokenizer.encode("The cat")
        return sample_group(
            model, prompt, 4, 12, eos, 1.0, top_p, compiled=compiled
        ).completions

    first = sample(compiled=True)
    assert sample(compiled=True) == first == sample(compiled=False)
    assert len({tuple(c) for c in first}) > 1
    for c in first:
        assert len(c) <= 12 and all(t not in eos for t in c[:-1])


def prompts_of_three_lengths(tokenizer) -> list[list[int]]:
    """9, 3 and 14 tokens: the longest is last, so the others are left-padded to it."""
    texts = [
        "Question: What is 2 + 3?\nAnswer:",
        "The cat sat on the mat.",
        "Green grass, red apples, and a small dog that says woof.",
    ]
    return [tokenizer.encode(t)[:n] for t, n in zip(texts, [9, 3, 14], strict=True)]


def test_batched_prompts_decode_what_each_prompt_decodes_alone(tiny_model):
    """Left-padded rows keep their own positions and masks: greedy tokens as one group each.

    The random tiny model attends almost uniformly, so a wrong RoPE position
    would hardly change its greedy tokens; sharper queries make them depend
    on the positions.
    """
    model, tokenizer = mlx_lm.load(str(tiny_model))
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight = 16 * layer.self_attn.q_proj.weight
    prompts = prompts_of_three_lengths(tokenizer)
    assert sorted(len(p) for p in prompts) == [3, 9, 14]
    max_tokens = 2 * CHECK_EVERY + 3
    free = [greedy(model, p, 1, max_tokens, NO_EOS, compiled=False)[0] for p in prompts]
    # An EOS that one prompt's greedy run reaches early and another never does.
    eos = next(
        {run[i]}
        for run in free
        for i in range(1, max_tokens - 1)
        if run[i] not in run[:i] and any(run[i] not in other for other in free)
    )
    alone = [greedy(model, p, 2, max_tokens, eos, compiled=False) for p in prompts]
    batched = sample_groups(model, prompts, 2, max_tokens, eos, 0.0, compiled=True)
    assert [g.prompt for g in batched] == prompts
    assert [g.completions for g in batched] == alone
    lengths = {len(c) for g in alone for c in g}
    assert max_tokens in lengths and min(lengths) < max_tokens


def test_batched_sampling_is_seeded_and_rows_differ(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    prompts, eos = prompts_of_three_lengths(tokenizer), set(tokenizer.eos_token_ids)

    def sample() -> list[list[list[int]]]:
        mx.random.seed(5)
        groups = sample_groups(model, prompts, 4, 12, eos, 1.0, 0.9, compiled=True)
        return [g.completions for g in groups]

    first = sample()
    assert sample() == first
    assert len(first) == 3 and all(len(group) == 4 for group in first)
    assert all(len({tuple(c) for c in group}) > 1 for group in first)
    for c in (c for group in first for c in group):
        assert 1 <= len(c) <= 12 and all(t not in eos for t in c[:-1])


def test_compiled_decode_reads_the_weights_after_an_optimizer_update(tiny_model):
    """LoRA as GRPO adds it; Adam steps towards always emitting token 7."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    mx.random.seed(0)
    attach_adapters(model, adapter_config(AdapterSettings()))
    prompt, target = tokenizer.encode("Green grass"), 7
    before = greedy(model, prompt, 2, 10, NO_EOS, compiled=True)  # traced here
    assert before[0] != [target] * 10

    tokens = mx.array([prompt + [target] * 10])
    mask = mx.array([[0] * len(prompt) + [1] * 10])
    loss_and_grad = nn.value_and_grad(
        model, lambda m: -sequence_logps(m, tokens, mask)[1].sum()
    )
    optimizer = optim.Adam(learning_rate=1e-2)
    for _ in range(10):
        _, grads = loss_and_grad(model)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)

    after = greedy(model, prompt, 2, 10, NO_EOS, compiled=True)
    assert after == [[target] * 10] * 2
    assert after == greedy(model, prompt, 2, 10, NO_EOS, compiled=False)


def test_models_without_plain_kv_caches_use_the_eager_loop(tiny_model):
    from mlx_lm.models.cache import RotatingKVCache

    model, tokenizer = mlx_lm.load(str(tiny_model))
    # A sliding-window cache is no fixed KV buffer: the probe says no.
    model.make_cache = lambda: [RotatingKVCache(max_size=64) for _ in model.layers]
    assert not supports_compiled_decode(model)
    prompts = [tokenizer.encode("The cat"), tokenizer.encode("Green grass")]
    groups = sample_groups(model, prompts, 2, 5, NO_EOS, 0.0)
    assert [g.prompt for g in groups] == prompts
    assert [[len(c) for c in g.completions] for g in groups] == [[5, 5], [5, 5]]
