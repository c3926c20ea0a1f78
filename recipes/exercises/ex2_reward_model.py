"""Exercise 2: a toy reward model learns "shorter is better" and generalises to new prompts.

Synthetic pairs: the chosen answer is one colour word ("Blue."), the
rejected one is the same word padded with 2-5 filler words ("Blue. um like
so."). The package's reward trainer (``train.reward.run_reward``: a LoRA
backbone plus a scalar head read at the last completion token, trained with
``losses.bt_loss``) runs on a freshly initialised tiny llama written to
disk. Held-out pairs ask about things no training prompt mentions; the
trainer evaluates on all of them (``val_accuracy`` in the run's
``metrics.jsonl``). Check: held-out preference accuracy ≥ 0.95. Plot: the
training loss and accuracy, and the held-out accuracy, over steps. The head
starts at zero, so at step 1 every reward is 0: loss ln 2, accuracy 0 (a
tie is not a win); the length direction is found within a step or two.
"""

from __future__ import annotations

import math
import random

import exercise_common as common

NAME = "ex2_reward_model"
ANSWERS = ["Blue.", "Green.", "Red.", "White.", "Black.", "Yellow.", "Grey.", "Gold."]
FILLER = ["well", "you", "know", "um", "basically", "actually", "so", "like", "I"]
TRAIN_THINGS = (
    "sky grass sun snow coal blood milk sea leaf rose lemon night cloud apple cherry "
    "plum lime ash ink sand gold salt soot moss pearl rust slate straw tar wine bone brick"
).split()
HELD_OUT_THINGS = (
    "car door hat shoe cup bird fish frog kite boat lamp rug fox owl bee egg".split()
)


def shorter_is_better(things: list[str], per_thing: int, seed: int) -> list[dict]:
    """``per_thing`` pairs per prompt: a one-word answer over the same word plus filler."""
    rng, rows = random.Random(seed), []
    for thing in things:
        for _ in range(per_thing):
            answer = rng.choice(ANSWERS)
            filler = " ".join(rng.choices(FILLER, k=rng.randint(2, 5)))
            rows.append(
                {
                    "prompt": f"Question: What colour is the {thing}?\nAnswer:",
                    "chosen": f" {answer}",
                    "rejected": f" {answer} {filler}.",
                }
            )
    return rows


def main(argv=None) -> int:
    from mlx_align.config.stages import RewardConfig
    from mlx_align.stages.reward import run_reward

    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    steps = 16 if args.quick else 40
    train_rows = shorter_is_better(TRAIN_THINGS, 2, args.seed)
    valid_rows = shorter_is_better(HELD_OUT_THINGS, 2, args.seed + 1)
    data = args.work / "data"
    common.write_jsonl(data / "train.jsonl", train_rows)
    common.write_jsonl(data / "valid.jsonl", valid_rows)
    corpus = [r["prompt"] + r[k] for r in train_rows for k in ("chosen", "rejected")]
    model = common.tiny_model(args.work / "base", corpus * 5, seed=args.seed)

    run = args.work / "rm"
    run_reward(
        RewardConfig(
            model=str(model),
            data=str(data),
            out=str(run),
            steps=steps,
            batch_size=8,
            learning_rate=3e-3,
            warmup_steps=2,
            eval_every=4,
            eval_batches=-1,
            log_every=1,
            save_every=0,
            seed=args.seed,
            lora_rank=8,
            lora_alpha=16,
        )
    )
    rows = common.read_metrics(run)
    loss_steps, train_loss = common.series(rows, "loss")
    val_steps, val_accuracy = common.series(rows, "val_accuracy")
    final = val_accuracy[-1]
    print(
        f"{len(train_rows)} train pairs, {len(valid_rows)} held-out pairs, {steps} steps"
    )
    print(
        f"train loss {train_loss[0]:.3f} (step 1) -> {train_loss[-1]:.4f}; "
        f"held-out accuracy by step: "
        + ", ".join(
            f"{s}: {a:.2f}" for s, a in zip(val_steps, val_accuracy, strict=True)
        )
    )
    check("held-out preference accuracy >= 0.95", final >= 0.95, f"{final:.3f}")
    check(
        "training loss starts near ln 2 and falls below a third of it",
        abs(train_loss[0] - math.log(2)) < 0.1 and train_loss[-1] < math.log(2) / 3,
        f"{train_loss[0]:.3f} -> {train_loss[-1]:.4f}",
    )

    fig, (left, right) = common.figure(2)
    left.plot(loss_steps, train_loss, marker="o", markersize=3)
    left.axhline(math.log(2), color="grey", linewidth=0.8, linestyle=":")
    left.set_xlabel("step")
    left.set_title("reward model: training BT loss")
    right.plot(*common.series(rows, "accuracy"), color="C1", label="training batch")
    right.plot(val_steps, val_accuracy, marker="o", color="C2", label="held-out pairs")
    right.legend(fontsize=8)
    right.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_title("preference accuracy (r_chosen > r_rejected)")
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
