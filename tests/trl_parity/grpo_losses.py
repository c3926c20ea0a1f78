"""mlx-align's GRPO and RLOO losses against TRL's own ``GRPOTrainer._compute_loss``
and ``RLOOTrainer._compute_loss``, on the same per-token log-probs.

Not a test of the suite (torch and TRL are no project dependency): run it by
hand with a throwaway TRL venv (see ``preference_losses.py``),

    .venv/bin/python tests/trl_parity/grpo_losses.py --trl-python /tmp/trl-venv/bin/python

It draws B completions' per-token log-probs (policy, old and reference)
and advantages, hands them to TRL's ``_compute_loss`` (its per-token
log-prob forward replaced by the policy's values) and to mlx-align's
``losses.grpo.grpo_loss`` through ``stages.grpo.policy_loss_settings``, and
prints the largest difference in the loss and every metric both log (TRL's
``clip_ratio/region_mean`` is mlx-align's ``clip_ratio``). One process, one
micro-batch: dapo's, cispo's and vespo's global token count is the batch's.
Exit 1 when one exceeds 1e-5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import compare, trl_values  # noqa: E402

MAX_COMPLETION = 10
CASES = [
    {"loss_type": "grpo"},
    {"loss_type": "bnpo"},
    {"loss_type": "dr_grpo"},
    {"loss_type": "dapo"},
    {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04},
    {"loss_type": "dapo", "delta": 1.5},
    {"loss_type": "grpo", "importance_sampling_level": "sequence"},
    {"loss_type": "cispo", "epsilon_high": 1.5},
    {"loss_type": "cispo"},
    {"loss_type": "sapo"},
    {"loss_type": "sapo", "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5},
    {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    {"loss_type": "luspo"},
    {"loss_type": "vespo"},
    {"loss_type": "vespo", "vespo_k_pos": 1.0, "vespo_lambda_neg": 4.0, "beta": 0.1},
    {"loss_type": "dapo", "top_entropy_quantile": 0.2},
    {"loss_type": "grpo", "top_entropy_quantile": 0.5, "beta": 0.04},
    {"loss_type": "dapo", "entropy_coef": 0.1},
    {"loss_type": "grpo", "entropy_coef": 0.05, "top_entropy_quantile": 0.5},
]
# TRL's metric name -> mlx-align's.
METRICS = {
    "clip_ratio/region_mean": "clip_ratio/region_mean",
    "clip_ratio/low_mean": "clip_ratio/low_mean",
    "clip_ratio/high_mean": "clip_ratio/high_mean",
    "cispo_clip_ratio": "cispo_clip_ratio",
    "vespo/phi_seq_mean": "vespo/phi_seq_mean",
    "kl": "kl",
    "entropy": "entropy",
    "policy_loss": "policy_loss",
}
RLOO_CASES = [{"loss_type": "rloo"}, {"loss_type": "rloo", "epsilon_high": 0.28}]
TRL_DEFAULTS = dict(
    epsilon=0.2,
    epsilon_high=None,
    delta=None,
    importance_sampling_level="token",
    beta=0.0,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
    top_entropy_quantile=1.0,
    entropy_coef=0.0,
)


def draw_inputs(completions: int, seed: int) -> dict:
    """Per-token log-probs (N, T) with ratios around 1 (some past the clip),
    completion masks of 2..T tokens, advantages of both signs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros((completions, MAX_COMPLETION), dtype=np.int64)
    for row in mask:
        row[: int(rng.integers(2, MAX_COMPLETION + 1))] = 1
    old = -rng.gamma(2.0, 0.7, size=mask.shape)
    policy = old + rng.normal(0.0, 0.3, size=mask.shape)
    reference = old + rng.normal(0.0, 0.2, size=mask.shape)
    return {
        "mask": mask.tolist(),
        "policy": policy.tolist(),
        "old": old.tolist(),
        "reference": reference.tolist(),
        "advantages": rng.normal(0.0, 1.0, size=completions).tolist(),
        "entropy": (rng.gamma(2.0, 0.5, size=mask.shape) * mask).tolist(),
    }


def trl_side() -> None:
    """Reads {"inputs", "cases"} on stdin; prints TRL's loss and metrics per case."""
    from collections import defaultdict
    from types import SimpleNamespace

    import torch
    from trl.trainer.grpo_trainer import GRPOTrainer

    job = json.load(sys.stdin)
    data = job["inputs"]
    tensor = lambda k: torch.tensor(data[k], dtype=torch.float32)  # noqa: E731
    mask = torch.tensor(data["mask"])
    policy, entropy = tensor("policy"), tensor("entropy")
    identity = lambda x, **_: x  # noqa: E731  (one process)
    results = []
    for case in job["cases"]:
        settings = {**TRL_DEFAULTS, **case}
        trainer = GRPOTrainer.__new__(GRPOTrainer)
        trainer.model = SimpleNamespace(training=True)
        trainer.accelerator = SimpleNamespace(
            gather=identity,
            reduce=identity,
            pad_across_processes=identity,
            num_processes=1,
            sync_gradients=True,
        )
        trainer.args = SimpleNamespace(
            use_bias_correction_kl=False, steps_per_generation=1, **settings
        )
        trainer.loss_type = case["loss_type"]
        trainer.epsilon_low = settings["epsilon"]
        high = settings["epsilon_high"]
        trainer.epsilon_high = settings["epsilon"] if high is None else high
        trainer.importance_sampling_level = settings["importance_sampling_level"]
        trainer.beta = settings["beta"]
        trainer.max_completion_length = MAX_COMPLETION
        trainer.top_entropy_quantile = settings["top_entropy_quantile"]
        trainer.off_policy_mask_threshold = None
        trainer.use_vllm, trainer.aux_loss_enabled = False, False
        trainer._entropy_bonus_enabled = settings["entropy_coef"] != 0.0
        trainer.entropy_coef = settings["entropy_coef"]
        trainer.use_adaptive_entropy = False
        trainer.current_gradient_accumulation_steps = 1
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
            policy,
            entropy,
            None,
        )
        inputs = {
            "prompt_ids": torch.zeros((len(mask), 1), dtype=torch.long),
            "prompt_mask": torch.ones((len(mask), 1), dtype=torch.long),
            "completion_ids": torch.zeros_like(mask),
            "completion_mask": mask,
            "advantages": tensor("advantages"),
            "old_per_token_logps": tensor("old"),
            "ref_per_token_logps": tensor("reference"),
            "num_items_in_batch": mask.sum().float(),
        }
        loss = trainer._compute_loss(None, inputs)
        logged = trainer._metrics["train"]
        metrics = {k: logged[k][0] for k in METRICS if k in logged}
        results.append({"loss": float(loss), **metrics})
    rloo = [rloo_trl(data, case) for case in job["rloo_cases"]]
    json.dump({"grpo": results, "rloo": rloo}, sys.stdout)


def rloo_trl(data: dict, case: dict) -> dict:
    """TRL's RLOO loss and clip metrics, its forward replaced by the policy's values."""
    from collections import defaultdict
    from types import SimpleNamespace

    import torch
    from trl.trainer.rloo_trainer import RLOOTrainer

    mask = torch.tensor(data["mask"])
    policy = torch.tensor(data["policy"], dtype=torch.float32)
    old = torch.tensor(data["old"], dtype=torch.float32)
    identity = lambda x, **_: x  # noqa: E731
    trainer = RLOOTrainer.__new__(RLOOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(gather=identity, reduce=identity)
    trainer.epsilon_low = 0.2
    trainer.epsilon_high = case.get("epsilon_high") or 0.2
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
        policy,
        torch.zeros_like(policy),
        None,
    )
    inputs = {
        "prompt_ids": torch.zeros((len(mask), 1), dtype=torch.long),
        "prompt_mask": torch.ones((len(mask), 1), dtype=torch.long),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "old_logps": (old * mask).sum(1),
        "advantages": torch.tensor(data["advantages"], dtype=torch.float32),
    }
    loss = trainer._compute_loss(None, inputs)
    logged = trainer._metrics["train"]
    return {"loss": float(loss), **{k: logged[k][0] for k in METRICS if k in logged}}


def mlx_side(inputs: dict, case: dict) -> dict:
    """``grpo_loss`` with the settings the GRPO stage builds from its config."""
    import mlx.core as mx

    from mlx_align.config.online import GRPOConfig
    from mlx_align.losses.grpo import grpo_loss
    from mlx_align.stages.grpo import policy_loss_settings

    flags = {k: v for k, v in case.items() if k != "loss_type"}
    flags = {k: v for k, v in flags.items() if v is not None}
    config = GRPOConfig(
        model="m",
        data="d",
        loss=case["loss_type"],
        max_completion_tokens=MAX_COMPLETION,
        **flags,
    )
    arrays = {k: mx.array(inputs[k]) for k in ("policy", "old", "reference")}
    mask = mx.array(inputs["mask"]).astype(mx.float32)
    loss, metrics = grpo_loss(
        arrays["policy"],
        arrays["old"],
        arrays["reference"],
        mx.array(inputs["advantages"]),
        mask,
        policy_loss_settings(config),
        entropy=mx.array(inputs["entropy"]),
    )
    named = {theirs: ours for theirs, ours in METRICS.items() if ours in metrics}
    return {"loss": loss.item(), **{k: metrics[v].item() for k, v in named.items()}}


def rloo_mlx_side(inputs: dict, case: dict) -> dict:
    """``rloo_loss`` with the RLOO stage's settings."""
    import mlx.core as mx

    from mlx_align.losses.grpo import rloo_loss

    mask = mx.array(inputs["mask"]).astype(mx.float32)
    loss, metrics = rloo_loss(
        mx.array(inputs["policy"]),
        mx.array(inputs["old"]),
        mx.array(inputs["advantages"]),
        mask,
        epsilon=0.2,
        epsilon_high=case.get("epsilon_high"),
    )
    named = {theirs: ours for theirs, ours in METRICS.items() if ours in metrics}
    return {"loss": loss.item(), **{k: metrics[v].item() for k, v in named.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python")
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trl_side:
        trl_side()
        return 0
    inputs = draw_inputs(args.completions, args.seed)
    job = {"inputs": inputs, "cases": CASES, "rloo_cases": RLOO_CASES}
    trl = trl_values(args.trl_python, __file__, job)
    return compare(
        [
            ("GRPO (GRPOTrainer._compute_loss)", CASES, trl["grpo"], lambda c: mlx_side(inputs, c)),
            ("RLOO (RLOOTrainer._compute_loss)", RLOO_CASES, trl["rloo"], lambda c: rloo_mlx_side(inputs, c)),
        ],
        tolerance=1e-5,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
