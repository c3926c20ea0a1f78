"""The stages that sample from the policy while they train: GRPO, online DPO and PPO.

Their settings beside ``config.py``'s shared ones (run, training, adapters):
how completions are drawn (``SamplingSettings``) and scored
(``RewardSettings``), and each stage's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_align.config.losses import DPOLossSettings
from mlx_align.config.settings import (
    at_least,
    fraction,
    in_range,
    non_negative,
    positive,
    setting,
    stage_defaults,
)
from mlx_align.config.stages import AdapterSettings, RunSettings, TrainSettings


@dataclass
class SamplingSettings:
    """How the stages that sample from the policy (GRPO, online DPO, PPO) draw completions."""

    max_completion_tokens: int = setting(
        64, "Longest sampled completion.", check=at_least(1)
    )
    temperature: float = setting(1.0, "Sampling temperature.", check=positive)
    top_p: float = setting(
        1.0, "Nucleus sampling threshold.", check=in_range(0, 1, open_low=True)
    )
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held while sampling (auto: where "
        "the memory plan finds that the copy does not raise the run's peak, or "
        "with --memory-limit none where it is under 10% of memory; never for a "
        "quantized base).",
        choices="mlx_align.sampling.fused_sampler:FUSE_CHOICES",
    )


@dataclass
class RewardSettings:
    """Reward functions with TRL's signature, for the stages that score samples."""

    reward: tuple = setting(
        (),
        "Reward function: math, format, or module:function (repeat the flag "
        "for several).",
        multiple=True,
    )
    reward_weights: str = setting(
        "", "Comma-separated weights, one per --reward (default: all 1)."
    )


@dataclass
class ToolSettings:
    """Tools and environments the policy may call while it samples: multi-turn rollouts."""

    tool: tuple = setting(
        (),
        "A tool the policy may call: module:function with type hints and a docstring "
        "(its JSON schema goes to the chat template); repeat for several.",
        multiple=True,
    )
    environment: str = setting(
        "",
        "module:factory making one environment per trajectory: reset(**row) returns "
        "a first observation or None; its other public methods are tools.",
    )
    max_turns: int = setting(
        4,
        "Model turns per trajectory with --tool / --environment (a call in the last "
        "is not run); the trajectory's tokens stay within --max-completion-tokens.",
        check=positive,
    )


@dataclass
class GroupSettings:
    """The stages that sample G completions per prompt and compare them (GRPO, RLOO)."""

    batch_size: int = setting(
        2,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled --group-size times.",
        check=at_least(1),
    )
    group_size: int = setting(
        8,
        "G: completions sampled per prompt (advantages compare a group's "
        "rewards, so at least 2).",
        check=at_least(2),
    )
    beta: float = setting(
        0.0,
        "Weight of the k3 KL to the reference (0: no reference pass).",
        check=non_negative,
    )
    epsilon: float = setting(
        0.2, "Lower clip: ratios below 1 - epsilon are clipped.", check=fraction
    )
    epsilon_high: float = setting(
        0.0,
        "Upper clip (0: same as --epsilon; DAPO uses 0.28). For cispo it is ε_max, "
        "the cap on the weight itself: set it well above 1 (at 0 every weight is "
        "capped at --epsilon, as TRL's default does).",
        check=non_negative,
    )
    iterations: int = setting(
        1,
        "μ: optimisation passes per rollout batch (the clip only acts when μ > 1); "
        "checkpoints fall on multiples of μ, so --resume is exact.",
        check=at_least(1),
    )
    mask_truncated_completions: bool = setting(
        False,
        "Leave completions that hit --max-completion-tokens without EOS out of the loss.",
    )


@stage_defaults(
    learning_rate=1e-5, reward=("math",), max_completion_tokens=256, max_length=1024
)
class GRPOConfig(
    RunSettings,
    TrainSettings,
    AdapterSettings,
    SamplingSettings,
    RewardSettings,
    GroupSettings,
    ToolSettings,
):
    loss: str = setting(
        "dapo",
        "TRL's loss_type: dapo (token mean over the batch; TRL 1.16's default), grpo "
        "(per-sequence mean), bnpo, dr_grpo, cispo (clipped importance weight), sapo "
        "(soft gate), luspo (per-sequence sum; with --importance-sampling-level "
        "sequence) or vespo (gamma-weighted sequence ratio).",
        choices="mlx_align.losses.grpo:GRPO_AGGREGATIONS",
    )
    importance_sampling_level: str = setting(
        "token",
        "Importance ratio per token, or per sequence (the mean log-ratio: GSPO).",
        choices="mlx_align.losses.grpo:IMPORTANCE_SAMPLING_LEVELS",
    )
    delta: float = setting(
        0.0,
        "Two-sided clip: cap the ratio at δ (> 1 + --epsilon-high) even where the "
        "advantage is negative (0: off, TRL's None).",
        check=non_negative,
    )
    sapo_temperature_pos: float = setting(
        1.0, "sapo: the gate's temperature where the advantage is > 0.", check=positive
    )
    sapo_temperature_neg: float = setting(
        1.05,
        "sapo: the gate's temperature where the advantage is <= 0.",
        check=positive,
    )
    vespo_k_pos: float = setting(
        2.0, "vespo: the power k of the gamma weight where A >= 0.", check=non_negative
    )
    vespo_lambda_pos: float = setting(
        3.0, "vespo: the decay λ of the gamma weight where A >= 0.", check=non_negative
    )
    vespo_k_neg: float = setting(
        3.0, "vespo: the power k where A < 0.", check=non_negative
    )
    vespo_lambda_neg: float = setting(
        2.0, "vespo: the decay λ where A < 0.", check=non_negative
    )
    top_entropy_quantile: float = setting(
        1.0,
        "Train the policy term on the top q of completion tokens by entropy only "
        "(0.2: the high-entropy 'forking' tokens; 1: every token).",
        check=in_range(0, 1),
    )
    entropy_coef: float = setting(
        0.0,
        "An entropy bonus: subtract c x the policy's mean token entropy (over the "
        "trained tokens) from the loss; the logits are then formed whole, with "
        "their gradient (more memory at a large vocabulary).",
        check=non_negative,
    )
    multi_objective_aggregation: str = setting(
        "sum_then_normalize",
        "Several --reward functions: sum them, then take advantages "
        "(sum_then_normalize), or normalise each within its group, sum, then "
        "normalise over the batch (normalize_then_sum: GDPO; --scale-rewards unused).",
        choices="mlx_align.losses.advantages:MULTI_OBJECTIVE_AGGREGATIONS",
    )
    scale_rewards: str = setting(
        "group",
        "Advantage scaling: group, batch or none (Dr. GRPO).",
        choices="mlx_align.losses.advantages:ADVANTAGE_SCALES",
    )


@stage_defaults(
    learning_rate=1e-5,
    reward=("math",),
    max_completion_tokens=256,
    max_length=1024,
    group_size=2,
)
class RLOOConfig(
    RunSettings,
    TrainSettings,
    AdapterSettings,
    SamplingSettings,
    RewardSettings,
    GroupSettings,
):
    """RLOO (``mlx-align rloo``): TRL ``RLOOTrainer``'s settings, its names and defaults."""

    beta: float = setting(
        0.05,
        "Weight of the KL to the reference in the reward: β·Σ_t (log π_old − log π_ref) "
        "per completion, as TRL's RLOO (0: no reference pass).",
        check=non_negative,
    )
    normalize_advantages: bool = setting(
        False, "Scale the advantages over the batch to mean 0 and std 1."
    )


@stage_defaults(learning_rate=5e-5, temperature=0.9, max_length=1024)
class OnlineDPOConfig(
    RunSettings,
    TrainSettings,
    AdapterSettings,
    SamplingSettings,
    RewardSettings,
    DPOLossSettings,
):
    """Online DPO: pairs sampled from the policy each step, labelled by one judge:
    --reward-model, --judge, --judge-model, or --reward (the higher reward wins)."""

    batch_size: int = setting(
        4,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled twice.",
        check=at_least(1),
    )
    reward_model: str = setting(
        "", "Judge: a reward model from `mlx-align reward` (the higher score wins)."
    )
    judge: str = setting(
        "",
        "Judge: module:function with TRL's pairwise-judge signature "
        "judge(prompts, completion_pairs) -> preferred index per pair (-1: tie).",
    )
    judge_model: str = setting(
        "",
        "Judge: an LLM (path or hub id) reads both completions in TRL's pairwise "
        'prompt and names the better one (its log-odds of "0" vs "1"); the --model '
        "value itself judges with the starting weights, sharing them (RLAIF).",
    )
    judge_prompt: str = setting(
        "",
        "With --judge-model: a prompt file with {prompt}, {response0} and "
        "{response1} (other braces doubled); default: TRL's pairwise prompt.",
    )
    beta: float = setting(
        0.1, "β: strength of the KL constraint to the reference.", check=positive
    )


@stage_defaults(learning_rate=1e-5, max_length=1024)
class PPOConfig(
    RunSettings,
    TrainSettings,
    AdapterSettings,
    SamplingSettings,
    RewardSettings,
    ToolSettings,
):
    """PPO with a critic (``mlx-align ppo``): TRL ``PPOTrainer``'s settings, its names."""

    reward_model: str = setting(
        "",
        "An `mlx-align reward` output directory: its score of each completion, "
        "read at the last token, is the reward (--reward functions add to it).",
    )
    value_model: str = setting(
        "",
        "A separate mlx-lm model (same tokenizer) as the critic's backbone "
        "(default: the policy's base with the critic's own adapters).",
    )
    num_mini_batches: int = setting(
        1,
        "Mini-batches per rollout batch, one optimizer step each: a rollout "
        "batch holds this x --grad-accumulation x --batch-size prompts.",
        check=at_least(1),
    )
    ppo_epochs: int = setting(
        4,
        "Passes over each rollout batch; --ppo-epochs x --num-mini-batches "
        "optimizer steps share one rollout, and checkpoints fall on multiples of it.",
        check=at_least(1),
    )
    kl_coef: float = setting(
        0.05,
        "β: the per-token penalty β·KL estimate taken from the reward.",
        check=non_negative,
    )
    kl_estimator: str = setting(
        "k1",
        "Per-token KL(π ‖ π_ref) estimate (Schulman 2020), TRL's kl_estimator: "
        "k1 = log π − log π_ref (unbiased, can be negative); k3 = (r − 1) − log r "
        "with r = π_ref / π (unbiased, never negative, lower variance).",
        choices=("k1", "k3"),
    )
    gamma: float = setting(
        1.0, "γ: discount factor of the returns.", check=in_range(0, 1)
    )
    lam: float = setting(
        0.95, "λ of generalised advantage estimation (GAE).", check=in_range(0, 1)
    )
    cliprange: float = setting(
        0.2,
        "ε: policy ratios outside [1 − ε, 1 + ε] are clipped.",
        check=in_range(0, 1, open_low=True, open_high=True),
    )
    cliprange_value: float = setting(
        0.2,
        "Values may move at most this far from their rollout-time value.",
        check=positive,
    )
    vf_coef: float = setting(
        0.1, "Weight of the value loss in the total loss.", check=non_negative
    )
    whiten_rewards: bool = setting(
        False, "Scale the per-token rewards to unit variance over each rollout batch."
    )
    missing_eos_penalty: float = setting(
        0.0,
        "Subtracted from the score of a completion that stops without EOS.",
        check=non_negative,
    )
