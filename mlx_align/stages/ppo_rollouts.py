"""PPO's batches: completions sampled, scored, valued, turned into advantages, reused.

A rollout batch holds R = ``num_mini_batches`` x ``grad_accumulation`` x
``batch_size`` prompts per rank, one completion each (TRL's
``local_batch_size``). Sampling is GRPO's (``rollout.sample_groups`` with
G = 1, from the fused twin when ``--fuse-rollout``); then, once per rollout,
the policy's log-probs, the reference's, the critic's values and the
score, the KL-shaped rewards and GAE (``losses/ppo.py``). The loop's steps
run over it ``ppo_epochs`` times in ``num_mini_batches`` mini-batches (one
optimizer step each, a fresh shuffle every epoch, as TRL), so optimizer step
s trains on rollout ``s // (ppo_epochs · num_mini_batches)``; checkpoints
fall on those boundaries and a resumed run samples the same rollouts.

Rows are ``FullRows``: with one completion per prompt a shared prompt saves
nothing, and the critic reads the very positions the log-probs come from.
Log-probs are at temperature 1 for any sampling temperature, as GRPO's here
(TRL divides the logits by the temperature first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_align.batches.layouts import FullRows
from mlx_align.batches.planning import BatchPlan, bucket_lengths
from mlx_align.batches.preference import encode_completion
from mlx_align.config.online import PPOConfig
from mlx_align.core import distributed
from mlx_align.core.errors import UserError
from mlx_align.core.events import emit
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import Encoded, pad_id_of
from mlx_align.losses.ppo import gae, kl_shaped_rewards, masked_whiten
from mlx_align.model.reward_head import RewardModel
from mlx_align.model.value_head import ActorCritic
from mlx_align.rewards.scoring import GroupScorer
from mlx_align.sampling.conversations import conversation_stats
from mlx_align.sampling.fused_sampler import FusedSampler, sampling_model
from mlx_align.sampling.reward_model import score_examples
from mlx_align.sampling.rollout import Group
from mlx_align.stages.grpo_rollouts import (
    converse_with,
    draw,
    masked_turns,
    seed_for_rank,
    write_samples,
)
from mlx_align.stages.tool_rollouts import TOOL_STATS, ToolUse, sample_rows

ROLLOUT_STATS = (
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "val/num_eos_tokens",
    "completion_length_mean",
)


class PPOBatch(NamedTuple):
    """Completions of one rollout batch (or a mini-batch of it) and what PPO fixed at rollout time."""

    inputs: FullRows  # (N, T) prompt + completion rows
    old_logps: mx.array  # (N, T-1) the policy's per-token log-probs at rollout time
    old_values: mx.array  # (N, T-1) the critic's values at rollout time
    advantages: mx.array  # (N, T-1) whitened GAE advantages, 0 off the completion
    returns: mx.array  # (N, T-1) the critic's targets: advantages + values
    stats: mx.array  # rollout statistics, in the order of ``PPORollouts.stat_names``

    @property
    def n_examples(self) -> mx.array:
        """The completions: every one is real, so ranks and micro-batches weigh alike."""
        return mx.array(float(self.advantages.shape[0]))

    def rows(self, index: mx.array) -> PPOBatch:
        """The completions ``index`` (their padding width kept, so shapes repeat)."""
        inputs = FullRows(self.inputs.tokens[index], self.inputs.loss_mask[index])
        per_row = (self.old_logps, self.old_values, self.advantages, self.returns)
        return PPOBatch(inputs, *(a[index] for a in per_row), self.stats)


def locate(micro_batch: int, config: PPOConfig) -> tuple[int, int, int]:
    """Micro-batch k of the run -> (rollout, epoch, position of its rows in the epoch's order).

    Rows ``position .. position + batch_size`` of the epoch's shuffle are its rows.
    """
    accumulation = config.grad_accumulation
    step, micro = divmod(micro_batch, accumulation)
    rollout, within = divmod(step, config.ppo_epochs * config.num_mini_batches)
    epoch, mini = divmod(within, config.num_mini_batches)
    return rollout, epoch, (mini * accumulation + micro) * config.batch_size


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode (no dropout) inside the block, their own mode after."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, modes, strict=True):
            module.train(training)


def fixed_per_token(
    fn: Callable[[FullRows], mx.array], inputs: FullRows, rows: int
) -> mx.array:
    """``fn`` of ``inputs`` ``rows`` rows at a time, detached and evaluated: (N, T-1)."""
    parts = []
    for start in range(0, inputs.tokens.shape[0], rows):
        chunk = FullRows(*(a[start : start + rows] for a in inputs))
        parts.append(mx.stop_gradient(fn(chunk)))
        mx.eval(parts[-1])
    return mx.concatenate(parts)


class CompletionScorer:
    """A completion's score: the reward model's reading at its last token, plus the
    ``--reward`` functions (weighted as ``--reward-weights``)."""

    def __init__(
        self,
        reward_model: RewardModel | None,
        reward_tokenizer,
        config: PPOConfig,
        tokenizer,
    ):
        self.reward_model, self.reward_tokenizer = reward_model, reward_tokenizer
        self.functions = (
            GroupScorer(config.reward, config.reward_weights) if config.reward else None
        )
        self.same_tokens = reward_model is not None and (
            reward_tokenizer is tokenizer
            or reward_tokenizer.get_vocab() == tokenizer.get_vocab()
        )
        self.pad_id, self.batch_size = pad_id_of(tokenizer), config.batch_size

    @property
    def metric_names(self) -> list[str]:
        names = self.functions.metric_names if self.functions else []
        return names + (["rewards/reward_model/mean"] if self.reward_model else [])

    def __call__(
        self,
        records: Sequence[Record],
        groups: Sequence[Group],
        texts: Sequence[str],
        columns: dict | None = None,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """(N,) scores of the completions (one per record) and their metrics;
        ``columns`` go to the reward functions (e.g. ``environments``)."""
        scores, metrics = np.zeros(len(texts), dtype=np.float32), {}
        if self.reward_model is not None:
            from_model = np.array(self.model_scores(records, groups, texts))
            metrics["rewards/reward_model/mean"] = float(from_model.mean())
            scores += from_model
        if self.functions is not None:
            per_function = self.functions.per_function(records, 1, texts, columns)
            rewards, function_metrics = self.functions.combine(per_function)
            scores += np.array(rewards)
            metrics.update(function_metrics)
        return scores, metrics

    def model_scores(self, records, groups, texts) -> list[float]:
        """The reward model's scores: of the sampled tokens themselves when it shares
        the policy's tokenizer, else of the decoded text (re-encoded as in training)."""
        if self.same_tokens:
            rows = [Encoded(g.prompt + g.completions[0], len(g.prompt)) for g in groups]
            return score_examples(self.reward_model, rows, self.pad_id, self.batch_size)
        rows = [
            encode_completion(
                self.reward_tokenizer,
                Record(r.path, r.line, {"prompt": r.fields["prompt"], "c": text}),
                "c",
            )
            for r, text in zip(records, texts, strict=True)
        ]
        pad_id = pad_id_of(self.reward_tokenizer)
        return score_examples(self.reward_model, rows, pad_id, self.batch_size)


class PPORollouts:
    """Micro-batch k of a PPO run, from rollout batches sampled once and reused."""

    def __init__(
        self,
        config: PPOConfig,
        model: ActorCritic,
        reference: nn.Module,
        scorer: CompletionScorer,
        tokenizer,
        prompts: tuple[list[Record], list[list[int]]],
        tools: tuple[ToolUse | None, ToolUse | None] = (None, None),
    ):
        """``tools``: the train and valid prompts' ``--tool`` / ``--environment``
        (``tool_rollouts.ToolUse``), whose trajectories are then the completions."""
        self.config, self.model, self.reference = config, model, reference
        self.tools = tools
        self.scorer, self.tokenizer = scorer, tokenizer
        self.records, self.prompts = prompts
        if len(self.records) < self.rollout_size * distributed.size():
            raise UserError(
                "--data",
                f"{len(self.records)} usable training prompts, fewer than one rollout "
                f"batch of {self.rollout_size * distributed.size()} (--batch-size x "
                "--grad-accumulation x --num-mini-batches, per rank)",
            )
        lengths = [len(p) for p in self.prompts]
        self.plan = BatchPlan.by_length(
            lengths, self.rollout_size, config.seed, fill_last=True
        )
        self.eos_ids = set(tokenizer.eos_token_ids)
        self.pad_id = pad_id_of(tokenizer)
        self.buckets = bucket_lengths(config.max_length)
        self.sampler: FusedSampler | None = None  # set once adapters are on
        self.cached: tuple[int, PPOBatch] | None = None
        self.samples_path = Path(config.out) / "samples.jsonl"

    @property
    def rollout_size(self) -> int:
        config = self.config
        return config.batch_size * config.grad_accumulation * config.num_mini_batches

    @property
    def steps_per_rollout(self) -> int:
        return self.config.ppo_epochs * self.config.num_mini_batches

    @property
    def stat_names(self) -> list[str]:
        """What ``PPOBatch.stats`` holds, in order."""
        return [
            *ROLLOUT_STATS,
            *self.scorer.metric_names,
            *(TOOL_STATS if self.tools[0] else ()),
        ]

    def micro_batch(self, k: int) -> PPOBatch:
        rollout_id, epoch, start = locate(k, self.config)
        if self.cached is None or self.cached[0] != rollout_id:
            self.seed_rollout(rollout_id)
            indices = self.plan.local_batch(rollout_id)
            batch = self.make_batch(indices, self.records, self.prompts, rollout_id, self.tools[0])  # fmt: skip
            self.cached = (rollout_id, batch)
        order = np.random.default_rng([self.config.seed, rollout_id, epoch])
        rows = order.permutation(self.rollout_size)[
            start : start + self.config.batch_size
        ]
        return self.cached[1].rows(mx.array(rows))

    def seed_rollout(self, rollout_id: int) -> None:
        """The RNG as the rollout's first step seeded it (``loop.step_seed``), offset
        by the rank, so a resumed run (checkpoints fall on rollout boundaries)
        samples what the uninterrupted run did."""
        seed_for_rank(self.config.seed, rollout_id * self.steps_per_rollout + 1)

    def eval_batch(self, indices: list[int], records: list[Record], prompts: list[list[int]]) -> PPOBatch:  # fmt: skip
        """A held-out batch: prompts ``indices`` sampled from the current policy, scored, valued."""
        mx.random.seed(self.config.seed)  # every evaluation draws alike
        return self.make_batch(indices, records, prompts, None, self.tools[1])

    def make_batch(
        self,
        indices: Sequence[int],
        records: Sequence[Record],
        prompts: Sequence[list[int]],
        rollout_id: int | None = None,
        tool_use: ToolUse | None = None,
    ) -> PPOBatch:
        """Sample one completion (with ``tool_use``, one conversation) of each prompt
        ``indices``, score it, and fix PPO's targets."""
        chosen = [records[i] for i in indices]
        columns, tool_stats = {}, {}
        if tool_use:
            groups, trajectories = self.converse(tool_use, indices, chosen)
            texts = [t.final_text for t in trajectories]
            shown, tool_stats = (
                sample_rows(trajectories),
                conversation_stats(trajectories),
            )
            if tool_use.factory:
                columns["environments"] = [t.toolbox.environment for t in trajectories]
        else:
            groups = self.sample([prompts[i] for i in indices])
            texts = shown = [
                self.tokenizer.decode(
                    [t for t in g.completions[0] if t not in self.eos_ids]
                )
                for g in groups
            ]
        completions = [g.completions[0] for g in groups]
        scores, metrics = self.score(chosen, groups, texts, columns)
        metrics |= tool_stats
        log_now = rollout_id is not None and rollout_id % self.config.log_every == 0
        if log_now and distributed.is_main():
            write_samples(
                self.samples_path, rollout_id, self.tokenizer, groups, shown, scores
            )
        rows = [Encoded(g.prompt + g.completions[0], len(g.prompt)) for g in groups]
        inputs = FullRows.pad(rows, len(rows), self.buckets, self.pad_id)
        if tool_use:  # the critic and the loss read the model's own tokens only
            inputs = masked_turns(inputs, groups)
        metrics["completion_length_mean"] = float(
            np.mean([len(c) for c in completions])
        )
        return self.targets(inputs, mx.array(scores), metrics)

    def score(
        self,
        records: list[Record],
        groups: list[Group],
        texts: list[str],
        columns: dict,  # fmt: skip
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The completions' scores, less ``--missing-eos-penalty`` where no EOS was
        sampled (TRL's ``missing_eos_penalty``), and the scorer's metrics."""
        tic = time.perf_counter()
        scores, metrics = self.scorer(records, groups, texts, columns)
        emit("rewards", seconds=time.perf_counter() - tic)
        finished = np.array(
            [
                bool(g.completions[0]) and g.completions[0][-1] in self.eos_ids
                for g in groups
            ]
        )
        scores = scores - self.config.missing_eos_penalty * ~finished
        return scores, {**metrics, "val/num_eos_tokens": float(finished.sum())}

    def converse(self, tool_use: ToolUse, indices, records):
        """One conversation per prompt ``indices``, continued turn by turn."""
        policy = self.model.policy
        with evaluating(policy), sampling_model(policy, self.sampler) as model:
            return converse_with(tool_use, model, self.config, indices, records, 1)

    def sample(self, prompts: list[list[int]]) -> list[Group]:
        """One completion of each prompt from the policy (or its fused twin), decoded together."""
        policy = self.model.policy
        with evaluating(policy), sampling_model(policy, self.sampler) as model:
            return draw(model, self.config, prompts, 1, self.eos_ids)

    def targets(self, inputs: FullRows, scores: mx.array, extra: dict) -> PPOBatch:
        """Log-probs, reference log-probs and values at rollout time; rewards, GAE, statistics."""
        config, policy, critic = self.config, self.model.policy, self.model.critic
        rows = config.batch_size
        with evaluating(policy, critic):
            old_logps = fixed_per_token(
                lambda x: x.token_logps(policy)[0], inputs, rows
            )
            values = fixed_per_token(lambda x: critic.token_values(x)[0], inputs, rows)
        ref_logps = fixed_per_token(
            lambda x: x.token_logps(self.reference)[0], inputs, rows
        )
        mask = inputs.loss_mask[:, 1:]
        rewards, kl = kl_shaped_rewards(
            old_logps, ref_logps, scores, mask, config.kl_coef, config.kl_estimator
        )
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask) * mask
        non_score = (-config.kl_coef * kl).sum(axis=1)  # (N,)
        stats = {
            **extra,
            "objective/kl": kl.sum(axis=1).mean().item(),
            "objective/entropy": (-old_logps * mask).sum(axis=1).mean().item(),
            "objective/non_score_reward": non_score.mean().item(),
            "objective/rlhf_reward": (scores + non_score).mean().item(),
            "objective/scores": scores.mean().item(),
        }
        stats_array = mx.array([float(stats.get(n, 0.0)) for n in self.stat_names])
        batch = PPOBatch(inputs, old_logps, values, advantages, returns, stats_array)
        mx.eval(batch)
        return batch
