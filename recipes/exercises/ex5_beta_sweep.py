"""Exercise 5: β sets how far DPO drifts from the reference.

Exercise 4's reference (a tiny llama SFT'd to say yes or no about equally
often) and prompts, but noisy labels: 60% of each training prompt's pairs
prefer yes, 40% prefer no. Then DPO's optimum is finite: the Bradley-Terry
fit of 60/40 labels is a reward gap ln(0.6/0.4), so the policy's log-ratio
margin settles near h* = ln 1.5 / β instead of growing forever. The same
data, seed, learning rate and steps run for β in {0.05, 0.1, 0.5, 1.0}
(``train.dpo.run_dpo``). Two measures per run:

* margin reached: the held-out log-ratio margin h = (TRL's
  ``val_rewards/margins``) / β at the last step, on held-out prompts
  whose pairs prefer yes;
* drift: KL(π ‖ π_ref) on the held-out prompts, estimated from completions
  sampled from the trained policy (mlx-lm loads the reference + the run's
  LoRA adapters) as Σ_t KL(π(·|x, y<t) ‖ π_ref(·|x, y<t)), exact over the
  vocabulary at each sampled position: exercise 6's chain rule.

Check: both fall strictly as β grows. Plot: KL against margin, one point
per β, and the held-out margin over steps with its h* line.
"""

from __future__ import annotations

import math

import exercise_common as common
from ex4_dpo_margin import YES, build_reference, dpo_config, write_preferences

NAME = "ex5_beta_sweep"
BETAS = (0.05, 0.1, 0.5, 1.0)
YES_SHARE = 0.6


def held_out_drift(reference_dir, run, prompts: list[str], samples: int, seed: int):
    """(KL(π ‖ π_ref) estimate in nats, share of samples that answer yes)."""
    import mlx.core as mx
    import mlx_lm

    reference, tokenizer = mlx_lm.load(str(reference_dir))
    policy = (
        mlx_lm.load(str(reference_dir), adapter_path=str(run))[0] if run else reference
    )
    eos = set(tokenizer.eos_token_ids)
    mx.random.seed(seed)
    kls, yes = [], 0
    for text in prompts:
        prompt = list(tokenizer.encode(text))
        drawn = common.sample_completions(policy, prompt, samples, 16, eos)
        kls += common.completion_kl(policy, reference, prompt, drawn).tolist()
        yes += sum(tokenizer.decode(c).startswith(YES.split(",")[0]) for c in drawn)
    return sum(kls) / len(kls), yes / len(kls)


def strictly_falling(values: list[float]) -> bool:
    return all(b < a for a, b in zip(values, values[1:], strict=False))


def main(argv=None) -> int:
    from mlx_align.stages.dpo import run_dpo

    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    steps, lr, samples = (24, 4e-3, 16) if args.quick else (60, 2e-3, 32)
    reference = build_reference(args.work, args.seed)
    data = args.work / "pairs"
    valid = write_preferences(data, yes_share=YES_SHARE)
    prompts = [row["prompt"] for row in valid]
    ref_kl, ref_yes = held_out_drift(reference, None, prompts, samples, args.seed)

    kls, yes, margins, curves = [], [], [], {}
    for beta in BETAS:
        run = args.work / f"dpo_beta{beta}"
        config = dpo_config(
            reference,
            data,
            run,
            beta=beta,
            steps=steps,
            seed=args.seed,
            learning_rate=lr,
            eval_every=steps // 6,
        )
        run_dpo(config)
        rows = common.read_metrics(run)
        val_steps, val_margins = common.series(rows, "val_rewards/margins")
        curves[beta] = (val_steps, [m / beta for m in val_margins])
        margins.append(curves[beta][1][-1])
        kl, share = held_out_drift(reference, run, prompts, samples, args.seed)
        kls.append(kl)
        yes.append(share)
    print(
        f"{steps} steps per run at lr {lr}; yes preferred in {YES_SHARE:.0%} of "
        f"training pairs; {samples} samples x {len(prompts)} held-out prompts; "
        f"the reference answers yes in {ref_yes:.0%}"
    )
    print("   beta   margin h   h* = ln1.5/beta   KL(pi || ref)   answers yes")
    for beta, margin, kl, share in zip(BETAS, margins, kls, yes, strict=True):
        h_star = math.log(YES_SHARE / (1 - YES_SHARE)) / beta
        print(
            f"  {beta:5.2f}   {margin:8.2f}   {h_star:14.2f}   {kl:13.3f}   {share:10.0%}"
        )
    check(
        "smaller beta reaches a larger held-out margin (strictly, all four)",
        strictly_falling(margins),
        " > ".join(f"{m:.2f}" for m in margins),
    )
    check(
        "smaller beta drifts further: held-out KL falls strictly as beta grows",
        strictly_falling(kls),
        " > ".join(f"{k:.3f}" for k in kls),
    )

    fig, (left, right) = common.figure(2)
    left.plot(margins, kls, "o-", color="grey", linewidth=0.8)
    for beta, margin, kl in zip(BETAS, margins, kls, strict=True):
        left.annotate(
            f"β={beta}", (margin, kl), textcoords="offset points", xytext=(5, 3)
        )
    if min(margins) > 0 and min(kls) > 0:  # the four points span decades
        left.set_xscale("log")
        left.set_yscale("log")
        left.minorticks_off()
    left.margins(0.15)
    left.set_xlabel("held-out log-ratio margin h (nats)")
    left.set_ylabel("KL(π ‖ π_ref) on held-out prompts (nats)")
    left.set_title(f"DPO β sweep, {steps} steps each")
    for i, (beta, (s, h)) in enumerate(curves.items()):
        right.plot(s, h, "o-", markersize=3, color=f"C{i}", label=f"β={beta}")
        h_star = math.log(YES_SHARE / (1 - YES_SHARE)) / beta
        right.axhline(h_star, color=f"C{i}", linewidth=0.8, linestyle=":")
    right.set_xlabel("step")
    right.set_title("held-out margin h (dotted: h* = ln 1.5 / β)")
    right.legend(fontsize=8)
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
