"""Exercise 1: the Bradley-Terry loss −log σ(r_w − r_l) against the reward margin.

``losses.bt_loss`` (the reward trainer's loss) is ln 2 when the two rewards
are equal (the model cannot tell the pair apart: a coin flip), falls
monotonically as the chosen reward pulls ahead, and is already small at a
margin of 3 (−log σ(3) = 0.0486). A wrong ordering (negative margin) costs
roughly |margin|. Plot: the loss and its slope against the margin.
"""

from __future__ import annotations

import math

import exercise_common as common

NAME = "ex1_bradley_terry"


def bt_curve(margins: list[float]) -> tuple[list[float], list[float]]:
    """Loss and d(loss)/d(margin) of ``losses.bt_loss`` at each margin (chosen = m, rejected = 0)."""
    import mlx.core as mx

    from mlx_align.losses.preference import bt_loss

    chosen = mx.array(margins, dtype=mx.float32)
    rejected = mx.zeros_like(chosen)
    losses, _ = bt_loss(chosen, rejected)
    slope = mx.grad(lambda c: bt_loss(c, rejected)[0].sum())(chosen)
    return losses.tolist(), slope.tolist()


def main(argv=None) -> int:
    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    n = 61 if args.quick else 801
    lo, hi = -5.0, 5.0
    margins = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    margins[min(range(n), key=lambda i: abs(margins[i]))] = 0.0  # exactly 0 in the grid
    losses, slopes = bt_curve(margins)
    at = dict(zip(margins, losses, strict=True))

    (zero,), (three,) = bt_curve([0.0])[0], bt_curve([3.0])[0]
    expected_three = -math.log(1.0 / (1.0 + math.exp(-3.0)))
    print(f"margin 0: loss {zero:.6f} (ln 2 = {math.log(2):.6f})")
    print(f"margin 3: loss {three:.6f} (-log sigma(3) = {expected_three:.6f})")
    print(
        f"margin -3: loss {bt_curve([-3.0])[0][0]:.4f}; margin 5: {at[margins[-1]]:.4f}"
    )

    check("loss at margin 0 is ln 2", abs(zero - math.log(2)) < 1e-6, f"{zero:.6f}")
    check(
        "loss strictly falls as the margin grows",
        all(b < a for a, b in zip(losses, losses[1:], strict=False)),
        f"{n} margins in [{lo}, {hi}]",
    )
    check(
        "loss at margin 3 is -log sigma(3) = 0.0486, near 0",
        abs(three - expected_three) < 1e-5 and three < 0.05,
        f"{three:.4f}",
    )
    check(
        "slope is -sigma(-margin) (autograd through bt_loss)",
        all(
            abs(s + 1.0 / (1.0 + math.exp(m))) < 1e-5
            for m, s in zip(margins, slopes, strict=True)
        ),
    )

    fig, (ax,) = common.figure(1, width=6.0, height=4.0)
    ax.plot(margins, losses, label="loss  −log σ(m)")
    ax.plot(margins, slopes, label="slope  d loss / d m", linestyle="--")
    ax.axhline(math.log(2), color="grey", linewidth=0.8, linestyle=":")
    ax.annotate("ln 2", (lo, math.log(2)), textcoords="offset points", xytext=(2, 4))
    ax.plot([0, 3], [zero, three], "o", color="C3")
    ax.annotate(f"{three:.4f}", (3, three), textcoords="offset points", xytext=(4, 8))
    ax.set_xlabel("margin m = r_chosen − r_rejected")
    ax.set_title("Bradley-Terry loss (losses.bt_loss)")
    ax.legend()
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
