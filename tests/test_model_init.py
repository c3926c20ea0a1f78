import json

import mlx.core as mx
import mlx_lm
from click.testing import CliRunner

from mlx_align.cli import cli
from mlx_align.model.tiny import EOS, IM_END, PAD


def test_init_model_loads_with_mlx_lm_and_generates(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.convert_tokens_to_ids(IM_END) in tokenizer.eos_token_ids
    text = mlx_lm.generate(model, tokenizer, "Question: What", max_tokens=5)
    assert isinstance(text, str)
    logits = model(mx.array([tokenizer.encode("The cat")]))
    assert logits.shape[-1] == config["vocab_size"]


def test_chat_template_renders_chatml(tiny_model):
    _, tokenizer = mlx_lm.load(str(tiny_model))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_init_model_cli_with_overrides(corpus_dir, tmp_path):
    out = tmp_path / "m"
    result = CliRunner().invoke(
        cli,
        [
            "init-model",
            "--corpus",
            str(corpus_dir),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--hidden-size",
            "32",
            "--num-layers",
            "1",
            "--vocab-size",
            "300",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 1)
    assert config["vocab_size"] <= 300
    mlx_lm.load(str(out))
