"""PPO with a critic, the four-model RLHF rig (InstructGPT; TRL ``PPOTrainer``).

The four roles share one set of base weights where they can:

- policy: LoRA (or DoRA) adapters on the base, trained;
- reference: the base with the adapters off, a second model object on the
  policy's own base arrays (``reference.shared_reference``), run once per
  rollout batch;
- critic: a value head (``model/value_head.py``) on another model object
  over the same base arrays, with adapters of its own, trained; or, with
  ``--value-model``, a separate (smaller) model with the same tokenizer;
- reward: an ``mlx-align reward`` model read at the last completion token,
  whose adapters go on yet another object over the policy's base arrays
  when it was trained on the same base, and/or ``--reward`` functions.

With ``--full`` the policy's weights change, so the reference and the
critic are copies of their own. The loop trains ``ActorCritic``: the policy
and the critic side by side, with loss = policy loss + vf_coef · value
loss; the policy's adapters are written in mlx-lm's format (``mlx-align
fuse`` reads them), the critic's in ``out/critic/``. The math is
``losses/ppo.py``'s; the batches come from ``ppo_rollouts.py``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlx_align.batches.planning import BatchPlan
from mlx_align.config.online import PPOConfig
from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import encode_prompt
from mlx_align.losses.masked import masked_mean
from mlx_align.losses.ppo import clipped_value_loss, ppo_policy_loss
from mlx_align.model.adapters import (
    attach_adapters,
    count_parameters,
    quantize_base,
)
from mlx_align.model.load import load_model
from mlx_align.model.reward_head import (
    REWARD_CONFIG,
    REWARD_FILES,
    RewardModel,
    hidden_size_of,
    load_head_model,
    load_reward_model,
)
from mlx_align.model.value_head import ActorCritic, ValueModel, save_critic
from mlx_align.sampling.fused_sampler import FusedSampler, should_fuse
from mlx_align.stages.grpo_rollouts import read_prompt_splits
from mlx_align.stages.ppo_rollouts import (
    CompletionScorer,
    PPOBatch,
    PPORollouts,
)
from mlx_align.stages.tool_rollouts import ToolUse, uses_tools
from mlx_align.train.reference import (
    live_reference,
    model_fingerprint,
    shared_reference,
)
from mlx_align.train.stage import (
    Job,
    Stage,
    StageRun,
    Trained,
    adapters_or_model,
    run_stage,
)

CHECKPOINT_WEIGHTS = "ppo_weights.safetensors"  # policy, critic and value head


def ppo_batch_loss(
    model: ActorCritic, batch: PPOBatch, *, config: PPOConfig, stat_names
):
    """A mini-batch's completions -> (policy loss + vf_coef · value loss, n_tokens, metrics)."""
    logps, mask, entropy = batch.inputs.token_logps_and_entropy(model.policy)
    values, _ = model.critic.token_values(batch.inputs)  # (N, T-1)
    policy_loss, policy_metrics = ppo_policy_loss(
        logps, batch.old_logps, batch.advantages, mask, config.cliprange
    )
    value_loss, value_metrics = clipped_value_loss(
        values, batch.old_values, batch.returns, mask, config.cliprange_value
    )
    rollout = {name: batch.stats[i] for i, name in enumerate(stat_names)}
    loss = policy_loss + config.vf_coef * value_loss
    # Not ``mask.sum()``: an output equal to a node inside the loss (the masked
    # means' denominators) breaks mx.compile of value_and_grad in MLX 0.32
    # ("IndexError: _Map_base::at"); row sums first is another graph.
    n_tokens = mask.sum(axis=-1).sum()
    # The whole next-token distribution's entropy (at temperature 1, as the
    # log-probs); TRL means it over all response positions, padding too, here
    # over the real tokens.
    policy_metrics["policy/entropy_avg"] = masked_mean(entropy, mask)
    return loss, n_tokens, {**policy_metrics, **value_metrics, **rollout}


def build_critic(
    policy: nn.Module, config: PPOConfig, tokenizer, adapters: dict | None
) -> tuple[ValueModel, str, dict]:
    """The critic's backbone with its own adapters (or all weights trainable) and a
    zero value head; returns it, the model it was built on and that model's config.

    Default: a second object on the policy's base arrays (no copy); with
    ``--full``, a copy; with ``--value-model``, that model.
    """
    source, model_config = config.value_model or config.model, {}
    if config.value_model:
        lm, value_tokenizer, model_config = load_model(
            config.value_model, "--value-model"
        )
        if value_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError(
                f"--value-model {config.value_model}",
                "its tokenizer differs from the policy's: the critic reads the policy's tokens",
            )
        if config.quantize:
            quantize_base(lm, config.quantize)
    elif adapters:
        lm = shared_reference(policy, config.model)
    else:
        lm, _, model_config = load_model(config.model)
    if adapters:
        mx.random.seed(config.seed + 1)  # the critic's lora_a differ from the policy's
        attach_adapters(lm, adapters)
    critic = ValueModel(lm, hidden_size_of(lm))
    trainable, total = count_parameters(critic)
    tqdm.write(f"critic: {trainable:,} trainable parameters of {total:,} ({source})")
    return critic, source, model_config


def shares_base(reward_config: dict, config: PPOConfig) -> bool:
    """Whether a reward model's adapters sit on the policy's own (frozen, equally quantized) base."""
    return (
        reward_config.get("fine_tune_type") != "full"
        and reward_config.get("quantize", 0) == config.quantize
        and model_fingerprint(reward_config["base_model"])
        == model_fingerprint(config.model)
    )


def reward_model_for(
    policy: nn.Module, config: PPOConfig, adapters: dict | None, tokenizer
) -> tuple[RewardModel | None, object]:
    """``--reward-model`` in eval mode and its tokenizer; its base is the policy's base
    arrays (no copy) when it was trained on the same base and the policy is LoRA."""
    if not config.reward_model:
        return None, None
    path = Path(config.reward_model)
    reward_config = (
        json.loads((path / REWARD_CONFIG).read_text())
        if (path / REWARD_CONFIG).exists()
        else {}
    )
    if not (adapters and reward_config and shares_base(reward_config, config)):
        return load_reward_model(path)  # raises DataError for a non-reward directory
    backbone = shared_reference(policy, config.model)
    model, _ = load_head_model(path, RewardModel, REWARD_FILES, backbone=backbone)
    model.freeze()
    tqdm.write(f"reward model {path}: adapters on the policy's base arrays")
    return model, tokenizer


def write_checkpoint_weights(model: ActorCritic, directory: Path) -> None:
    """The loop's ``write_weights``: the policy's, the critic's and the head's arrays in one file."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / CHECKPOINT_WEIGHTS), weights)


@dataclass
class PPOData:
    """The prompts a PPO run samples from, and the critic's base once it is built."""

    prompts: tuple  # (records, token ids) of the usable train prompts
    valid: tuple  # the same of the valid split (empty without one)
    critic_source: str = ""  # the critic's base: --model or --value-model
    critic_config: dict = dataclasses.field(default_factory=dict)  # for a full critic
    tools: tuple = (None, None)  # the train and valid prompts' ToolUse (--tool)


def run_ppo(config: PPOConfig) -> Path:
    """Train with PPO; the policy's adapters in ``out`` (``out/model`` with ``--full``),
    the critic in ``out/critic``, samples in ``out/samples.jsonl``."""
    return run_stage(PPO, config)


def ppo_data(run: StageRun) -> PPOData:
    config, (train_records, valid_records) = run.config, run.records
    if not uses_tools(config):
        return PPOData(
            usable_prompts(train_records, run.tokenizer, config),
            usable_prompts(valid_records, run.tokenizer, config),
        )
    room = config.max_length - config.max_completion_tokens
    splits = [r or [] for r in (train_records, valid_records)]
    tools = tuple(ToolUse(config, run.tokenizer, r, room) if r else None for r in splits)  # fmt: skip
    train, valid = ((r, t.prompts if t else []) for r, t in zip(splits, tools, strict=True))  # fmt: skip
    return PPOData(train, valid, tools=tools)


def actor_critic(run: StageRun) -> Trained:
    """The policy and a critic (its own adapters on the policy's base, by default)
    trained as one module, checkpointed in one file."""
    critic, run.data.critic_source, run.data.critic_config = build_critic(
        run.model, run.config, run.tokenizer, run.adapters
    )
    model = ActorCritic(run.model, critic)
    return Trained(model, partial(write_checkpoint_weights, model), CHECKPOINT_WEIGHTS)


def ppo_job(run: StageRun) -> Job:
    config, policy = run.config, run.model
    reward_model, reward_tokenizer = reward_model_for(
        policy, config, run.adapters, run.tokenizer
    )
    scorer = CompletionScorer(reward_model, reward_tokenizer, config, run.tokenizer)
    rollouts = PPORollouts(
        config,
        run.trained.module,
        run.reference,
        scorer,
        run.tokenizer,
        run.data.prompts,
        run.data.tools,
    )
    if should_fuse(policy, config.fuse_rollout):
        rollouts.sampler = FusedSampler(policy)
    tqdm.write(
        f"PPO: {len(run.data.prompts[0])} prompts, rollout batches of {rollouts.rollout_size}, "
        f"{rollouts.steps_per_rollout} optimizer steps each"
    )
    return Job(
        partial(ppo_batch_loss, config=config, stat_names=rollouts.stat_names),
        rollouts.micro_batch,
        valid=valid_split(config, rollouts, run.data.valid),
        checkpoint_multiple=rollouts.steps_per_rollout,  # resume at a rollout boundary
    )


def write_ppo_result(run: StageRun) -> Path:
    """The policy's adapters (mlx-lm's format) or full model in ``out``, the critic in ``out/critic``."""
    config, out = run.config, Path(run.config.out)
    adapters_or_model(run)
    save_critic(
        run.trained.module.critic,
        run.adapters,
        out / "critic",
        run.data.critic_source,
        run.tokenizer,
        run.data.critic_config,
        config.quantize,
    )
    return out


PPO = Stage(
    ppo_job,
    read=lambda config: read_prompt_splits(config, "train", "valid"),
    data=ppo_data,
    reference=lambda run: live_reference(run.config, run.model),
    trained=actor_critic,
    write=write_ppo_result,
)


def valid_split(config: PPOConfig, rollouts: PPORollouts, prompts) -> tuple | None:
    """Evaluation on the valid prompts (sampled afresh each time), or None without any."""
    records, tokens = prompts
    if not records:
        return None
    plan = BatchPlan.by_length([len(p) for p in tokens], config.batch_size, config.seed)

    def make(indices: list[int]) -> PPOBatch:
        return rollouts.eval_batch(indices, records, tokens)

    return plan, make


def usable_prompts(
    records: list[Record] | None, tokenizer, config: PPOConfig
) -> tuple[list[Record], list[list[int]]]:
    """The records whose prompt leaves room for a full completion within
    ``--max-length``, and their prompt tokens."""
    if not records:
        return [], []
    limit = config.max_length - config.max_completion_tokens
    pairs = [(r, encode_prompt(tokenizer, r)) for r in records]
    kept = [(r, p) for r, p in pairs if len(p) <= limit]
    return [r for r, _ in kept], [p for _, p in kept]
