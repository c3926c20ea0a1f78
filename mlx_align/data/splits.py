"""A stage's train and valid splits, read, encoded and batched in one call."""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from mlx_align.data.source import load_split
from mlx_align.data.tokenize import pad_id_of


def load_batched_splits(
    settings, tokenizer, encode: Callable, make_batches: Callable
) -> list:
    """``[train, valid]`` batches (train required; valid None when absent).

    ``encode(tokenizer, records, max_length, report=...)`` turns a split's
    records into items; ``make_batches(items, batch_size, max_length, pad_id,
    seed)`` groups them (``PairBatches``, ``KTOBatches``).
    """
    pad_id = pad_id_of(tokenizer)
    out = []
    for split in ("train", "valid"):
        records = load_split(settings.source, split, required=split == "train")
        items = records and encode(
            tokenizer, records, settings.max_length, report=tqdm.write
        )
        batches = items and make_batches(
            items, settings.batch_size, settings.max_length, pad_id, settings.seed
        )
        out.append(batches or None)
    return out
