"""Give a trained model another chat template and the special tokens it needs:
``mlx-align set-template``.

The capstone's model was built with the ``qa`` template, whose tokenizer has
no tool-call tokens; ``qa-tools`` needs two. They are appended to the
tokenizer, so every other token keeps its id, and the embedding (and an
untied output layer) gains a row for each id past its end. A new row is
drawn as transformers' ``resize_token_embeddings(mean_resizing=True)`` draws
it, with a diagonal covariance: the old rows' mean plus their per-dimension
standard deviation times a standard normal. Each new token so starts
distinct from the others and like a typical one, and the old tokens'
logits are unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx

from mlx_align.core.errors import UserError
from mlx_align.model.chat_templates import CHAT_TEMPLATES, TEMPLATE_TOKENS

# The weights indexed by token id, in mlx-lm's names.
VOCAB_WEIGHTS = ("embed_tokens.weight", "lm_head.weight")


def new_rows(weight: mx.array, count: int, key: mx.array) -> mx.array:
    """(V, H) -> (V + count, H): ``count`` rows drawn around the old rows' mean."""
    old = weight.astype(mx.float32)
    mean, std = old.mean(axis=0), old.std(axis=0)  # (H,) each
    drawn = mean + std * mx.random.normal((count, old.shape[1]), key=key)  # (count, H)
    return mx.concatenate([weight, drawn.astype(weight.dtype)])


def grow_vocab_weights(model_dir: Path, vocab_size: int, rows: int, seed: int) -> list[str]:  # fmt: skip
    """Append rows to every weight of ``vocab_size`` rows named in VOCAB_WEIGHTS,
    in place; returns their names."""
    grown = []
    key = mx.random.key(seed)
    for path in sorted(model_dir.glob("*.safetensors")):
        weights = mx.load(str(path))
        if any(k.endswith(("embed_tokens.scales", "lm_head.scales")) for k in weights):
            raise UserError("--model", "the embedding is quantized; new token rows need a float model")  # fmt: skip
        for name, weight in weights.items():
            if name.endswith(VOCAB_WEIGHTS) and weight.shape[0] == vocab_size:
                key, draw = mx.random.split(key)
                weights[name] = new_rows(weight, rows - vocab_size, draw)
                grown.append(name)
        mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})
    if not grown:
        raise UserError("--model", f"no weight named {' or '.join(VOCAB_WEIGHTS)} has {vocab_size} rows")  # fmt: skip
    return grown


def set_chat_template(model: str | Path, save_path: str | Path, chat_template: str, seed: int = 0) -> Path:  # fmt: skip
    """A copy of the model directory ``model`` at ``save_path`` with
    ``chat_template`` and the special tokens it needs (TEMPLATE_TOKENS)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    source, out = Path(model), Path(save_path)
    if not (source / "config.json").is_file():
        raise UserError("--model", f"{source} is not a model directory (no config.json)")  # fmt: skip
    if chat_template not in CHAT_TEMPLATES:
        raise UserError("--chat-template", f"unknown template {chat_template!r}")
    shutil.copytree(source, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    vocab = tokenizer.get_vocab()
    missing = [t for t in TEMPLATE_TOKENS.get(chat_template, []) if t not in vocab]
    # add_tokens, not add_special_tokens: its keyword to keep the tokenizer's
    # own extra special tokens was renamed in transformers 5.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATES[chat_template]
    tokenizer.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    if len(tokenizer) > config["vocab_size"]:  # a padded vocabulary may have room
        grow_vocab_weights(out, config["vocab_size"], len(tokenizer), seed)
        config["vocab_size"] = len(tokenizer)
        (out / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True))
    return out
