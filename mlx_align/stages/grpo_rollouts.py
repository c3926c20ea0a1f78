"""GRPO's batches: groups sampled from the policy, scored, batched for the loss, reused μ times.

Sampling is ``sampling/rollout.py``'s, scoring ``rewards/scoring.py``'s, advantages
``losses/advantages.py``'s and padding ``batches/layouts.py``'s; this module puts them in
order for one micro-batch and keeps it while μ optimizer steps use it.
Micro-batch k of the run uses rollout batch ``(step // μ) · A + micro``
(A = gradient accumulation).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

from mlx_align.batches.layouts import FullRows, SharedPrompt
from mlx_align.batches.planning import BatchPlan, bucket_for, bucket_lengths
from mlx_align.batches.types import GRPOBatch
from mlx_align.config.online import GRPOConfig, SamplingSettings
from mlx_align.core import distributed
from mlx_align.core.events import emit
from mlx_align.data.jsonl import Record, keep_lines
from mlx_align.data.prompts import check_prompt_records, encode_prompts
from mlx_align.data.source import load_split
from mlx_align.data.tokenize import Encoded, pad_id_of
from mlx_align.losses.advantages import decoupled_advantages, group_advantages
from mlx_align.losses.grpo import TOKEN_MEAN_LOSSES
from mlx_align.model.shared_prompts import supports_shared_prompts
from mlx_align.rewards.registry import reward_columns
from mlx_align.rewards.scoring import GroupScorer
from mlx_align.sampling.conversations import conversation_stats
from mlx_align.sampling.fused_sampler import FusedSampler, sampling_model
from mlx_align.sampling.rollout import Group, continue_rows, sample_groups
from mlx_align.stages.tool_rollouts import TOOL_STATS, ToolUse, sample_rows, uses_tools
from mlx_align.train.loop import step_seed

RANK_SEED_STRIDE = 7919  # rank r samples from the step's seed + r x this

ROLLOUT_STATS = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completion_length_mean",
    "completion_length_max",
)


def seed_for_rank(seed: int, step: int) -> None:
    """The RNG as ``loop.step_seed`` seeds ``step``, offset by the rank: each
    rank draws its own completions, and rank 0 (one process) those it drew
    before ranks existed."""
    offset = RANK_SEED_STRIDE * distributed.rank()
    mx.random.seed((step_seed(seed, step) + offset) % 2**32)


def read_prompt_splits(config, *splits: str) -> tuple[list[Record] | None, ...]:
    """The read phase of the sampling stages: each of ``splits`` of ``--data``
    ("train" required), every record checked for a prompt and for the columns
    its reward functions read, before any model loads."""
    records = tuple(load_split(config.source, s, required=s == "train") for s in splits)
    for split in filter(None, records):
        check_prompt_records(split, needs=reward_columns(config.reward))
    return records


def draw(
    model: nn.Module,
    settings: SamplingSettings,
    prompts: list[list[int]],
    group_size: int,
    eos_ids: set[int],
    max_tokens: int | None = None,
    keep_history: bool = False,
) -> list[Group]:
    """``group_size`` completions of each prompt with the stage's sampling
    settings (``rollout.sample_groups``), stopping at ``eos_ids``, at most
    ``max_tokens`` (default ``--max-completion-tokens``); emits ``rollout``
    (lengths, seconds)."""
    tic = time.perf_counter()
    groups = sample_groups(
        model,
        prompts,
        group_size,
        max_tokens or settings.max_completion_tokens,
        eos_ids,
        settings.temperature,
        settings.top_p,
        keep_history=keep_history,
    )
    lengths = [len(c) for g in groups for c in g.completions]
    emit("rollout", lengths=lengths, seconds=time.perf_counter() - tic)
    return groups


def rollout_index(micro_batch: int, accumulation: int, passes: int) -> int:
    """The rollout batch that micro-batch k trains on: each is reused for ``passes`` steps."""
    step, micro = divmod(micro_batch, accumulation)
    return (step // passes) * accumulation + micro


class Rollouts:
    """Micro-batch k of a GRPO run: sampled, scored and batched once, reused μ times."""

    def __init__(
        self, config: GRPOConfig, model: nn.Module, tokenizer, records: list[Record]
    ):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.records = records
        room = config.max_length - config.max_completion_tokens
        self.tool_use = ToolUse(config, tokenizer, records, room) if uses_tools(config) else None  # fmt: skip
        if self.tool_use:
            self.prompts = self.tool_use.prompts
        else:
            self.prompts = encode_prompts(tokenizer, records, room, report=tqdm.write)
        # Every rank samples a full share (GRPO has no filler rows); one
        # process keeps a short last batch.
        self.plan = BatchPlan.by_length(
            [len(p) for p in self.prompts],
            config.batch_size,
            config.seed,
            fill_last=distributed.size() > 1,
        )
        self.scorer = GroupScorer(config.reward, config.reward_weights)
        self.eos_ids = set(tokenizer.eos_token_ids)
        self.pad_id = pad_id_of(tokenizer)
        self.buckets = bucket_lengths(config.max_length)
        self.reference: nn.Module | None = None  # run once per rollout when β > 0
        self.sampler: FusedSampler | None = None  # set once adapters are on
        # Score each prompt once per group in the train step (exact; where the probe allows).
        self.shared_prompts = supports_shared_prompts(model)
        self.cache: dict[int, GRPOBatch] = {}
        self.samples_path = Path(config.out) / "samples.jsonl"

    @property
    def stat_names(self) -> list[str]:
        """What ``GRPOBatch.stats`` holds, in order."""
        tools = TOOL_STATS if self.tool_use else ()
        return [*ROLLOUT_STATS, *self.scorer.metric_names, *tools]

    def micro_batch(self, k: int) -> GRPOBatch:
        accumulation = self.config.grad_accumulation
        rollout_id = rollout_index(k, accumulation, self.config.iterations)
        if rollout_id not in self.cache:
            self.seed_group(rollout_id)
            kept = {
                i: v for i, v in self.cache.items() if i > rollout_id - accumulation
            }
            self.cache = {rollout_id: self.sample(rollout_id), **kept}
        return self.cache[rollout_id]

    def seed_group(self, rollout_id: int) -> None:
        """Before the first rollout batch of a step's group, ``seed_for_rank`` of
        that step. Checkpoints fall on group boundaries
        (``TrainJob.checkpoint_multiple``), so a resumed run draws the same.
        """
        accumulation, passes = self.config.grad_accumulation, self.config.iterations
        group, micro = divmod(rollout_id, accumulation)
        if micro == 0:
            seed_for_rank(self.config.seed, group * passes + 1)

    def sample(self, rollout_id: int) -> GRPOBatch:
        """Sample the rollout batch's groups, score them, and batch them for the loss."""
        config, indices = self.config, self.plan.local_batch(rollout_id)
        records = [self.records[i] for i in indices]
        columns, tool_stats = {}, {}
        if self.tool_use:
            groups, trajectories = self.converse(indices, records)
            texts = [t.final_text for t in trajectories]  # what a reward reads
            shown = sample_rows(trajectories)
            tool_stats = conversation_stats(trajectories)
            if self.tool_use.factory:
                columns["environments"] = [t.toolbox.environment for t in trajectories]
        else:
            groups = self.sample_groups(indices)
            texts = shown = [
                self.tokenizer.decode([t for t in c if t not in self.eos_ids])
                for g in groups
                for c in g.completions
            ]
        tic = time.perf_counter()
        per_function = self.scorer.per_function(records, config.group_size, texts, columns)  # fmt: skip
        rewards, reward_metrics = self.scorer.combine(per_function)
        emit("rewards", seconds=time.perf_counter() - tic)
        if rollout_id % max(config.log_every, 1) == 0 and distributed.is_main():
            write_samples(
                self.samples_path, rollout_id, self.tokenizer, groups, shown, rewards
            )
        inputs = self.inputs(groups)
        if config.mask_truncated_completions:  # as TRL: out of the loss entirely
            ended = [bool(c) and c[-1] in self.eos_ids for g in groups for c in g.completions]  # fmt: skip
            inputs = without_rows(inputs, mx.array(ended, dtype=mx.float32))
        old_logps = self.fixed_logps(self.model, inputs) if self.needs_old_logps else None  # fmt: skip
        ref_logps = self.fixed_logps(self.reference, inputs)
        advantages, adv_metrics = self.advantages(
            rewards, per_function, inputs, old_logps, ref_logps
        )
        lengths = [len(c) for g in groups for c in g.completions]
        stats = {
            **reward_metrics,
            **{name: value.item() for name, value in adv_metrics.items()},
            "completion_length_mean": sum(lengths) / len(lengths),
            "completion_length_max": max(lengths),
            **tool_stats,
        }
        return GRPOBatch(
            inputs,
            old_logps=old_logps,
            ref_logps=ref_logps,
            advantages=advantages,
            stats=mx.array([float(stats.get(n, 0.0)) for n in self.stat_names]),
            tokens=trained_tokens(inputs) if self.token_mean else None,
        )

    @property
    def needs_old_logps(self) -> bool:
        """The policy's log-probs at sampling time, held fixed: with μ > 1 (the ratio)."""
        return self.config.iterations > 1

    @property
    def token_mean(self) -> bool:
        """The loss is a token mean over the whole batch: ranks weigh by tokens."""
        return self.config.loss in TOKEN_MEAN_LOSSES

    def advantages(
        self, rewards: mx.array, per_function, inputs, old_logps, ref_logps
    ) -> tuple[mx.array, dict[str, mx.array]]:
        """GRPO's: the weighted reward against its group (``--scale-rewards``), or
        each function's against its group, then their sum over the batch (GDPO)."""
        del inputs, old_logps, ref_logps
        config = self.config
        if config.multi_objective_aggregation == "normalize_then_sum":
            return decoupled_advantages(per_function, self.scorer.weights, config.group_size)  # fmt: skip
        return group_advantages(rewards, config.group_size, config.scale_rewards)

    def sample_groups(self, indices: list[int]) -> list[Group]:
        """G completions of each prompt ``indices`` from the policy (or its fused twin)."""
        prompts = [self.prompts[i] for i in indices]
        with sampling_model(self.model, self.sampler) as model:
            return draw(
                model, self.config, prompts, self.config.group_size, self.eos_ids
            )

    def converse(self, indices: list[int], records: list[Record]):
        """Multi-turn groups (``--tool`` / ``--environment``) and their trajectories."""
        with sampling_model(self.model, self.sampler) as model:
            return converse_with(self.tool_use, model, self.config, indices, records, self.config.group_size)  # fmt: skip

    def inputs(self, groups: list[Group]) -> FullRows | SharedPrompt:
        """The groups as the loss scores them: prompts once per group, or full rows;
        tool turns out of the loss."""
        inputs = self.padded(groups)
        return masked_turns(inputs, groups) if groups[0].masks is not None else inputs

    def padded(self, groups: list[Group]) -> FullRows | SharedPrompt:
        if self.shared_prompts:
            width = bucket_for(max(len(g.prompt) for g in groups), self.buckets)
            widths = (width, self.config.max_completion_tokens)
            completions = [c for g in groups for c in g.completions]
            prompts = [g.prompt for g in groups]
            return SharedPrompt.pad(
                prompts, completions, len(groups), self.pad_id, widths
            )
        rows = [
            Encoded(g.prompt + c, len(g.prompt)) for g in groups for c in g.completions
        ]
        return FullRows.pad(rows, len(rows), self.buckets, self.pad_id)

    @staticmethod
    def fixed_logps(model: nn.Module | None, inputs) -> mx.array | None:
        """Per-token log-probs of ``model`` at rollout time, held fixed; None without a model."""
        if model is None:
            return None
        per_token = mx.stop_gradient(inputs.token_logps(model)[0])
        mx.eval(per_token)
        return per_token


def converse_with(
    tool_use: ToolUse,
    model: nn.Module,
    settings: SamplingSettings,
    indices: list[int],
    records: list[Record],
    group_size: int,
):
    """``group_size`` conversations of each prompt ``indices``, sampled by
    ``model`` with the stage's settings: each turn ``draw``n, every later one
    continued from the rows' keys and values (``rollout.continue_rows``)."""
    stops = tool_use.template.eos_ids | {tool_use.stop_id}

    def sample_turn(prompts, group_size, max_tokens):
        return draw(model, settings, prompts, group_size, stops, max_tokens, keep_history=True)  # fmt: skip

    def continue_turn(histories, feeds, max_tokens):
        tic = time.perf_counter()
        rows = continue_rows(model, histories, feeds, max_tokens, stops, settings.temperature, settings.top_p)  # fmt: skip
        emit("rollout", lengths=[len(r) for r in rows[0]], seconds=time.perf_counter() - tic)  # fmt: skip
        return rows

    budget = settings.max_completion_tokens
    return tool_use.roll_out(sample_turn, indices, records, group_size, budget, continue_turn)  # fmt: skip


def masked_turns(
    inputs: FullRows | SharedPrompt, groups: list[Group]
) -> FullRows | SharedPrompt:
    """``inputs`` with only the model's own tokens of multi-turn completions
    (``Group.masks``) in the loss mask."""
    shared = isinstance(inputs, SharedPrompt)
    current = inputs.completion_mask if shared else inputs.loss_mask
    keep = np.zeros(current.shape, dtype=np.float32)
    rows = [(g.prompt, m) for g in groups for m in g.masks]
    for r, (prompt, mask) in enumerate(rows):
        begin = 0 if shared else len(prompt)
        keep[r, begin : begin + len(mask)] = mask
    if shared:
        return inputs._replace(completion_mask=current * mx.array(keep))
    return inputs._replace(loss_mask=current * mx.array(keep))


def without_rows(
    inputs: FullRows | SharedPrompt, keep: mx.array
) -> FullRows | SharedPrompt:
    """``inputs`` with the completions of rows where ``keep`` is 0 out of the loss mask."""
    if isinstance(inputs, SharedPrompt):
        return inputs._replace(completion_mask=inputs.completion_mask * keep[:, None])
    return inputs._replace(loss_mask=inputs.loss_mask * keep[:, None])


def trained_tokens(inputs: FullRows | SharedPrompt) -> mx.array:
    """The completion tokens the loss trains on, a scalar."""
    mask = inputs.completion_mask if isinstance(inputs, SharedPrompt) else inputs.loss_mask  # fmt: skip
    tokens = mask.sum().astype(mx.float32)
    mx.eval(tokens)  # a compiled step's input must not be a graph over another
    return tokens


def write_samples(
    path: Path,
    rollout_id: int,
    tokenizer,
    groups: list[Group],
    texts,
    rewards,
    per_group: int = 2,
) -> None:
    """Append the first ``per_group`` completions of each group, with their rewards,
    to ``path``, after dropping any of rollout ``rollout_id`` or later (from an
    older run, or from past the checkpoint a resumed run restarts at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_lines(path, lambda row: row.get("rollout", 0) < rollout_id)
    size = len(texts) // len(groups)
    rows = []
    with open(path, "a") as f:
        for j, group in enumerate(groups):
            prompt = tokenizer.decode(group.prompt)
            for c in range(min(per_group, size)):
                row = {
                    "rollout": rollout_id,
                    "prompt": prompt,
                    "completion": texts[j * size + c],
                    "reward": rewards[j * size + c].item(),
                }
                f.write(json.dumps(row) + "\n")
                rows.append(row)
    emit("samples", rows=rows)  # --report-to trackers show them as a table
