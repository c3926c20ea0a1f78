"""Build a llama-style model and a byte-level BPE tokenizer from scratch, offline.

The output is a plain mlx-lm model directory (``config.json``,
``model.safetensors``, ``tokenizer.json`` + ``tokenizer_config.json``), so
``mlx_lm.load`` and ``python -m mlx_lm generate`` use it unchanged. The
architecture is mlx-lm's ``llama``: RoPE, RMSNorm, SwiGLU and grouped-query
attention (fewer KV heads than query heads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.utils import save_config, save_model

from mlx_align.model.chat_templates import CHAT_TEMPLATES, TEMPLATE_TOKENS

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Sizes of a llama-style model; ``vocab_size`` is the BPE target size."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512


PRESETS: dict[str, TinyLlamaSpec] = {
    # For tests: a forward pass costs next to nothing.
    "tiny": TinyLlamaSpec(64, 2, 4, 2, 192, 512, 256),
    # ~3M parameters: the capstone and the benchmarks.
    "small": TinyLlamaSpec(256, 4, 8, 4, 688, 2048, 512),
    # ~25M parameters.
    "base": TinyLlamaSpec(512, 8, 8, 4, 1408, 8192, 1024),
}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, extra_special: Sequence[str] = ()):  # fmt: skip
    """Byte-level BPE (GPT-2 style) with our special tokens (and ``extra_special``);
    returns a ``tokenizers.Tokenizer``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    # Digits split one by one (as Llama 3 and DeepSeek do): arithmetic is learnable.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, out: Path, chat_template: str = "chatml") -> None:
    """Write the tokenizer as a transformers fast tokenizer with a chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[
            IM_START,
            IM_END,
            *TEMPLATE_TOKENS.get(chat_template, []),
        ],
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATES[chat_template]
    fast.save_pretrained(str(out))


def model_config(spec: TinyLlamaSpec, vocab_size: int, eos_ids: list[int]) -> dict:
    config = asdict(spec)
    config.update(
        model_type="llama",
        vocab_size=vocab_size,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        # Generation stops at the plain EOS and at the end of a chat turn.
        eos_token_id=eos_ids,
    )
    return config


def init_model(
    out: str | Path,
    spec: TinyLlamaSpec,
    corpus: Iterable[str],
    seed: int = 0,
    chat_template: str = "chatml",
) -> Path:
    """Train the tokenizer on ``corpus``, initialise the weights, save an mlx-lm model dir."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = TEMPLATE_TOKENS.get(chat_template, [])
    tokenizer = train_bpe_tokenizer(corpus, spec.vocab_size, extra)
    save_tokenizer(tokenizer, out, chat_template)
    eos_ids = [tokenizer.token_to_id(EOS), tokenizer.token_to_id(IM_END)]
    config = model_config(spec, tokenizer.get_vocab_size(), eos_ids)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    return out


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def init_model_from_config(config) -> Path:
    """``mlx-align init-model``: a preset, optionally resized, trained on the corpus's text."""
    from dataclasses import replace

    from mlx_align.core.errors import DataError, UserError
    from mlx_align.data.jsonl import read_jsonl

    if config.preset not in PRESETS:
        raise UserError(
            "--preset",
            f"unknown preset '{config.preset}' (choose from {', '.join(PRESETS)})",
        )
    overrides = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
    }
    spec = replace(PRESETS[config.preset], **{k: v for k, v in overrides.items() if v})
    corpus = Path(config.corpus)
    files = sorted(corpus.glob("*.jsonl")) if corpus.is_dir() else [corpus]
    if not files or not files[0].exists():
        raise DataError(str(corpus), 0, "no .jsonl corpus files found")
    texts = [
        text
        for f in files
        for record in read_jsonl(f)
        for text in _strings(record.fields)
    ]
    return init_model(
        config.out, spec, texts, seed=config.seed, chat_template=config.chat_template
    )
