"""SFT end to end on a tiny model: it learns, adapters load in mlx-lm, fusing is exact."""

import json

import mlx.core as mx
import mlx_lm
import pytest
from conftest import FACTS

from mlx_align.config.stages import SFTConfig
from mlx_align.model.fuse import fuse_adapters
from mlx_align.stages.sft import run_sft


def sft_config(model, data, out, **overrides) -> SFTConfig:
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        steps=40,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=2,
        eval_every=0,
        log_every=5,
        save_every=0,
        lora_rank=8,
        lora_alpha=16,
        compile=False,
    )
    return SFTConfig(**{**settings, **overrides})


def read_metrics(run_dir):
    lines = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return [m for m in lines if "loss" in m], [m for m in lines if "val_loss" in m]


@pytest.fixture(scope="module")
def lora_run(tiny_model, sft_dir, tmp_path_factory):
    """LoRA SFT with the compiled training step (the step every stage uses)."""
    out = tmp_path_factory.mktemp("lora")
    run_sft(sft_config(tiny_model, sft_dir, out, compile=True, steps=60))
    return out


def test_compiled_sft_memorises_and_generates_the_completion(lora_run, tiny_model):
    train_lines, val_lines = read_metrics(lora_run)
    assert train_lines[-1]["loss"] < 0.2 * train_lines[0]["loss"]
    assert val_lines and val_lines[-1]["val_loss"] < 0.5
    assert all(m["tokens"] > 0 and m["peak_memory_gb"] > 0 for m in train_lines)
    model, tokenizer = mlx_lm.load(str(tiny_model), adapter_path=str(lora_run))
    for prompt, completion in FACTS:
        text = mlx_lm.generate(model, tokenizer, prompt, max_tokens=20)
        assert text.strip() == completion.strip()


def logits_of(model, tokenizer):
    tokens = mx.array([tokenizer.encode(FACTS[1][0] + FACTS[1][1])])
    return model(tokens).astype(mx.float32)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_load_in_mlx_lm_and_fuse_exactly(kind, tiny_model, sft_dir, tmp_path):
    out = tmp_path / kind
    run_sft(
        sft_config(
            tiny_model, sft_dir, out, steps=8, dora=kind == "dora", lora_layers=1
        )
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == kind and config["num_layers"] == 1
    assert config["lora_parameters"]["scale"] == 2.0  # alpha 16 / rank 8

    base, tokenizer = mlx_lm.load(str(tiny_model))
    adapted, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    fused_dir = fuse_adapters(str(tiny_model), str(out), str(tmp_path / "fused"))
    fused, _ = mlx_lm.load(str(fused_dir))

    base_logits, adapted_logits = (
        logits_of(base, tokenizer),
        logits_of(adapted, tokenizer),
    )
    assert (
        mx.abs(adapted_logits - base_logits).max().item() > 1e-3
    )  # training moved them
    assert mx.allclose(logits_of(fused, tokenizer), adapted_logits, atol=1e-4).item()
    assert not any("lora" in k for k in mx.load(str(fused_dir / "model.safetensors")))


def test_adapter_logits_match_the_trained_model_exactly(tiny_model, sft_dir, tmp_path):
    """What mlx_lm.load(adapter_path=...) rebuilds is the model the trainer held."""
    from mlx_align.model.adapters import attach_adapters

    out = tmp_path / "run"
    run_sft(sft_config(tiny_model, sft_dir, out, steps=5))
    config = json.loads((out / "adapter_config.json").read_text())
    ours, tokenizer = mlx_lm.load(str(tiny_model))
    attach_adapters(ours, config)
    ours.load_weights(str(out / "adapters.safetensors"), strict=False)
    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    ours.eval()
    assert mx.array_equal(
        logits_of(ours, tokenizer), logits_of(theirs, tokenizer)
    ).item()


def test_full_finetune_writes_a_loadable_model(tiny_model, sft_dir, tmp_path):
    result = run_sft(
        sft_config(
            tiny_model,
            sft_dir,
            tmp_path / "full",
            full=True,
            steps=30,
            learning_rate=3e-3,
        )
    )
    model, tokenizer = mlx_lm.load(str(result))
    train_lines, _ = read_metrics(tmp_path / "full")
    assert train_lines[-1]["loss"] < 0.5 * train_lines[0]["loss"]
    assert (result / "tokenizer.json").exists()


def test_qlora_trains_on_a_4bit_base_and_fuses_dequantized(
    tiny_model, sft_dir, tmp_path
):
    out = tmp_path / "q"
    run_sft(sft_config(tiny_model, sft_dir, out, quantize=4, steps=30))
    train_lines, _ = read_metrics(out)
    assert train_lines[-1]["loss"] < 0.5 * train_lines[0]["loss"]
    fused = fuse_adapters(
        str(tiny_model), str(out), str(tmp_path / "fused"), dequantize=True
    )
    config = json.loads((fused / "config.json").read_text())
    assert "quantization" not in config
    mlx_lm.load(str(fused))
