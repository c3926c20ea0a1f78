"""mlx-align's DPO and CPO losses against TRL's own ``DPOTrainer._compute_loss``
and ``CPOTrainer.get_batch_loss_metrics``, on the same per-token log-probs.

Not a test of the suite (torch and TRL are no project dependency): run it by
hand with a throwaway TRL venv,

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install "torch==2.13.0+cpu" trl==1.16.0
    .venv/bin/python tests/trl_parity/preference_losses.py --trl-python /tmp/trl-venv/bin/python

It draws B pairs of random per-token log-probs (policy and reference) with
completions of different lengths, hands them to TRL's ``_compute_loss`` (a
stand-in model returns the policy's per-token log-probs; the reference's
are precomputed, as ``precompute_ref_log_probs``) and to mlx-align's
``stages.dpo.dpo_objective`` with the stage's masked mean, and prints the
largest difference in the loss and in every metric both log, for each
configuration. CPO's part hands the same log-probs (summed, or per-token
means for ipo/simpo/alphapo, and the chosen token-mean NLL) to TRL's
``get_batch_loss_metrics`` in place of its forward, against
``stages.cpo.cpo_batch_loss``'s loss (which leaves ``nll_loss`` out where
TRL logs it as 0: without the NLL term). Exit 1 when one exceeds 1e-5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DPO_CASES, compare, trl_values  # noqa: E402

CASES = [
    *DPO_CASES,
    {"loss_type": ["aot"], "label_smoothing": 0.1},
    {"loss_type": ["discopop"], "discopop_tau": 0.2},
    {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
    {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"},
    {"loss_type": ["hinge"], "f_divergence_type": "alpha_divergence"},
    {
        "loss_type": ["ipo"],
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.3,
    },
]
CPO_CASES = [
    {"loss_type": "sigmoid"},
    {"loss_type": "sigmoid", "label_smoothing": 0.1, "cpo_alpha": 0.5},
    {"loss_type": "hinge"},
    {"loss_type": "ipo"},
    {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.8},
    {"loss_type": "simpo", "label_smoothing": 0.2},
    {"loss_type": "alphapo", "alpha": 0.25},
    {"loss_type": "sigmoid", "alpha": -0.5},
]
METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
]
BETA = 0.3


def draw_inputs(pairs: int, width: int, seed: int) -> dict:
    """Per-token log-probs (2B, T) for chosen rows then rejected ones, and their
    completion masks: each row a prompt of 1-3 tokens, then 2..T−3 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros((2 * pairs, width), dtype=np.int64)
    for row in mask:
        start = int(rng.integers(1, 4))
        row[start : start + int(rng.integers(2, width - start))] = 1
    shifted = mask[:, 1:]
    policy = -rng.gamma(2.0, 0.6, size=shifted.shape) * shifted
    reference = policy + rng.normal(0.0, 1.0, size=shifted.shape) * shifted
    return {
        "completion_mask": mask.tolist(),
        "policy": policy.tolist(),
        "reference": reference.tolist(),
    }


def trl_side() -> None:
    """Reads {"inputs", "cases"} on stdin; prints TRL's loss and metrics per case."""
    from collections import defaultdict
    from types import SimpleNamespace

    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    job = json.load(sys.stdin)
    data = job["inputs"]
    mask = torch.tensor(data["completion_mask"])
    policy = torch.tensor(data["policy"], dtype=torch.float32)
    reference = torch.tensor(data["reference"], dtype=torch.float32)
    ref_chosen, ref_rejected = reference.sum(dim=1).chunk(2)

    def model(**_):
        return SimpleNamespace(
            log_probs=policy,
            entropy=torch.zeros_like(policy),
            mean_logits=torch.zeros_like(policy),
            is_top1=torch.zeros_like(policy, dtype=torch.bool),
        )

    model.training = True
    identity = lambda x: x  # noqa: E731  (one process: gathers change nothing)
    results = []
    for case in job["cases"]:
        trainer = DPOTrainer.__new__(DPOTrainer)
        trainer.model = model
        trainer.accelerator = SimpleNamespace(
            device="cpu", gather=identity, gather_for_metrics=identity
        )
        trainer.args = SimpleNamespace(
            discopop_tau=case.get("discopop_tau", 0.05),
            gradient_checkpointing_kwargs=None,
        )
        trainer.beta = BETA
        trainer.loss_types = case["loss_type"]
        trainer.loss_weights = case.get("loss_weights") or [1.0] * len(
            case["loss_type"]
        )
        trainer.label_smoothing = case.get("label_smoothing", 0.0)
        trainer.f_divergence_type = case.get("f_divergence_type", "reverse_kl")
        trainer.f_alpha_divergence_coef = case.get("f_alpha_divergence_coef", 0.5)
        trainer.ld_alpha, trainer.use_weighting = None, False
        trainer.precompute_ref_logps, trainer.aux_loss_enabled = True, False
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer._total_train_tokens, trainer._tp_size = 0, 1
        inputs = {
            "input_ids": torch.zeros_like(mask),
            "attention_mask": torch.ones_like(mask),
            "completion_mask": mask,
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
        }
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
        logged = {name: trainer._metrics["train"][name][0] for name in METRICS}
        results.append({"loss": float(loss), **logged})
    cpo_results = [cpo_trl(mask, policy, case) for case in job["cpo_cases"]]
    json.dump({"dpo": results, "cpo": cpo_results}, sys.stdout)


def cpo_trl(mask, policy, case: dict) -> dict:
    """TRL's CPO loss and metrics, its forward replaced by the same log-probs."""
    from types import SimpleNamespace

    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    loss_type, cpo_alpha = case["loss_type"], case.get("cpo_alpha", 1.0)
    if loss_type == "alphapo":  # as TRL's CPOConfig.__post_init__
        loss_type, cpo_alpha = "simpo", 0.0
    shifted = mask[:, 1:].to(policy.dtype)
    logps = policy.sum(dim=1)
    if loss_type in ("ipo", "simpo"):  # TRL's average_log_prob
        logps = logps / shifted.sum(dim=1)
    chosen, rejected = logps.chunk(2)
    chosen_tokens = shifted.chunk(2)[0]
    nll = -(policy.chunk(2)[0] * chosen_tokens).sum() / chosen_tokens.sum()
    trainer = CPOTrainer.__new__(CPOTrainer)
    identity = lambda x: x  # noqa: E731
    trainer.accelerator = SimpleNamespace(device="cpu", gather_for_metrics=identity)
    trainer.beta, trainer.loss_type, trainer.cpo_alpha = BETA, loss_type, cpo_alpha
    trainer.label_smoothing = case.get("label_smoothing", 0.0)
    trainer.simpo_gamma = case.get("simpo_gamma", 0.5)
    trainer.alpha, trainer.aux_loss_enabled = case.get("alpha", 0.0), False
    zeros = policy.new_zeros(1)
    trainer.concatenated_forward = lambda model, batch: (
        chosen,
        rejected,
        zeros,
        zeros,
        nll if cpo_alpha else zeros.sum(),
    )
    loss, metrics = trainer.get_batch_loss_metrics(None, {})
    return {"loss": float(loss), **{k: metrics[k] for k in METRICS + ["nll_loss"]}}


def mlx_side(inputs: dict, case: dict) -> dict:
    """The DPO stage's objective and masked mean on the same log-probs."""
    import mlx.core as mx

    from mlx_align.config.stages import DPOConfig
    from mlx_align.losses.masked import masked_means
    from mlx_align.stages.dpo import dpo_objective

    config = DPOConfig(
        model="m",
        data="d",
        beta=BETA,
        loss=tuple(case["loss_type"]),
        loss_weights=",".join(map(str, case.get("loss_weights", []))),
        label_smoothing=case.get("label_smoothing", 0.0),
        discopop_tau=case.get("discopop_tau", 0.05),
        f_divergence_type=case.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=case.get("f_alpha_divergence_coef", 0.5),
    )
    mask = mx.array(inputs["completion_mask"])[:, 1:].astype(mx.float32)
    policy = mx.array(inputs["policy"]).sum(axis=1)
    reference = mx.array(inputs["reference"]).sum(axis=1)
    lengths = mask.sum(axis=1)
    pc, pr = mx.split(policy, 2)
    rc, rr = mx.split(reference, 2)
    lc, lr = mx.split(lengths, 2)
    valid = mx.ones(pc.shape)
    losses, metrics = dpo_objective(config)(pc, pr, rc, rr, lc, lr, valid)
    loss, means = masked_means(losses, metrics, valid)
    return {"loss": loss.item(), **{name: means[name].item() for name in METRICS}}


def cpo_mlx_side(inputs: dict, case: dict) -> dict:
    """The CPO stage's batch loss on the same log-probs, through a stand-in layout."""
    from types import SimpleNamespace

    import mlx.core as mx

    from mlx_align.config.stages import CPOConfig
    from mlx_align.stages.cpo import cpo_batch_loss

    mask = mx.array(inputs["completion_mask"])[:, 1:].astype(mx.float32)
    summed, lengths = mx.array(inputs["policy"]).sum(axis=1), mask.sum(axis=1)
    layout = SimpleNamespace(logps=lambda model: (summed, lengths))
    batch = SimpleNamespace(inputs=layout, valid=mx.ones(summed.shape[0] // 2))
    config = CPOConfig(
        model="m",
        data="d",
        beta=BETA,
        loss=case["loss_type"],
        label_smoothing=case.get("label_smoothing", 0.0),
        cpo_alpha=case.get("cpo_alpha", 1.0),
        simpo_gamma=case.get("simpo_gamma", 0.5),
        alpha=case.get("alpha", 0.0),
    )
    loss, _, metrics = cpo_batch_loss(None, batch, config=config)
    names = [name for name in METRICS + ["nll_loss"] if name in metrics]
    return {"loss": loss.item(), **{name: metrics[name].item() for name in names}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trl_side:
        trl_side()
        return 0
    inputs = draw_inputs(args.pairs, args.width, args.seed)
    job = {"inputs": inputs, "cases": CASES, "cpo_cases": CPO_CASES}
    trl = trl_values(args.trl_python, __file__, job)
    return compare(
        [
            ("DPO (DPOTrainer._compute_loss)", CASES, trl["dpo"], lambda c: mlx_side(inputs, c)),
            ("CPO (CPOTrainer.get_batch_loss_metrics)", CPO_CASES, trl["cpo"], lambda c: cpo_mlx_side(inputs, c)),
        ],
        tolerance=1e-5,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
