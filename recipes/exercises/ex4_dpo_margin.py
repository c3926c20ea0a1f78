"""Exercise 4: DPO from a policy that starts at the reference; the log-prob margin grows.

The reference: a tiny llama, initialised fresh and fully fine-tuned
(``train.sft.run_sft``) to answer "Question: Do you like the <thing>?"
with " Yes, I like it." or " No, I do not." about equally often. The toy
preferences put the yes-answer first. The package's DPO trainer
(``stages.dpo.run_dpo``, ``losses.dpo.dpo_sigmoid_loss``) trains LoRA adapters on
the reference; the reference log-probs are the same weights with the
adapters off. LoRA's B matrices start at zero, so at step 1 the policy *is*
the reference: every log-ratio is 0, the loss is ln 2 and the implicit
reward margin (TRL's ``rewards/margins`` = β·h) is 0. Then the margin
h = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r)) grows, on
the training pairs and on held-out prompts. Most of it is the rejected
answer losing log-probability (``logps/rejected``); the chosen one
(``logps/chosen``) gains a little, then, late in the full-size run, sinks
again: DPO moves only the difference. Plot: those curves over steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import exercise_common as common

NAME = "ex4_dpo_margin"
THINGS = (
    "apple river stone cloud tiger piano lemon forest candle rocket violin garden "
    "castle pencil rabbit mirror"
).split()
HELD_OUT = "window saddle turnip beacon hammer button".split()
YES, NO = " Yes, I like it.", " No, I do not."
PAIRS_PER_THING = 10


def prompt(thing: str) -> str:
    return f"Question: Do you like the {thing}?\nAnswer:"


def build_reference(work: Path, seed: int) -> Path:
    """A fresh tiny llama, SFT'd (all weights) on both answers to every prompt: the reference."""
    from mlx_align.config.stages import SFTConfig
    from mlx_align.stages.sft import run_sft

    rows = [
        {"prompt": prompt(t), "completion": answer}
        for t in THINGS + HELD_OUT
        for answer in (YES, NO)
    ]
    common.write_jsonl(work / "sft_data" / "train.jsonl", rows)
    corpus = [r["prompt"] + r["completion"] for r in rows]
    base = common.tiny_model(work / "base", corpus * 5, seed=seed)
    run_sft(
        SFTConfig(
            model=str(base),
            data=str(work / "sft_data"),
            out=str(work / "reference"),
            full=True,
            steps=80,
            batch_size=8,
            learning_rate=3e-3,
            warmup_steps=5,
            eval_every=0,
            log_every=20,
            save_every=0,
            max_length=64,
            seed=seed,
        )
    )
    return work / "reference" / "model"


def write_preferences(data: Path, yes_share: float) -> list[dict]:
    """Train pairs: a ``yes_share`` of each prompt's pairs prefer yes, the rest no.
    Held-out pairs (other things) always prefer yes; they are returned."""
    n_yes = round(yes_share * PAIRS_PER_THING)
    train = [
        {
            "prompt": prompt(t),
            "chosen": YES if i < n_yes else NO,
            "rejected": NO if i < n_yes else YES,
        }
        for t in THINGS
        for i in range(PAIRS_PER_THING)
    ]
    valid = [{"prompt": prompt(t), "chosen": YES, "rejected": NO} for t in HELD_OUT]
    common.write_jsonl(data / "train.jsonl", train)
    common.write_jsonl(data / "valid.jsonl", valid)
    return valid


def dpo_config(model, data, out, *, beta: float, steps: int, seed: int, **overrides):
    from mlx_align.config.stages import DPOConfig

    settings = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        steps=steps,
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=2,
        eval_every=5,
        eval_batches=-1,
        log_every=1,
        save_every=0,
        seed=seed,
        lora_rank=8,
        lora_alpha=16,
        beta=beta,
        max_length=64,
    )
    return DPOConfig(**{**settings, **overrides})


def main(argv=None) -> int:
    from mlx_align.stages.dpo import run_dpo

    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    beta, steps = 0.1, (15 if args.quick else 40)
    model = build_reference(args.work, args.seed)
    data = args.work / "pairs"
    write_preferences(data, yes_share=1.0)
    run = args.work / "dpo"
    run_dpo(dpo_config(model, data, run, beta=beta, steps=steps, seed=args.seed))

    rows = common.read_metrics(run)
    step, margins = common.series(rows, "rewards/margins")
    h = [m / beta for m in margins]  # log-ratio margin, nats
    _, chosen = common.series(rows, "logps/chosen")
    _, rejected = common.series(rows, "logps/rejected")
    raw = [c - r for c, r in zip(chosen, rejected, strict=True)]
    _, loss = common.series(rows, "loss")
    val_step, val_margins = common.series(rows, "val_rewards/margins")
    val_h = [m / beta for m in val_margins]
    print(
        f"beta {beta}, {steps} steps, {len(THINGS) * PAIRS_PER_THING} train pairs, "
        f"{len(HELD_OUT)} held-out pairs"
    )
    print(
        f"step 1: loss {loss[0]:.4f}, margin h {h[0]:+.4f}; step {step[-1]}: "
        f"loss {loss[-1]:.4f}, h {h[-1]:+.2f} nats"
    )
    peak = max(range(len(chosen)), key=chosen.__getitem__)
    print(
        f"logps/chosen {chosen[0]:.2f} -> {chosen[-1]:.2f} (highest {chosen[peak]:.2f} "
        f"at step {step[peak]}), logps/rejected {rejected[0]:.2f} -> {rejected[-1]:.2f}, "
        f"log p(chosen) - log p(rejected) {raw[0]:+.2f} -> {raw[-1]:+.2f}"
    )
    print(
        "held-out margin h by step: "
        + ", ".join(f"{s}: {m:+.2f}" for s, m in zip(val_step, val_h, strict=True))
    )
    check(
        "step 1: policy = reference (h = 0, loss = ln 2)",
        abs(h[0]) < 1e-3 and abs(loss[0] - math.log(2)) < 1e-3,
        f"h {h[0]:+.1e}, loss {loss[0]:.4f}",
    )
    third = max(1, len(h) // 3)
    check(
        "the margin grows: last third of steps above the first third, final h > 2",
        min(h[-third:]) > max(h[:third]) and h[-1] > 2.0,
        f"first third max {max(h[:third]):+.2f}, last third min {min(h[-third:]):+.2f}",
    )
    check(
        "the held-out margin grows too",
        val_h[-1] > 2.0 and val_h[-1] > val_h[0],
        f"{val_h[0]:+.2f} -> {val_h[-1]:+.2f}",
    )
    # DPO moves only the difference: the chosen log-prob may sink late in a run
    # (it does here at full size), so only the rejected one is checked.
    check(
        "the rejected answer loses log-probability",
        rejected[-1] < rejected[0] - 2.0,
        f"{rejected[0]:.2f} -> {rejected[-1]:.2f}",
    )

    fig, (left, right) = common.figure(2)
    left.plot(step, h, label="train h = Δ log-ratio")
    left.plot(val_step, val_h, "o-", label="held-out h")
    left.plot(step, raw, "--", label="log π(y_c) − log π(y_r)")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("step")
    left.set_ylabel("nats")
    left.set_title(f"DPO margin (β={beta}), policy starts at the reference")
    left.legend(fontsize=8)
    right.plot(step, chosen, label="logps/chosen")
    right.plot(step, rejected, label="logps/rejected")
    right.set_xlabel("step")
    right.set_title("summed completion log-probs (train)")
    right.legend(fontsize=8)
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
