"""Sampling from LoRA-fused weights: the policy's outputs, a copy held only while sampling."""

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.lora import LoRALinear

from mlx_align.config.stages import AdapterSettings
from mlx_align.core.errors import UserError
from mlx_align.model.adapters import attach_adapters, quantize_base
from mlx_align.sampling import fused_sampler
from mlx_align.sampling.fused_sampler import (
    FusedSampler,
    fusable_adapters,
    fuse_in_place,
    should_fuse,
)
from mlx_align.sampling.rollout import sample_groups
from mlx_align.train.adapted import adapter_config

NO_EOS = {10**6}


def lora_policy(tiny_model, seed: int = 0, dora: bool = False):
    """The tiny model with LoRA (or DoRA) whose B is random, so the adapters matter."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    mx.random.seed(seed)
    attach_adapters(model, adapter_config(AdapterSettings(dora=dora)))
    randomize_adapters(model, seed)
    model.train()  # as training holds it (mlx_lm.load returns eval mode)
    return model, tokenizer


def randomize_adapters(model, seed: int) -> None:
    mx.random.seed(seed)
    for _, layer in fusable_adapters(model):
        layer.lora_b = 0.5 * mx.random.normal(layer.lora_b.shape)
    mx.eval(model.parameters())


@pytest.mark.parametrize("dora", [False, True])
def test_fused_twin_computes_the_policys_logits(tiny_model, dora):
    policy, tokenizer = lora_policy(tiny_model, dora=dora)
    tokens = mx.array([tokenizer.encode("The cat sat on the mat.")])
    plain = mlx_lm.load(str(tiny_model))[0](tokens)
    expected = policy(tokens)
    assert mx.abs(expected - plain).max().item() > 1e-2  # the adapters matter
    sampler = FusedSampler(policy)
    with sampler.fused() as model:
        fused = model(tokens)
        adapted = [m for _, m in model.named_modules() if hasattr(m, "lora_a")]
        assert adapted == []  # every adapted linear is one plain layer here
        assert model.training is False
    assert mx.allclose(fused, expected, atol=1e-4).item()
    assert policy.training is True and all(
        m.training for _, m in fusable_adapters(policy)
    )


def test_twin_shares_the_policys_arrays_and_holds_no_copy_between_rollouts(
    tiny_model,
):
    policy, _ = lora_policy(tiny_model)
    sampler = FusedSampler(policy)
    shared = {id(v) for _, v in tree_flatten(policy.parameters())}
    between = tree_flatten(sampler.model.parameters())
    assert {id(v) for _, v in between} == shared
    with sampler.fused() as model:
        during = dict(tree_flatten(model.parameters()))
    q_proj = "model.layers.0.self_attn.q_proj"
    assert set(during) > {f"{q_proj}.weight"}  # fused: a plain weight, no lora_a
    assert f"{q_proj}.lora_a" not in during
    after = {id(v) for _, v in tree_flatten(sampler.model.parameters())}
    assert after == shared
    assert isinstance(sampler.model.model.layers[0].self_attn.q_proj, LoRALinear)


def test_fused_greedy_rollouts_follow_adapter_updates(tiny_model):
    """Same tokens as sampling the LoRA policy, before and after its adapters change."""
    policy, tokenizer = lora_policy(tiny_model)
    prompts = [tokenizer.encode("Green grass"), tokenizer.encode("The cat sat")]
    sampler = FusedSampler(policy)

    def rollouts(model):
        groups = sample_groups(model, prompts, 2, 12, NO_EOS, 0.0, compiled=True)
        return [g.completions for g in groups]

    seen = []
    for seed in (1, 2):  # the second round replays the compiled step's trace
        randomize_adapters(policy, seed)
        policy.eval()
        expected = rollouts(policy)
        policy.train()
        with sampler.fused() as model:
            assert rollouts(model) == expected
        seen.append(expected)
    assert seen[0] != seen[1]  # the update changed what is sampled


def test_should_fuse_by_mode_memory_and_quantization(tiny_model, monkeypatch):
    policy, _ = lora_policy(tiny_model)
    assert should_fuse(policy, "on") and should_fuse(policy, "auto")
    assert not should_fuse(policy, "off")
    monkeypatch.setattr(fused_sampler, "machine_memory", lambda: 10_000)
    assert not should_fuse(policy, "auto") and should_fuse(policy, "on")
    with pytest.raises(UserError, match="fuse-rollout"):
        should_fuse(policy, "always")

    plain, _ = mlx_lm.load(str(tiny_model))
    assert not should_fuse(plain, "on")  # full fine-tune: nothing to fuse
    quantized, _ = mlx_lm.load(str(tiny_model))
    quantize_base(quantized, 8)
    attach_adapters(quantized, adapter_config(AdapterSettings()))
    quantized_layers = [
        m for _, m in quantized.named_modules() if isinstance(m, nn.QuantizedLinear)
    ]
    assert quantized_layers  # QLoRA: those bases are never fused
    fused_paths = {p for p, _ in fusable_adapters(quantized)}
    assert all(
        not isinstance(m.linear, nn.QuantizedLinear)
        for p, m in quantized.named_modules()
        if p in fused_paths
    )


def test_fuse_in_place_keeps_the_outputs_and_leaves_quantized_adapters(tiny_model):
    """eval-math's path: every unquantized adapter becomes one plain layer."""
    policy, tokenizer = lora_policy(tiny_model)
    tokens = mx.array([tokenizer.encode("Green grass and a small dog.")])
    expected = policy(tokens)
    fuse_in_place(policy)
    assert not fusable_adapters(policy)
    assert not any(hasattr(m, "lora_a") for _, m in policy.named_modules())
    assert mx.allclose(policy(tokens), expected, atol=1e-4).item()

    quantized, _ = mlx_lm.load(str(tiny_model))
    quantize_base(quantized, 8)
    attach_adapters(quantized, adapter_config(AdapterSettings()))
    fuse_in_place(quantized)
    left = [m for _, m in quantized.named_modules() if hasattr(m, "lora_a")]
    assert left  # QLoRA adapters stay adapters
    assert all(isinstance(m.linear, nn.QuantizedLinear) for m in left)


def test_eval_math_decodes_with_fused_adapters(tiny_model, tmp_path, monkeypatch):
    import json

    from mlx_align.apps.eval_math import run_eval_math
    from mlx_align.config.stages import EvalMathConfig
    from mlx_align.model.adapters import save_adapters

    policy, _ = lora_policy(tiny_model)
    config = adapter_config(AdapterSettings())
    save_adapters(policy, config, tmp_path / "adapters")
    data = tmp_path / "math" / "test.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    seen = []

    def fake_generate(model, *args, **kwargs):
        seen.append(model)
        return type("R", (), {"texts": ["#### 5"]})()

    monkeypatch.setattr("mlx_lm.batch_generate", fake_generate)
    accuracy = run_eval_math(
        EvalMathConfig(
            model=str(tiny_model),
            data=str(data.parent),
            adapter_path=str(tmp_path / "adapters"),
        )
    )
    assert accuracy == 1.0
    (model,) = seen
    assert not any(hasattr(m, "lora_a") for _, m in model.named_modules())
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    plain = mlx_lm.load(str(tiny_model))[0].model.layers[0].self_attn.q_proj.weight
    assert mx.abs(q_proj - plain).max().item() > 1e-3  # the adapters are in it
