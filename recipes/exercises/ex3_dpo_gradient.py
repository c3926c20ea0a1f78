"""Exercise 3: the DPO loss from log-ratios, and which way its gradient pushes.

``losses.dpo.dpo_sigmoid_loss`` (the DPO trainer's loss) is −log σ(β·h) with
h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)). When the
policy equals the reference every log-ratio is 0, so the loss is ln 2 for
any log-probs and any β. Its gradient (``mx.grad``) with respect to the
policy's chosen log-prob is −β·σ(−βh) < 0 and with respect to the rejected
one +β·σ(−βh) > 0: gradient descent raises the chosen log-ratio and lowers
the rejected one, ever more gently as h grows. Plot: a few hundred descent
steps on the two policy log-probs, and the loss along the way.
"""

from __future__ import annotations

import math
import random

import exercise_common as common

NAME = "ex3_dpo_gradient"


def dpo(beta: float):
    """(loss, gradient) of ``dpo_sigmoid_loss`` for one pair, as functions of the policy log-probs."""
    import mlx.core as mx

    from mlx_align.losses.dpo import DPOPair, dpo_sigmoid_loss

    def loss(policy, ref):  # policy, ref: (2,) = (chosen, rejected) log-probs
        pair = DPOPair.of(policy[:1], policy[1:], ref[:1], ref[1:])
        return dpo_sigmoid_loss(pair, beta=beta).sum()

    return loss, mx.grad(loss)


def main(argv=None) -> int:
    import mlx.core as mx

    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    rng = random.Random(args.seed)
    n_cases = 20 if args.quick else 200
    betas = (0.05, 0.1, 0.5, 1.0)

    worst_ln2, signs_ok, worst_formula = 0.0, True, 0.0
    for _ in range(n_cases):
        beta = rng.choice(betas)
        ref = mx.array([rng.uniform(-40, -1), rng.uniform(-40, -1)])
        loss, grad = dpo(beta)
        worst_ln2 = max(worst_ln2, abs(loss(ref, ref).item() - math.log(2)))
        # a policy somewhere near the reference: any h, either sign
        policy = ref + mx.array([rng.uniform(-5, 5), rng.uniform(-5, 5)])
        g_chosen, g_rejected = grad(policy, ref).tolist()
        h = (policy - ref).tolist()
        h = h[0] - h[1]
        signs_ok &= g_chosen < 0 < g_rejected
        expected = beta / (1.0 + math.exp(beta * h))  # β·σ(−βh)
        worst_formula = max(
            worst_formula, abs(g_chosen + expected), abs(g_rejected - expected)
        )
    print(f"{n_cases} random pairs, beta in {betas}")
    check(
        "loss is ln 2 when policy = reference",
        worst_ln2 < 1e-6,
        f"largest |loss - ln 2| = {worst_ln2:.1e}",
    )
    check("d loss/d logp_chosen < 0 < d loss/d logp_rejected", signs_ok)
    check(
        "gradient is -/+ beta*sigmoid(-beta*h)",
        worst_formula < 1e-6,
        f"largest error {worst_formula:.1e}",
    )

    # Plain gradient descent on the two policy log-probs, from the reference.
    beta, lr = 0.1, 5.0
    steps = 100 if args.quick else 400
    loss, grad = dpo(beta)
    ref = mx.array([-12.0, -10.0])
    policy = ref
    chosen_ratio, rejected_ratio, loss_curve = [], [], []
    for _ in range(steps + 1):
        ratios = (policy - ref).tolist()
        chosen_ratio.append(ratios[0])
        rejected_ratio.append(ratios[1])
        loss_curve.append(loss(policy, ref).item())
        policy = policy - lr * grad(policy, ref)
    print(
        f"descent (beta {beta}, lr {lr}, {steps} steps): chosen log-ratio "
        f"{chosen_ratio[-1]:+.2f}, rejected {rejected_ratio[-1]:+.2f}, "
        f"loss {loss_curve[0]:.4f} -> {loss_curve[-1]:.4f}"
    )
    check(
        "descent raises the chosen log-ratio and lowers the rejected one",
        all(b > a for a, b in zip(chosen_ratio, chosen_ratio[1:], strict=False))
        and all(
            b < a for a, b in zip(rejected_ratio, rejected_ratio[1:], strict=False)
        ),
    )
    check(
        "loss falls from ln 2",
        abs(loss_curve[0] - math.log(2)) < 1e-6
        and loss_curve[-1] < 0.5 * loss_curve[0],
        f"{loss_curve[0]:.4f} -> {loss_curve[-1]:.4f}",
    )

    fig, (left, right) = common.figure(2)
    left.plot(chosen_ratio, label="chosen: log π(y_c) − log π_ref(y_c)")
    left.plot(rejected_ratio, label="rejected: log π(y_r) − log π_ref(y_r)")
    left.set_xlabel("gradient-descent step")
    left.set_title(f"log-ratios under descent on the DPO loss (β={beta})")
    left.legend()
    right.plot(loss_curve)
    right.axhline(math.log(2), color="grey", linewidth=0.8, linestyle=":")
    right.set_xlabel("gradient-descent step")
    right.set_title("DPO loss (starts at ln 2)")
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
