"""Preference pairs: ``prompt`` + ``chosen`` / ``rejected`` -> one concatenated batch.

Chosen and rejected go through ONE forward: a batch of B pairs is a (2B, T)
array, chosen rows first, both halves padded to the same bucket length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..packing import Tree, pack_trees
from .batching import (
    BatchPlan,
    bucket_for,
    bucket_lengths,
    pad_examples,
    piece_bucket_lengths,
)
from .errors import DataError
from .jsonl import Record, require_str
from .tokenize import (
    Encoded,
    encode_chat,
    encode_prompt_completion,
    is_chat_field,
    require_messages,
)


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded
    margin: float = 0.0


def encode_completion(tokenizer, record: Record, key: str) -> Encoded:
    """``prompt`` + ``record[key]``: plain strings, or chat message lists through the template."""
    if is_chat_field(record, "prompt") or is_chat_field(record, key):
        prompt = require_messages(record, "prompt")
        completion = record.fields.get(key)
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        else:
            completion = require_messages(record, key)
        return encode_chat(tokenizer, prompt, completion)
    return encode_prompt_completion(
        tokenizer, require_str(record, "prompt"), require_str(record, key)
    )


def encode_pair(tokenizer, record: Record) -> Pair:
    margin = record.fields.get("margin", 0.0)
    if not isinstance(margin, int | float) or isinstance(margin, bool):
        raise DataError(record.path, record.line, "field 'margin' must be a number")
    chosen = encode_completion(tokenizer, record, "chosen")
    rejected = encode_completion(tokenizer, record, "rejected")
    return Pair(chosen, rejected, float(margin))


def truncate_prompt_left(example: Encoded, max_length: int) -> Encoded | None:
    """Drop prompt tokens from the left; None when the completion alone does not fit."""
    excess = len(example.tokens) - max_length
    if excess <= 0:
        return example
    if excess > example.completion_start - 1:  # keep at least one prompt token
        return None
    return Encoded(example.tokens[excess:], example.completion_start - excess)


def encode_pairs(
    tokenizer,
    records: list[Record],
    max_length: int,
    report: Callable[[str], None] = print,
    encoder: Callable[[object, Record], Pair] = encode_pair,
) -> list[Pair]:
    """Encode and fit every pair; truncations and pairs that cannot fit are counted aloud."""
    pairs, truncated, unusable = [], 0, 0
    for record in records:
        pair = encoder(tokenizer, record)
        chosen = truncate_prompt_left(pair.chosen, max_length)
        rejected = truncate_prompt_left(pair.rejected, max_length)
        if chosen is None or rejected is None:
            unusable += 1
            continue
        truncated += chosen is not pair.chosen or rejected is not pair.rejected
        pairs.append(Pair(chosen, rejected, pair.margin))
    name = records[0].path
    if truncated:
        report(
            f"{name}: {truncated} of {len(records)} prompts truncated from the left to fit {max_length} tokens"
        )
    if unusable:
        report(
            f"{name}: {unusable} of {len(records)} pairs skipped: a completion alone exceeds {max_length} tokens"
        )
    if not pairs:
        raise DataError(name, 0, "no usable preference pairs")
    return pairs


def split_prompt(example: Encoded) -> tuple[list[int], list[int]]:
    """(prompt, scored completion): the first token is never scored, as in ``pad_examples``."""
    start = max(example.completion_start, 1)
    return example.tokens[:start], example.tokens[start:]


class PairBatches:
    """Pairs -> ``(tokens (2B, T), loss_mask (2B, T), pair_index (B,))`` in a resumable order.

    ``pair_index`` is -1 on filler rows (a last batch short of pairs), so a
    stage can look up per-pair data such as cached reference log-probs.
    """

    def __init__(
        self,
        pairs: list[Pair],
        batch_size: int,
        max_length: int,
        pad_id: int,
        seed: int,
    ):
        self.pairs, self.batch_size, self.pad_id = pairs, batch_size, pad_id
        self.buckets = bucket_lengths(max_length)
        self.pieces = piece_bucket_lengths(max_length)  # shared-prompt pieces
        lengths = [max(len(p.chosen.tokens), len(p.rejected.tokens)) for p in pairs]
        self.plan = BatchPlan.by_length(lengths, batch_size, seed)

    def pad(
        self, indices: list[int], rows: int | None = None, widths: tuple = ()
    ) -> tuple[mx.array, mx.array, mx.array]:
        """``(tokens (2B, T), loss_mask, index (B,))``, chosen rows then rejected;
        B = ``rows`` (default: the batch size), T = ``widths[0]`` if given."""
        chosen = [self.pairs[i].chosen for i in indices]
        rejected = [self.pairs[i].rejected for i in indices]
        rows = rows or self.batch_size
        fill = rows - len(indices)
        empty = Encoded([self.pad_id], 1)
        examples = chosen + [empty] * fill + rejected + [empty] * fill
        tokens, mask = pad_examples(
            examples, 2 * rows, self.buckets, self.pad_id, *widths[:1]
        )
        return tokens, mask, self.index(indices, rows)

    def index(self, indices: list[int], rows: int | None = None) -> mx.array:
        """(B,) pair indices, -1 on filler rows; B = ``rows`` (default: the batch size)."""
        index = np.full(rows or self.batch_size, -1, dtype=np.int32)
        index[: len(indices)] = indices
        return mx.array(index)

    def pad_shared(
        self, indices: list[int], rows: int | None = None, widths: tuple = ()
    ) -> tuple[mx.array, ...] | None:
        """The prompt once per pair: ``(prompts (B, Lp) left-padded, prompt_mask,
        completions (2B, C) as chosen_0, rejected_0, chosen_1, ..., completion_mask)``.

        B is ``rows`` (default: the batch size); rows past the pairs are filler.
        ``widths`` = (Lp, C) fixes the widths (default: the buckets of the longest).
        None when a pair's chosen and rejected rows tokenise the prompt
        differently (a merge across the seam): then only full rows are exact.
        """
        split = [
            (split_prompt(self.pairs[i].chosen), split_prompt(self.pairs[i].rejected))
            for i in indices
        ]
        if any(chosen[0] != rejected[0] for chosen, rejected in split):
            return None
        prompts = [chosen[0] for chosen, _ in split]
        completions = [c[1] for pair in split for c in pair]  # chosen, rejected, ...
        rows = rows or self.batch_size
        fill = rows - len(indices)
        width, limit = widths or (
            bucket_for(max(map(len, prompts)), self.pieces),
            bucket_for(max(map(len, completions)), self.pieces),
        )
        prompt_ids = np.full((rows, width), self.pad_id, dtype=np.int32)
        prompt_mask = np.zeros((rows, width), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            prompt_ids[row, width - len(prompt) :] = prompt
            prompt_mask[row, width - len(prompt) :] = 1.0
        completion_ids = np.full((2 * rows, limit), self.pad_id, dtype=np.int32)
        completion_mask = np.zeros((2 * rows, limit), dtype=np.float32)
        for row, tokens in enumerate(completions + [[]] * (2 * fill)):
            completion_ids[row, : len(tokens)] = tokens
            completion_mask[row, : len(tokens)] = 1.0
        arrays = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        return tuple(mx.array(a) for a in arrays)

    def pad_packed(
        self, indices: list[int], rows: int | None = None
    ) -> tuple[mx.array, ...]:
        """The pairs packed without padding (``packing.pack_trees``): slot b is
        pair b's chosen completion, slot B + b its rejected one (B = ``rows``,
        default the batch size).

        A pair whose chosen and rejected rows tokenise the prompt alike is one
        tree (the prompt once); otherwise each row is its own tree.
        """
        trees, rows = [], rows or self.batch_size
        for b, i in enumerate(indices):
            chosen = split_prompt(self.pairs[i].chosen)
            rejected = split_prompt(self.pairs[i].rejected)
            slots = [b, rows + b]
            if chosen[0] == rejected[0]:
                trees.append(Tree(chosen[0], [chosen[1], rejected[1]], slots))
            else:
                trees.append(Tree(chosen[0], [chosen[1]], slots[:1]))
                trees.append(Tree(rejected[0], [rejected[1]], slots[1:]))
        return pack_trees(trees, 2 * rows, self.pad_id)

    def train_batch(self, k: int) -> tuple[mx.array, mx.array, mx.array]:
        return self.pad(self.plan.batch(k))

    def in_order(
        self, limit: int = -1
    ) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
        batches = self.plan.batches if limit < 0 else self.plan.batches[:limit]
        for indices in batches:
            yield self.pad(indices)
