"""KTO data: unpaired ``prompt`` / ``completion`` / ``label`` examples, plus KL rows.

Paired records (``prompt`` / ``chosen`` / ``rejected``) are split into one
desirable and one undesirable example, as TRL does. A batch of B examples is
a (2B, T) array: B matched rows (prompt_i + completion_i), then B mismatched
rows (prompt_i + completion_j) whose log-ratios estimate KTO's reference
point z₀ (Ethayarajh et al. 2024). TRL's ``_get_kl_dataset`` makes
the same +1 shift over consecutive dataset rows and notes that the KL rows'
completions should be the batch's own; shifting within the batch gives
exactly that.

j is fixed per example: BatchPlan's batches (the grouping of examples) never
change, only the order they are visited in, so j is the next example of i's
own batch, and the mismatched rows can have their reference log-probs
precomputed and cached like the matched ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_align.batches.layouts import FullRows
from mlx_align.batches.planning import BatchPlan, bucket_lengths
from mlx_align.batches.preference import (
    encode_completion,
    report_same,
    same_completion,
    truncate_prompt_left,
)
from mlx_align.batches.types import KTOBatch, columns_by_index
from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import Encoded, truncate


@dataclass(frozen=True)
class KTOExample:
    example: Encoded
    label: bool  # True: desirable


def require_label(record: Record) -> bool:
    if "label" not in record.fields:
        raise DataError(record.path, record.line, "missing field 'label'")
    label = record.fields["label"]
    if not isinstance(label, bool):
        kind = type(label).__name__
        raise DataError(
            record.path,
            record.line,
            f"field 'label' must be true or false, got {kind} {label!r}",
        )
    return label


def encode_kto_record(tokenizer, record: Record) -> list[KTOExample]:
    """One unpaired example, or two (desirable, undesirable) from a preference pair."""
    fields = record.fields
    if "chosen" in fields or "rejected" in fields:
        return [
            KTOExample(encode_completion(tokenizer, record, "chosen"), True),
            KTOExample(encode_completion(tokenizer, record, "rejected"), False),
        ]
    if "completion" not in fields:
        raise DataError(
            record.path,
            record.line,
            "expected 'prompt' + 'completion' + 'label', or 'prompt' + 'chosen' + 'rejected'",
        )
    label = require_label(record)
    return [KTOExample(encode_completion(tokenizer, record, "completion"), label)]


def encode_kto(
    tokenizer,
    records: list[Record],
    max_length: int,
    report: Callable[[str], None] = print,
) -> list[KTOExample]:
    """Encode and fit every example; truncations, examples that cannot fit and
    pairs whose chosen equals rejected are counted aloud (and the last two skipped)."""
    examples, total, truncated, unusable, paired, same = [], 0, 0, 0, 0, 0
    for record in records:
        items = encode_kto_record(tokenizer, record)
        if len(items) == 2:  # a preference pair, split
            paired += 1
            if same_completion(items[0].example, items[1].example):
                same += 1
                continue
        for item in items:
            total += 1
            fitted = truncate_prompt_left(item.example, max_length)
            if fitted is None:
                unusable += 1
                continue
            truncated += fitted is not item.example
            examples.append(KTOExample(fitted, item.label))
    name = records[0].path
    report_same(name, same, paired, total, report)
    if truncated:
        report(
            f"{name}: {truncated} of {total} prompts truncated from the left to fit {max_length} tokens"
        )
    if unusable:
        report(
            f"{name}: {unusable} of {total} examples skipped: the completion alone exceeds {max_length} tokens"
        )
    if not examples:
        raise DataError(name, 0, "no usable KTO examples")
    return examples


def mismatch(prompt_of: Encoded, completion_of: Encoded, max_length: int) -> Encoded:
    """``prompt_of``'s prompt tokens + ``completion_of``'s completion tokens, fitted.

    Prompt tokens go first from the left (as for every example), so the
    completion is cut only if it came with no prompt of its own.
    """
    prompt = prompt_of.tokens[: prompt_of.completion_start]
    completion = completion_of.tokens[completion_of.completion_start :]
    return (
        truncate(Encoded(prompt + completion, len(prompt)), max_length) or completion_of
    )


def kl_partners(batches: list[list[int]]) -> dict[int, int]:
    """Example i -> j, whose completion follows i's prompt in i's KL row.

    j is the next example of i's batch (cyclically). An example alone in its
    batch takes the first example of the previous batch: its own completion
    would make z₀ its implied reward.
    """
    partner = {}
    for b, indices in enumerate(batches):
        for k, i in enumerate(indices):
            partner[i] = indices[(k + 1) % len(indices)]
        if len(indices) == 1 and len(batches) > 1:
            partner[indices[0]] = batches[b - 1][0]
    return partner


class KTOBatches:
    """Examples as ``KTOBatch``es: B matched rows, then B mismatched (KL) rows.

    ``index`` is -1 on filler rows (a last batch short of examples).
    ``matched`` / ``mismatched`` hold the rows of example i, so a stage can
    score and cache them per example.
    """

    def __init__(
        self,
        examples: list[KTOExample],
        batch_size: int,
        max_length: int,
        pad_id: int,
        seed: int,
    ):
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.buckets = bucket_lengths(max_length)
        self.matched = [e.example for e in examples]
        lengths = [len(e.tokens) for e in self.matched]
        self.plan = BatchPlan.by_length(lengths, batch_size, seed)
        partner = kl_partners(self.plan.batches)
        self.mismatched = [
            mismatch(self.matched[i], self.matched[partner[i]], max_length)
            for i in range(len(examples))
        ]

    def maker(self, reference: mx.array | None = None) -> Callable[..., KTOBatch]:
        """``make(indices)``: those examples as a ``KTOBatch``, with their cached
        reference log-probs from ``reference`` (N, 2: matched, KL row)."""

        def make(indices: list[int]) -> KTOBatch:
            batch = self.pad(indices)
            if reference is None:
                return batch
            return batch._replace(reference=columns_by_index(reference, batch.index))

        return make

    def pad(self, indices: list[int]) -> KTOBatch:
        fill = [Encoded([self.pad_id], 1)] * (self.batch_size - len(indices))
        rows = (
            [self.matched[i] for i in indices]
            + fill
            + [self.mismatched[i] for i in indices]
            + fill
        )
        inputs = FullRows.pad(rows, 2 * self.batch_size, self.buckets, self.pad_id)
        labels = np.zeros(self.batch_size, dtype=np.bool_)
        labels[: len(indices)] = [self.examples[i].label for i in indices]
        index = np.full(self.batch_size, -1, dtype=np.int32)
        index[: len(indices)] = indices
        return KTOBatch(inputs, mx.array(labels), mx.array(index))
