"""The shared loop: exact resume, interruption, schedule, checkpointing per instance."""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_sft import sft_config

from mlx_align.batches.layouts import FullRows
from mlx_align.config.build import build_config
from mlx_align.config.stages import SFTConfig, TrainSettings
from mlx_align.core import events
from mlx_align.stages.sft import completion_nll_loss, run_sft
from mlx_align.train import loop
from mlx_align.train.grad_checkpoint import checkpoint_layers, restore_layers


def adapter_weights(run_dir):
    return mx.load(str(run_dir / "adapters.safetensors"))


def test_interrupted_run_resumes_to_the_same_weights(tiny_model, sft_dir, tmp_path):
    # Dropout and two-step accumulation make the RNG state and the data order matter.
    settings = dict(
        steps=8, save_every=3, lora_dropout=0.1, grad_accumulation=2, batch_size=2
    )
    run_sft(sft_config(tiny_model, sft_dir, tmp_path / "straight", **settings))

    interrupted = tmp_path / "interrupted"

    def ctrl_c_after_step_5(event, fields):
        if event == "step" and fields["step"] == 5:
            raise KeyboardInterrupt

    with events.listening(ctrl_c_after_step_5), pytest.raises(KeyboardInterrupt):
        run_sft(sft_config(tiny_model, sft_dir, interrupted, **settings))
    checkpoints = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert checkpoints == ["step_0000003", "step_0000005"]  # step 5 written on Ctrl-C

    run_sft(sft_config(tiny_model, sft_dir, interrupted, resume=True, **settings))
    straight, resumed = (
        adapter_weights(tmp_path / "straight"),
        adapter_weights(interrupted),
    )
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert mx.array_equal(straight[name], resumed[name]).item(), name
    steps = [
        m["step"]
        for m in map(
            json.loads, (interrupted / "metrics.jsonl").read_text().splitlines()
        )
    ]
    assert steps == sorted(steps) and steps[-1] == 8


def test_schedule_warms_up_then_decays_to_the_floor():
    settings = TrainSettings(
        steps=10, warmup_steps=4, learning_rate=1.0, min_lr_ratio=0.1
    )
    optimizer = loop.build_optimizer(settings)
    model = nn.Linear(2, 2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.learning_rate.item())
        optimizer.update(model, {"weight": mx.zeros((2, 2)), "bias": mx.zeros((2,))})
    rates.append(optimizer.learning_rate.item())
    np.testing.assert_allclose(
        rates[1:5], [0.25, 0.5, 0.75, 1.0], rtol=1e-5
    )  # lr of updates 1-4
    assert all(a >= b for a, b in zip(rates[4:], rates[5:], strict=False))
    assert rates[-1] == pytest.approx(0.1, rel=1e-4)


def test_grad_checkpoint_gives_the_same_gradients_and_patches_only_given_instances(
    tiny_model,
):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    other, _ = mlx_lm.load(str(tiny_model))
    tokens = mx.array(
        [tokenizer.encode("Question: What does a cow say?\nAnswer: Moo.")]
    )
    batch = FullRows(tokens, mx.ones(tokens.shape))
    grad_fn = nn.value_and_grad(model, lambda m, b: completion_nll_loss(m, b)[0])
    loss, plain = grad_fn(model, batch)
    layer_class = type(model.layers[0])

    checkpoint_layers(model.layers)
    assert type(other.layers[0]) is layer_class  # another model is untouched
    assert type(model.layers[0]) is not layer_class
    checkpoint_layers(model.layers)  # a second call does not nest
    assert (
        type(type(model.layers[0]).__mro__[1]) is type
        and type(model.layers[0]).__mro__[1] is layer_class
    )
    loss_ckpt, checkpointed = grad_fn(model, batch)
    assert loss.item() == pytest.approx(loss_ckpt.item(), rel=1e-6)
    for (name, a), (_, b) in zip(
        tree_flatten(plain), tree_flatten(checkpointed), strict=True
    ):
        assert mx.allclose(a, b, atol=1e-6).item(), name
    assert "model.layers.0.self_attn.q_proj.weight" in dict(
        tree_flatten(model.parameters())
    )
    restore_layers(model.layers)
    assert type(model.layers[0]) is layer_class


def test_sft_with_grad_checkpoint_trains(tiny_model, sft_dir, tmp_path):
    run_sft(
        sft_config(
            tiny_model, sft_dir, tmp_path / "ckpt", steps=10, grad_checkpoint=True
        )
    )
    lines = [
        json.loads(x)
        for x in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [m["loss"] for m in lines if "loss" in m]
    assert losses[-1] < losses[0]


def test_config_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: from-yaml\ndata: d\nsteps: 7\nlora-rank: 4\n")
    config = build_config(SFTConfig, {"steps": 9, "lora_rank": None}, str(path))
    assert (config.model, config.steps, config.lora_rank) == ("from-yaml", 9, 4)
    assert config.batch_size == SFTConfig.batch_size  # untouched default
