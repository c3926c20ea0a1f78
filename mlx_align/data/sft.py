"""SFT and pretraining examples: records -> truncated token ids, with counts reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import Record, require_text
from mlx_align.data.tokenize import Encoded, encode_sft_record, encode_text, truncate

Encoder = Callable[[object, Record], Encoded]


def encode_pretrain_record(tokenizer, record: Record) -> Encoded:
    return encode_text(tokenizer, require_text(record, "text"))


def encode_examples(
    tokenizer,
    records: list[Record],
    max_length: int,
    encoder: Encoder = encode_sft_record,
    report: Callable[[str], None] = print,
) -> list[Encoded]:
    """Encode one split; truncated and unusable examples are counted, never dropped silently."""
    split = Path(records[0].path).stem
    examples, truncated, unusable = [], 0, 0
    for record in records:
        encoded = encoder(tokenizer, record)
        fitted = truncate(encoded, max_length)
        if fitted is None or fitted.n_completion <= 0:
            unusable += 1
            continue
        truncated += fitted is not encoded
        examples.append(fitted)
    if truncated:
        report(
            f"{split}: {truncated} of {len(records)} examples truncated to {max_length} tokens"
        )
    if unusable:
        report(
            f"{split}: {unusable} examples skipped: no completion token fits in {max_length}"
        )
    if not examples:
        raise DataError(records[0].path, 0, "no usable examples")
    return examples
