"""Exercise 7: reward hacking. GRPO on a flawed reward, without and with the KL anchor.

The task: copy a three-digit string ("Copy: 657\\nAnswer:" -> " 657"). A
fresh tiny llama learns it by full fine-tuning (``train.sft.run_sft``); it
copies held-out strings it never saw. The flawed reward,
``length_reward`` below, pays for characters: it never looks at the
string. GRPO (``train.grpo.run_grpo``, LoRA on the SFT model, the reward
given by its import path ``ex7_reward_hacking:length_reward``) then runs
twice from the same start with the same seed:

* β = 0, no anchor: once a sampled group happens to hold a longer
  completion, the advantage rewards it; completions run to the length cap,
  stop copying and collapse into repeats (even special tokens, which
  decode to 7 characters each). Held-out copy accuracy and the
  distinct-token ratio fall; the KL to the SFT model explodes.
* β > 0, the k3 KL penalty to the SFT model (adapters off): completions
  stay the reference's length, the KL stays bounded, the copies stay right.

Measured on held-out strings at every ``--every`` steps: greedy copy
accuracy (the completion, stripped, must equal the string), greedy
distinct-token ratio (distinct tokens / tokens of a completion), and
KL(π ‖ π_SFT) from completions sampled from π (Σ_t KL(π(·|x, y<t) ‖
π_SFT(·|x, y<t)), exercise 6). The run is split into segments with
``resume=True`` (constant learning rate, so the segments make one run) to
read the adapters in between. Plot: completion length (the trainer's
``completion_length_mean``), KL, accuracy and distinct-token ratio over
steps, with and without the anchor.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
from pathlib import Path

import exercise_common as common

NAME = "ex7_reward_hacking"
if str(common.HERE) not in sys.path:  # so GRPO can import the reward by its path
    sys.path.insert(0, str(common.HERE))
REWARD = "ex7_reward_hacking:length_reward"
ANCHOR_BETA = 2.0


def length_reward(prompts, completions, **columns) -> list[float]:
    """The flawed reward: characters of the completion, /10. Correctness never enters."""
    return [len(c) / 10.0 for c in completions]


def prompt(digits: str) -> str:
    return f"Copy: {digits}\nAnswer:"


def split_strings(seed: int) -> tuple[list[str], list[str]]:
    """All 1000 three-digit strings, shuffled: 40 held out, 400 to train on."""
    strings = [f"{i:03d}" for i in range(1000)]
    random.Random(seed).shuffle(strings)
    return strings[40:440], strings[:40]


def train_copier(work: Path, train: list[str], steps: int, seed: int) -> Path:
    """A fresh tiny llama, fully fine-tuned on copying: the start and the reference."""
    from mlx_align.config.stages import SFTConfig
    from mlx_align.stages.sft import run_sft

    rows = [{"prompt": prompt(s), "completion": f" {s}"} for s in train]
    common.write_jsonl(work / "sft_data" / "train.jsonl", rows)
    base = common.tiny_model(
        work / "base", [r["prompt"] + r["completion"] for r in rows], seed=seed
    )
    run_sft(
        SFTConfig(
            model=str(base),
            data=str(work / "sft_data"),
            out=str(work / "sft"),
            full=True,
            steps=steps,
            batch_size=32,
            learning_rate=3e-3,
            warmup_steps=10,
            eval_every=0,
            log_every=25,
            save_every=0,
            max_length=32,
            seed=seed,
        )
    )
    return work / "sft" / "model"


def evaluate(model, reference, tokenizer, held_out, samples, cap) -> dict:
    """Greedy accuracy and distinct-token ratio; sampled length and KL to the reference."""
    eos = set(tokenizer.eos_token_ids)
    correct, distinct, lengths, kls, examples = 0, [], [], [], []
    for digits in held_out:
        ids = list(tokenizer.encode(prompt(digits)))
        (greedy,) = common.sample_completions(model, ids, 1, cap, eos, temperature=0)
        body = [t for t in greedy if t not in eos]
        text = tokenizer.decode(body)
        correct += text.strip() == digits
        distinct.append(len(set(body)) / max(len(body), 1))
        examples.append(text)
        drawn = common.sample_completions(model, ids, samples, cap, eos)
        lengths += [len(c) for c in drawn]
        kls += common.completion_kl(model, reference, ids, drawn).tolist()
    return {
        "accuracy": correct / len(held_out),
        "distinct": sum(distinct) / len(distinct),
        "length": sum(lengths) / len(lengths),
        "kl": sum(kls) / len(kls),
        "examples": examples[:3],
    }


def grpo_run(config, every: int, measure) -> list[tuple[int, dict]]:
    """``config.steps`` GRPO steps in segments of ``every``; ``measure(run_dir)`` after each."""
    from mlx_align.stages.grpo import run_grpo

    shutil.rmtree(config.out, ignore_errors=True)  # resume must not find an old run
    points = []
    for end in range(every, config.steps + 1, every):
        run_grpo(dataclasses.replace(config, steps=end, resume=True))
        points.append((end, measure(config.out)))
    return points


def main(argv=None) -> int:
    import mlx.core as mx
    import mlx_lm

    from mlx_align.config.online import GRPOConfig

    def flags(parser):
        parser.add_argument("--anchor-beta", type=float, default=ANCHOR_BETA)

    args = common.parse_args(NAME, __doc__, argv, flags)
    check = common.Checks(NAME)
    if args.quick:
        sft_steps, steps, every, lr, n_held, samples = 100, 30, 15, 4e-3, 12, 6
    else:
        sft_steps, steps, every, lr, n_held, samples = 100, 60, 10, 2e-3, 24, 8
    cap = 16
    train, held_out = split_strings(args.seed)
    held_out = held_out[:n_held]
    start = train_copier(args.work, train, sft_steps, args.seed)
    common.write_jsonl(
        args.work / "grpo_data" / "train.jsonl",
        [{"prompt": prompt(s), "answer": s} for s in train],
    )
    reference, tokenizer = mlx_lm.load(str(start))

    def measure(run_dir):
        mx.random.seed(args.seed)
        policy = reference if run_dir is None else None
        if policy is None:
            policy, _ = mlx_lm.load(str(start), adapter_path=str(run_dir))
        return evaluate(policy, reference, tokenizer, held_out, samples, cap)

    base = GRPOConfig(
        model=str(start),
        data=str(args.work / "grpo_data"),
        out="",
        reward=(REWARD,),
        steps=steps,
        batch_size=4,
        group_size=8,
        max_completion_tokens=cap,
        temperature=1.3,
        learning_rate=lr,
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant: the segments replay one run
        log_every=1,
        save_every=every,
        eval_every=0,
        max_length=64,
        lora_rank=8,
        lora_alpha=16,
        seed=args.seed,
    )
    at_start = measure(None)
    runs = {}
    for beta in (0.0, args.anchor_beta):
        out = args.work / f"grpo_beta{beta}"
        config = dataclasses.replace(base, out=str(out), beta=beta)
        runs[beta] = [(0, at_start), *grpo_run(config, every, measure)]

    print(
        f"SFT copier ({sft_steps} steps) on {len(held_out)} held-out strings: "
        f"accuracy {at_start['accuracy']:.2f}, distinct {at_start['distinct']:.2f}, "
        f"length {at_start['length']:.2f} tokens"
    )
    print(f"GRPO {steps} steps, lr {lr}, temperature 1.3, cap {cap} tokens")
    print("  beta  step  accuracy  distinct  length  KL(pi || SFT)")
    for beta, points in runs.items():
        for step, m in points:
            print(
                f"  {beta:4.1f}  {step:4d}  {m['accuracy']:8.2f}  {m['distinct']:8.2f}"
                f"  {m['length']:6.2f}  {m['kl']:10.3f}"
            )
    for beta, points in runs.items():
        shown = [
            text if len(text) < 40 else text[:36] + "..."
            for text in points[-1][1]["examples"]
        ]
        print(f"  beta {beta}: greedy completions {shown}")

    free, anchored = runs[0.0][-1][1], runs[args.anchor_beta][-1][1]
    check(
        "no anchor: completions run to the length cap (>= 90% of it)",
        free["length"] >= 0.9 * cap,
        f"{at_start['length']:.2f} -> {free['length']:.2f} tokens (cap {cap})",
    )
    check(
        "no anchor: held-out accuracy and distinct-token ratio fall by half or more",
        free["accuracy"] <= 0.5 * at_start["accuracy"]
        and free["distinct"] <= 0.5 * at_start["distinct"],
        f"accuracy {at_start['accuracy']:.2f} -> {free['accuracy']:.2f}, "
        f"distinct {at_start['distinct']:.2f} -> {free['distinct']:.2f}",
    )
    worst_kl = max(m["kl"] for _, m in runs[args.anchor_beta])
    check(
        f"anchor (beta {args.anchor_beta}): KL stays below 1 nat at every measurement",
        worst_kl < 1.0,
        f"largest {worst_kl:.3f}; without the anchor {free['kl']:.1f}",
    )
    check(
        "anchor: accuracy kept (within 0.1), length within 1 token of the start",
        anchored["accuracy"] >= at_start["accuracy"] - 0.1
        and abs(anchored["length"] - at_start["length"]) <= 1.0,
        f"accuracy {anchored['accuracy']:.2f}, length {anchored['length']:.2f}",
    )

    fig, axes = common.figure(4, width=4.0)
    for i, (beta, points) in enumerate(runs.items()):
        label = "β = 0 (no anchor)" if beta == 0 else f"β = {beta}"
        rows = common.read_metrics(args.work / f"grpo_beta{beta}")
        axes[0].plot(
            *common.series(rows, "completion_length_mean"), color=f"C{i}", label=label
        )
        steps_at = [s for s, _ in points]
        axes[1].plot(
            steps_at, [m["kl"] for _, m in points], "o-", color=f"C{i}", label=label
        )
        for ax, key in ((axes[2], "accuracy"), (axes[3], "distinct")):
            ax.plot(
                steps_at, [m[key] for _, m in points], "o-", color=f"C{i}", label=label
            )
    axes[0].axhline(cap, color="grey", linestyle=":", linewidth=0.8)
    axes[0].set_title("completion length (tokens, GRPO rollouts)")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[1].set_title("KL(π ‖ π_SFT) on held-out prompts")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title("held-out copy accuracy (greedy)")
    axes[3].set_ylim(-0.02, 1.02)
    axes[3].set_title("distinct-token ratio (greedy)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
