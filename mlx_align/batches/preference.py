"""Preference pairs: ``prompt`` + ``chosen`` / ``rejected`` -> one batch of 2B completions.

Chosen and rejected go through ONE forward, in any layout (``layouts.py``):
full rows (chosen rows first, both halves padded to one bucket length), the
prompt once per pair, or packed without padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_align.batches.layouts import FullRows, Layout, Packed, SharedPrompt
from mlx_align.batches.packing import Tree, pack_trees
from mlx_align.batches.planning import (
    BatchPlan,
    bucket_for,
    bucket_lengths,
    piece_bucket_lengths,
)
from mlx_align.batches.types import PairBatch, columns_by_index
from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import Record, require_text
from mlx_align.data.tokenize import (
    Encoded,
    encode_conversation,
    encode_prompt_completion,
    is_chat_field,
)


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded
    margin: float = 0.0


def encode_completion(tokenizer, record: Record, key: str) -> Encoded:
    """``prompt`` + ``record[key]``: plain strings, or chat message lists through
    the template (a string completion to a chat prompt is one assistant reply)."""
    if is_chat_field(record, "prompt") or is_chat_field(record, key):
        return encode_conversation(tokenizer, record, "prompt", key)
    return encode_prompt_completion(
        tokenizer, require_text(record, "prompt"), require_text(record, key)
    )


def require_margin(record: Record) -> float:
    """The optional ``margin`` of a pair (default 0): a finite number."""
    margin = record.fields.get("margin", 0.0)
    if isinstance(margin, int | float) and not isinstance(margin, bool):
        try:
            if math.isfinite(margin := float(margin)):
                return margin
        except OverflowError:
            pass
    raise DataError(record.path, record.line, "field 'margin' must be a finite number")


def encode_pair(tokenizer, record: Record) -> Pair:
    margin = require_margin(record)
    chosen = encode_completion(tokenizer, record, "chosen")
    rejected = encode_completion(tokenizer, record, "rejected")
    return Pair(chosen, rejected, margin)


def same_completion(chosen: Encoded, rejected: Encoded) -> bool:
    """Chosen and rejected encode alike: a pair with no preference in it."""
    return chosen.tokens == rejected.tokens


def report_same(
    name: str, same: int, total: int, kept: int, report: Callable[[str], None]
) -> None:
    """Pairs whose chosen equals rejected are skipped aloud; all of them is a DataError.

    Such a pair has no preference to learn: for DPO its gradient is zero at
    the start and it only dilutes the batch, and a reward model is asked to
    rank a completion above itself. TRL trains on them; here they are dropped.
    """
    if not same:
        return
    if not kept and same == total:
        raise DataError(
            name, 0, f"chosen equals rejected in all {total} pairs: nothing to prefer"
        )
    report(
        f"{name}: {same} of {total} pairs skipped: chosen equals rejected "
        "(no preference to learn)"
    )


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
    """Encode and fit every pair; truncations, pairs that cannot fit and pairs
    whose chosen equals rejected are counted aloud (and the last two skipped)."""
    pairs, truncated, unusable, same = [], 0, 0, 0
    for record in records:
        pair = encoder(tokenizer, record)
        if same_completion(pair.chosen, pair.rejected):
            same += 1
            continue
        chosen = truncate_prompt_left(pair.chosen, max_length)
        rejected = truncate_prompt_left(pair.rejected, max_length)
        if chosen is None or rejected is None:
            unusable += 1
            continue
        truncated += chosen is not pair.chosen or rejected is not pair.rejected
        pairs.append(Pair(chosen, rejected, pair.margin))
    name = records[0].path
    report_same(name, same, len(records), len(pairs), report)
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
    """(prompt, scored completion): the first token is never scored, as in ``batching.pad_examples``."""
    start = max(example.completion_start, 1)
    return example.tokens[:start], example.tokens[start:]


class PairBatches:
    """Pairs in a resumable order, padded in any layout as ``PairBatch``es.

    A batch of B pairs holds 2B completions, chosen ones first (slot order,
    ``layouts.py``); ``index`` is -1 on filler pairs (a last batch short of
    pairs), so a stage can look up per-pair data such as cached reference
    log-probs.
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
        self.margins = mx.array([p.margin for p in pairs], dtype=mx.float32)

    def maker(
        self, layout: str, reference: mx.array | None = None, margins: bool = False
    ) -> Callable[..., PairBatch]:
        """``make(indices, rows=None, widths=())``: pairs ``indices`` as a ``PairBatch``
        in ``layout`` (``layouts.LAYOUTS``), ``rows`` pairs (default: the batch
        size), padded to ``widths`` (default: their own). ``reference`` (N, 2)
        holds every pair's cached reference log-probs; ``margins`` adds the
        pairs' margins."""

        def make(indices: list[int], rows: int | None = None, widths: tuple = ()):
            index = self.index(indices, rows)
            return PairBatch(
                self.inputs(indices, layout, rows, widths),
                index,
                reference=None
                if reference is None
                else columns_by_index(reference, index),
                margins=columns_by_index(self.margins[:, None], index)
                if margins
                else None,
            )

        return make

    def inputs(
        self, indices: list[int], layout: str, rows: int | None = None, widths=()
    ) -> Layout:
        """The completions of pairs ``indices`` in ``layout``. A shared-prompt
        batch falls back to full rows when a pair's rows tokenise the prompt
        apart, and so does a piece of a batch that did (its ``widths`` are (T,))."""
        if not indices:  # a rank's empty share of a short last batch: all filler
            return self.full(indices, rows, widths[:1])
        if layout == "packed":
            return self.packed(indices, rows)
        if layout == "shared" and len(widths) != 1:
            shared = self.shared(indices, rows, widths)
            if shared is not None:
                return shared
        return self.full(indices, rows, widths)

    def index(self, indices: list[int], rows: int | None = None) -> mx.array:
        """(B,) pair indices, -1 on filler rows; B = ``rows`` (default: the batch size)."""
        index = np.full(rows or self.batch_size, -1, dtype=np.int32)
        index[: len(indices)] = indices
        return mx.array(index)

    def full(
        self, indices: list[int], rows: int | None = None, widths: tuple = ()
    ) -> FullRows:
        """2B rows, chosen then rejected; B = ``rows`` (default: the batch size),
        T = ``widths[0]`` if given."""
        chosen = [self.pairs[i].chosen for i in indices]
        rejected = [self.pairs[i].rejected for i in indices]
        rows = rows or self.batch_size
        fill = [Encoded([self.pad_id], 1)] * (rows - len(indices))
        examples = chosen + fill + rejected + fill
        return FullRows.pad(examples, 2 * rows, self.buckets, self.pad_id, *widths[:1])

    def shared(
        self, indices: list[int], rows: int | None = None, widths: tuple = ()
    ) -> SharedPrompt | None:
        """The prompt once per pair, its completions chosen, rejected.

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
        widths = widths or (
            bucket_for(max(map(len, prompts)), self.pieces),
            bucket_for(max(map(len, completions)), self.pieces),
        )
        rows = rows or self.batch_size
        return SharedPrompt.pad(prompts, completions, rows, self.pad_id, widths)

    def packed(self, indices: list[int], rows: int | None = None) -> Packed:
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
        return Packed(*pack_trees(trees, 2 * rows, self.pad_id))
