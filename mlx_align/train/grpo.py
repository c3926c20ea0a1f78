"""GRPO with verifiable rewards: sample groups, score them, clipped policy-gradient steps.

Shao et al. 2024 (DeepSeekMath), with TRL's options: token aggregation
(``grpo`` / ``bnpo`` / ``dr_grpo`` / ``dapo``), advantage scaling (``group`` /
``batch`` / ``none``), asymmetric clipping (``epsilon_high``) and μ
optimisation passes per rollout batch (``iterations``). With μ = 1 the ratio
is exactly 1 (old log-probs are the current ones, detached); with μ > 1 the
old log-probs are computed once at rollout time and the clip acts. The KL to
the reference (adapters off, a model object sharing the base arrays) is
computed only when ``beta > 0``, once per rollout batch.

Micro-batch k of the run uses rollout batch ``(step // μ) · A + micro``
(A = gradient accumulation), so the same rollouts serve μ optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

from ..advantages import combine_rewards, group_advantages
from ..config import GRPOConfig
from ..data.batching import BatchPlan, bucket_for, bucket_lengths, pad_examples
from ..data.jsonl import Record, load_split
from ..data.tokenize import Encoded, encode_prompt, pad_id_of
from ..errors import UserError
from ..fused_sampler import FusedSampler, should_fuse
from ..logprobs import grouped_completion_logps, sequence_logps, supports_shared_prompts
from ..losses import grpo_loss
from ..model.adapters import quantize_base
from ..model.load import load_model
from ..reference import shared_reference
from ..rewards import resolve_reward
from ..rollout import sample_groups
from .adapted import prepare_trainable, weights_file, write_result, write_weights
from .loop import TrainJob, train

ROLLOUT_STATS = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completion_length_mean",
    "completion_length_max",
)


def rollout_index(micro_batch: int, accumulation: int, passes: int) -> int:
    """The rollout batch that micro-batch k trains on: each is reused for ``passes`` steps."""
    step, micro = divmod(micro_batch, accumulation)
    return (step // passes) * accumulation + micro


class Rollouts:
    """Samples, scores and batches groups of completions for the training loop."""

    def __init__(
        self, config: GRPOConfig, model: nn.Module, tokenizer, records: list[Record]
    ):
        self.config, self.model, self.tokenizer, self.records = (
            config,
            model,
            tokenizer,
            records,
        )
        self.prompts = [encode_prompt(tokenizer, r) for r in records]
        self.plan = BatchPlan.by_length(
            [len(p) for p in self.prompts], config.batch_size, config.seed
        )
        self.functions = [resolve_reward(spec) for spec in config.reward]
        self.names = [spec.rsplit(":", 1)[-1] for spec in config.reward]
        weights = [float(w) for w in config.reward_weights.split(",") if w.strip()]
        if weights and len(weights) != len(self.functions):
            raise UserError(
                "--reward-weights",
                f"{len(weights)} weights for {len(self.functions)} reward functions",
            )
        self.weights = weights or None
        self.eos_ids = set(tokenizer.eos_token_ids)
        self.buckets = bucket_lengths(config.max_length)
        self.reference: nn.Module | None = None
        self.sampler: FusedSampler | None = None  # set once adapters are on
        # Score each prompt once per group in the train step (exact; llama-family models).
        self.shared_prompts = supports_shared_prompts(model)
        self.cache: dict[int, tuple] = {}
        self.samples_path = Path(config.out) / "samples.jsonl"

    def micro_batch(self, k: int) -> tuple:
        accumulation = self.config.grad_accumulation
        rollout_id = rollout_index(k, accumulation, self.config.iterations)
        if rollout_id not in self.cache:
            self.cache = {
                rollout_id: self.sample(rollout_id),
                **{
                    i: v for i, v in self.cache.items() if i > rollout_id - accumulation
                },
            }
        return self.cache[rollout_id]

    def sample(self, rollout_id: int) -> tuple:
        """Rollouts for one micro-batch: (inputs, old_logps, ref_logps, advantages, stats)."""
        config, indices = self.config, self.plan.batch(rollout_id)
        with self.sampling_model() as model:
            groups = sample_groups(
                model,
                [self.prompts[i] for i in indices],
                config.group_size,
                config.max_completion_tokens,
                self.eos_ids,
                config.temperature,
                config.top_p,
            )
        rewards, reward_metrics = self.score(indices, groups)
        advantages, adv_metrics = group_advantages(
            rewards, config.group_size, config.scale_rewards
        )
        inputs = self.score_inputs(groups)
        lengths = [len(c) for g in groups for c in g.completions]
        stats = {
            **reward_metrics,
            "frac_reward_zero_std": adv_metrics["frac_reward_zero_std"].item(),
            "completion_length_mean": sum(lengths) / len(lengths),
            "completion_length_max": max(lengths),
        }
        if rollout_id % max(config.log_every, 1) == 0:
            self.write_samples(rollout_id, groups, rewards)
        old = (
            self.per_token_logps(self.model, inputs)
            if config.iterations > 1
            else mx.zeros((1,))
        )
        ref = (
            self.per_token_logps(self.reference, inputs)
            if self.reference is not None
            else mx.zeros((1,))
        )
        stat_values = mx.array(
            [float(stats.get(name, 0.0)) for name in self.stat_names()]
        )
        return inputs, old, ref, advantages, stat_values

    @contextmanager
    def sampling_model(self) -> Iterator[nn.Module]:
        """The policy in eval mode, or its fused twin (``--fuse-rollout``)."""
        if self.sampler is not None:
            with self.sampler.fused() as model:
                yield model
            return
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train()

    def score_inputs(self, groups) -> tuple:
        """What ``policy_token_logps`` scores: shared prompts, or full prompt+completion rows."""
        pad = pad_id_of(self.tokenizer)
        if not self.shared_prompts:
            examples = [
                Encoded(g.prompt + c, len(g.prompt))
                for g in groups
                for c in g.completions
            ]
            return pad_examples(examples, len(examples), self.buckets, pad)
        width = bucket_for(max(len(g.prompt) for g in groups), self.buckets)
        prompts = np.full((len(groups), width), pad, dtype=np.int32)  # left-padded
        prompt_mask = np.zeros((len(groups), width), dtype=np.float32)
        for row, group in enumerate(groups):
            prompts[row, width - len(group.prompt) :] = group.prompt
            prompt_mask[row, width - len(group.prompt) :] = 1.0
        n, limit = (
            len(groups) * self.config.group_size,
            self.config.max_completion_tokens,
        )
        completions = np.full((n, limit), pad, dtype=np.int32)
        completion_mask = np.zeros((n, limit), dtype=np.float32)
        for row, tokens in enumerate(c for g in groups for c in g.completions):
            completions[row, : len(tokens)] = tokens
            completion_mask[row, : len(tokens)] = 1.0
        arrays = (prompts, prompt_mask, completions, completion_mask)
        return tuple(mx.array(a) for a in arrays)

    def stat_names(self) -> list[str]:
        per_function = [f"rewards/{n}/{s}" for n in self.names for s in ("mean", "std")]
        return [*ROLLOUT_STATS, *per_function]

    def score(self, indices: list[int], groups) -> tuple[mx.array, dict]:
        g = self.config.group_size
        prompts = [self.records[i].fields["prompt"] for i in indices for _ in range(g)]
        completions = [
            self.tokenizer.decode([t for t in c if t not in self.eos_ids])
            for grp in groups
            for c in grp.completions
        ]
        columns = {
            k: [self.records[i].fields.get(k) for i in indices for _ in range(g)]
            for k in self.records[indices[0]].fields
            if k != "prompt"
        }
        per_function = [fn(prompts, completions, **columns) for fn in self.functions]
        self.last_completions = completions
        return combine_rewards(per_function, self.weights, self.names)

    def per_token_logps(self, model: nn.Module, inputs: tuple) -> mx.array:
        per_token = mx.stop_gradient(policy_token_logps(model, inputs)[0])
        mx.eval(per_token)
        return per_token

    def write_samples(
        self, rollout_id: int, groups, rewards: mx.array, per_group: int = 2
    ) -> None:
        self.samples_path.parent.mkdir(parents=True, exist_ok=True)
        g, texts = self.config.group_size, self.last_completions
        with open(self.samples_path, "a") as f:
            for j, group in enumerate(groups):
                for c in range(min(per_group, g)):
                    row = {
                        "rollout": rollout_id,
                        "prompt": self.tokenizer.decode(group.prompt),
                        "completion": texts[j * g + c],
                        "reward": rewards[j * g + c].item(),
                    }
                    f.write(json.dumps(row) + "\n")


def policy_token_logps(model: nn.Module, inputs: tuple) -> tuple[mx.array, mx.array]:
    """(per-token log-probs, mask) of the sampled completions, in either batch layout."""
    if (
        len(inputs) == 4
    ):  # prompts once per group: (prompts, prompt_mask, completions, mask)
        return grouped_completion_logps(model, *inputs), inputs[3]
    per_token, _, mask = sequence_logps(
        model, *inputs
    )  # full rows: (tokens, loss_mask)
    return per_token, mask


def grpo_batch_loss(
    model,
    inputs,
    old_logps,
    ref_logps,
    advantages,
    stats,
    *,
    config: GRPOConfig,
    stat_names,
):
    """Sampled completions -> (loss, n_tokens, metrics); see ``losses.grpo_loss``."""
    per_token, mask = policy_token_logps(model, inputs)  # (N, C)
    old = old_logps if config.iterations > 1 else mx.stop_gradient(per_token)
    ref = ref_logps if config.beta > 0 else None
    loss, metrics = grpo_loss(
        per_token,
        old,
        ref,
        advantages,
        mask,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high or None,
        beta=config.beta,
        aggregation=config.loss,
        max_completion_tokens=config.max_completion_tokens,
    )
    rollout = {name: stats[i] for i, name in enumerate(stat_names)}
    return loss, mask.sum(), {**metrics, **rollout}


def run_grpo(config: GRPOConfig) -> Path:
    """Train with GRPO; adapters in ``out`` (or ``out/model`` with ``--full``), samples in ``out/samples.jsonl``."""
    records = load_split(config.data, "train", required=True)
    model, tokenizer, model_config = load_model(config.model)
    if config.quantize:
        quantize_base(model, config.quantize)
    rollouts = Rollouts(config, model, tokenizer, records)
    adapters = prepare_trainable(model, config, config.seed)
    if should_fuse(model, config.fuse_rollout):
        rollouts.sampler = FusedSampler(model)
    if config.beta > 0:
        rollouts.reference = (
            shared_reference(model, config.model)
            if adapters
            else load_model(config.model)[0]
        )
    (Path(config.out) / "samples.jsonl").unlink(missing_ok=True)
    tqdm.write(
        f"GRPO: {len(records)} prompts, {config.batch_size} x {config.group_size} completions per micro-batch"
    )
    job = TrainJob(
        model=model,
        loss_fn=partial(
            grpo_batch_loss, config=config, stat_names=rollouts.stat_names()
        ),
        train_batch=rollouts.micro_batch,
        out=Path(config.out),
        write_weights=partial(write_weights, model, adapters),
        weights_file=weights_file(adapters),
        config=dataclasses.asdict(config),
    )
    train(job, config)
    return write_result(
        model, adapters, Path(config.out), config.model, tokenizer, model_config
    )
