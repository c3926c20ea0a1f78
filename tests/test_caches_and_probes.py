"""Caches repeated by what they hold, fast paths chosen by probes, LoRA keys per model."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx_lm
import pytest
from conftest import FACTS, write_jsonl
from family_models import build_family
from mlx_lm.models.cache import (
    ArraysCache,
    CacheList,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    make_prompt_cache,
)

from mlx_align.cli import main
from mlx_align.core.events import listening
from mlx_align.model.adapters import default_lora_keys
from mlx_align.model.caches import repeat_rows
from mlx_align.sampling.rollout import sample_group


def filled(cache, batch: int = 1):
    """``cache`` after two steps of made-up keys/values or state for ``batch`` rows."""
    inner = cache.caches if isinstance(cache, CacheList) else [cache]
    for c in inner:
        for step in range(2):
            if isinstance(c, ArraysCache):
                c[0] = mx.full((batch, 3, 4), step + 1.0)
                c[1] = mx.full((batch, 2, 2, 2), step - 1.0)
            else:
                kv = mx.arange(batch * 2 * 1 * 64, dtype=mx.float32).reshape(
                    batch, 2, 1, 64
                )
                c.update_and_fetch(kv + step, kv - step)
    return cache


@pytest.mark.parametrize(
    "make",
    [
        KVCache,
        lambda: RotatingKVCache(max_size=4),
        lambda: QuantizedKVCache(group_size=32, bits=8),
        lambda: ArraysCache(2),
        lambda: CacheList(ArraysCache(2), KVCache()),
    ],
    ids=["kv", "rotating", "quantized", "arrays", "cache_list"],
)
def test_repeat_rows_gives_every_row_the_prompts_state(make):
    one, three = filled(make()), filled(make())
    repeat_rows([three], 3)
    for a, b in zip(
        _arrays(one.state), _arrays(three.state), strict=True
    ):  # every array, each row a copy
        assert b.shape == (3 * a.shape[0], *a.shape[1:])
        assert all(mx.array_equal(b[i : i + 1], a).item() for i in range(3))
    if not isinstance(one, ArraysCache | CacheList):  # offsets and windows unchanged
        assert three.offset == one.offset


def _arrays(tree) -> list[mx.array]:
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, list | tuple):
        return [a for t in tree for a in _arrays(t)]
    return []


@pytest.fixture(scope="module")
def families(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("probe_families")
    return lambda name: build_family(name, root / name, tiny_model)


def test_a_hybrid_samples_its_group_from_one_prefill(families):
    """qwen3_5 (gated-delta state in ArraysCache): G rows from one prompt state
    equal G = 1 sampled greedily, the eager decoder (the compiled one is off)."""
    model, tokenizer = mlx_lm.load(str(families("qwen3_5")))
    prompt = tokenizer.encode(FACTS[0][0])
    no_eos = {-1}
    group = sample_group(model, prompt, 3, 6, no_eos, temperature=0.0)
    alone = sample_group(model, prompt, 1, 6, no_eos, temperature=0.0)
    assert group.completions == alone.completions * 3


def test_a_fallback_is_printed_once_with_its_reason(families, capsys):
    from mlx_align.model.shared_prompts import supports_shared_prompts

    model, _ = mlx_lm.load(str(families("qwen3_5")))
    seen = []
    with listening(lambda name, fields: seen.append((name, fields["path"]))):
        assert not supports_shared_prompts(model)
        assert not supports_shared_prompts(model)  # remembered: not tried again
    out = capsys.readouterr().out
    assert out.count("qwen3_5: no shared-prompt scoring (") == 1
    assert "; scoring full rows" in out
    assert seen.count(("fast_path", "shared-prompt scoring")) == 1


def test_gemma3n_default_lora_keys_leave_altup_coefficients_alone(families, tmp_path):
    """gemma3n reads AltUp's coefficient layers' ``.weight`` itself: the default keys
    skip them, the adapter config names the rest, and mlx-lm loads the adapters."""
    path = families("gemma3n")
    model, _ = mlx_lm.load(str(path))
    keys = default_lora_keys(model)
    assert keys and "self_attn.q_proj" in keys and "mlp.down_proj" in keys
    assert not any("prediction_coefs" in k or "correction_coefs" in k for k in keys)
    llama_like, _ = mlx_lm.load(str(families("qwen3_moe")))
    assert default_lora_keys(llama_like) is None  # mlx-lm's own default stands

    data = write_jsonl(
        tmp_path / "sft/train.jsonl",
        [{"prompt": p, "completion": c} for p, c in FACTS],
    ).parent
    main(["sft", "--model", str(path), "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", "--save-every", "0"])  # fmt: skip
    saved = json.loads((tmp_path / "run/adapter_config.json").read_text())
    assert saved["lora_parameters"]["keys"] == keys
    adapted, tokenizer = mlx_lm.load(str(path), adapter_path=str(tmp_path / "run"))
    assert mlx_lm.generate(adapted, tokenizer, "Question:", max_tokens=3) is not None


def test_dora_on_a_mixture_of_experts_is_one_line(families, tmp_path, capsys):
    """Refused before the weights load (config.json counts experts), and once
    loaded for a model whose config the check could not read (a hub id)."""
    from mlx_align.core.errors import UserError
    from mlx_align.model.adapters import attach_adapters

    data = write_jsonl(
        tmp_path / "sft/train.jsonl",
        [{"prompt": p, "completion": c} for p, c in FACTS],
    ).parent
    moe = families("qwen3_moe")
    loads = []
    with listening(lambda name, fields: loads.append(name)):
        with pytest.raises(SystemExit) as stop:
            main(["sft", "--model", str(moe), "--data", str(data), "--out", str(tmp_path / "run"), "--dora", "--steps", "1"])  # fmt: skip
    assert stop.value.code == 2 and loads == []  # nothing loaded, no probe ran
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: --dora: mlx-lm has no DoRA")
    assert "experts in" in err and "Traceback" not in err

    model, _ = mlx_lm.load(str(moe))
    dora = {"fine_tune_type": "dora", "num_layers": -1, "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0}}  # fmt: skip
    with pytest.raises(UserError, match="SwitchLinear"):
        attach_adapters(model, dora)


def test_gemma3n_scores_through_a_prompt_cache(families):
    """Its plain forward differs from generation's; the loss's log-probs equal generation's."""
    from mlx_align.model.logprobs import (
        generation_logps,
        scores_without_cache,
        sequence_logps,
    )

    model, tokenizer = mlx_lm.load(str(families("gemma3n")))
    assert not scores_without_cache(model)
    row = tokenizer.encode(FACTS[1][0] + FACTS[1][1])
    tokens = mx.array([row])
    plain = model(tokens[:, :-1])
    cached = model(tokens[:, :-1], cache=make_prompt_cache(model))
    assert mx.abs(plain - cached).max().item() > 0.1  # mlx-lm's two paths differ
    per_token, _, _ = sequence_logps(model, tokens, mx.ones_like(tokens))
    assert mx.allclose(per_token[0], generation_logps(model, [row])[0], atol=1e-5)
