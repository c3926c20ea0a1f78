"""Supervised fine-tuning (LoRA, DoRA, QLoRA or full) on completions; pretraining reuses it.

The loss is the mean negative log-likelihood over completion tokens only.
Unlike mlx-lm's ``default_loss`` (whose mask uses ``<=`` and so scores one
pad token per row), padding never counts here.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from mlx_align.batches.layouts import FullRows
from mlx_align.batches.planning import BatchPlan, bucket_lengths
from mlx_align.config.stages import SFTConfig
from mlx_align.data.sft import Encoder, encode_examples
from mlx_align.data.source import load_split
from mlx_align.data.tokenize import Encoded, encode_sft_record, pad_id_of
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def completion_nll_loss(model: nn.Module, batch: FullRows):
    """Mean NLL per completion token of (B, T) rows -> (loss, n_tokens, metrics)."""
    summed, lengths = batch.logps(model)  # (B,) each
    n_tokens = lengths.sum()
    return -summed.sum() / mx.maximum(n_tokens, 1), n_tokens, {}


class PaddedBatches:
    """Examples -> fixed-shape ``FullRows`` batches in a seeded, resumable order."""

    def __init__(
        self,
        examples: list[Encoded],
        batch_size: int,
        max_length: int,
        pad_id: int,
        seed: int,
    ):
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.buckets = bucket_lengths(max_length)
        self.plan = BatchPlan.by_length(
            [len(e.tokens) for e in examples], batch_size, seed
        )

    def pad(self, indices: list[int]) -> FullRows:
        chosen = [self.examples[i] for i in indices]
        return FullRows.pad(chosen, self.batch_size, self.buckets, self.pad_id)


def run_sft(config: SFTConfig, encoder: Encoder = encode_sft_record) -> Path:
    """Train and write the result: adapters in ``out`` (LoRA/DoRA) or ``out/model`` (full)."""
    return run_stage(sft_stage(encoder), config)


def sft_stage(encoder: Encoder) -> Stage:
    """SFT's phases: read both splits, encode them with ``encoder``, the NLL loss."""

    def read(config):
        return load_split(config.source, "train", required=True), load_split(
            config.source, "valid"
        )

    def data(run: StageRun) -> tuple[PaddedBatches, PaddedBatches | None]:
        config, pad_id = run.config, pad_id_of(run.tokenizer)

        def batches(records):
            examples = encode_examples(
                run.tokenizer, records, config.max_length, encoder, report=tqdm.write
            )
            return PaddedBatches(
                examples, config.batch_size, config.max_length, pad_id, config.seed
            )

        train_records, valid_records = run.records
        return batches(train_records), valid_records and batches(valid_records)

    def job(run: StageRun) -> Job:
        train_set, valid_set = run.data
        return Job(
            completion_nll_loss,
            train_batch=lambda k: train_set.pad(train_set.plan.local_batch(k)),
            valid=valid_set and (valid_set.plan, valid_set.pad),
        )

    return Stage(job, read=read, data=data)
