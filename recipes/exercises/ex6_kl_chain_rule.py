"""Exercise 6: per-token KLs sum to the sequence-level KL (the chain rule), by exact enumeration.

Two autoregressive distributions p and q over sequences of T tokens from a
vocabulary of V, each a random table of next-token distributions, one per
prefix. Enumerating all V^T sequences gives the sequence-level
    KL(p ‖ q) = Σ_y p(y) log p(y)/q(y),
and the per-token sum is
    Σ_t E_{y<t ~ p} KL(p(·|y<t) ‖ q(·|y<t)) = Σ_t Σ_{y<t} p(y<t) KL_t(y<t).
They agree to float64 rounding, for every random pair. The weight p(y<t)
matters: averaging the same per-prefix KLs uniformly over prefixes does not
give the sequence KL (the negative control). Sampled sequences y ~ p estimate
it without enumeration: Σ_t KL_t(y<t) along each sample (what exercises 5
and 7 measure on the tiny models), or log p(y)/q(y), whose spread is larger.
Plot: each position's share of the sequence KL, and both estimators against
the number of samples.
"""

from __future__ import annotations

import itertools

import exercise_common as common
import numpy as np

NAME = "ex6_kl_chain_rule"


def random_pair(vocab: int, length: int, rng: np.random.Generator):
    """p, q as {prefix tuple: next-token distribution (V,)}; q is p with noisy logits."""
    p, q = {}, {}
    for t in range(length):
        for prefix in itertools.product(range(vocab), repeat=t):
            logits = rng.normal(0.0, 1.5, vocab)
            p[prefix] = softmax(logits)
            q[prefix] = softmax(logits + rng.normal(0.0, 0.7, vocab))
    return p, q


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def log_prob(table, sequence) -> float:
    return float(sum(np.log(table[sequence[:t]][y]) for t, y in enumerate(sequence)))


def kl(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * (np.log(a) - np.log(b))))


def sequence_kl(p, q, vocab: int, length: int) -> float:
    """Σ over all V^T sequences of p(y) log p(y)/q(y)."""
    total = 0.0
    for y in itertools.product(range(vocab), repeat=length):
        lp, lq = log_prob(p, y), log_prob(q, y)
        total += np.exp(lp) * (lp - lq)
    return total


def per_token_kls(p, q, vocab: int, length: int, weighted: bool = True) -> list[float]:
    """Position t's term Σ_{y<t} w(y<t) KL(p(·|y<t) ‖ q(·|y<t)); w = p(y<t), or uniform."""
    terms = []
    for t in range(length):
        prefixes = list(itertools.product(range(vocab), repeat=t))
        weights = [
            np.exp(log_prob(p, y)) if weighted else 1.0 / len(prefixes)
            for y in prefixes
        ]
        terms.append(
            sum(w * kl(p[y], q[y]) for w, y in zip(weights, prefixes, strict=True))
        )
    return terms


def sample(p, length: int, rng: np.random.Generator) -> tuple:
    y = ()
    for _ in range(length):
        dist = p[y]
        y = (*y, int(rng.choice(len(dist), p=dist)))
    return y


def main(argv=None) -> int:
    args = common.parse_args(NAME, __doc__, argv)
    check = common.Checks(NAME)
    vocab, length, n_pairs = (3, 3, 5) if args.quick else (4, 6, 20)
    n_samples = 400 if args.quick else 4000
    rng = np.random.default_rng(args.seed)

    worst, control_gaps, shown = 0.0, [], None
    for i in range(n_pairs):
        p, q = random_pair(vocab, length, rng)
        exact = sequence_kl(p, q, vocab, length)
        terms = per_token_kls(p, q, vocab, length)
        uniform = sum(per_token_kls(p, q, vocab, length, weighted=False))
        worst = max(worst, abs(sum(terms) - exact) / exact)
        control_gaps.append(abs(uniform - exact) / exact)
        if i == 0:
            shown = (p, q, exact, terms, uniform)
            print(
                f"pair 0: sequence KL {exact:.10f}, sum of per-token KLs "
                f"{sum(terms):.10f}, uniform-weighted {uniform:.6f}"
            )
    print(
        f"{n_pairs} random pairs, V={vocab}, T={length} ({vocab**length} sequences each)"
    )
    check(
        "sum over t of E_p KL(p(.|y<t) || q(.|y<t)) = sequence KL",
        worst < 1e-10,
        f"largest relative difference {worst:.1e}",
    )
    check(
        "negative control: uniform prefix weights do not give it",
        min(control_gaps) > 1e-6,
        f"relative difference {min(control_gaps):.1e} to {max(control_gaps):.1e}",
    )

    # Monte-Carlo from sequences sampled from p, for pair 0.
    p, q, exact, terms, uniform = shown
    samples = [sample(p, length, rng) for _ in range(n_samples)]
    chain = np.array(
        [sum(kl(p[y[:t]], q[y[:t]]) for t in range(length)) for y in samples]
    )
    ratio = np.array([log_prob(p, y) - log_prob(q, y) for y in samples])
    counts = np.arange(1, n_samples + 1)
    chain_mean, ratio_mean = np.cumsum(chain) / counts, np.cumsum(ratio) / counts
    se = chain.std() / np.sqrt(n_samples)
    print(
        f"{n_samples} samples: per-token estimator {chain_mean[-1]:.4f} "
        f"(std {chain.std():.3f}), log-ratio estimator {ratio_mean[-1]:.4f} "
        f"(std {ratio.std():.3f}), exact {exact:.4f}"
    )
    check(
        "sampled per-token estimate within 4 standard errors of the exact KL",
        abs(chain_mean[-1] - exact) < 4 * se,
        f"{chain_mean[-1]:.4f} vs {exact:.4f} (se {se:.4f})",
    )

    fig, (left, right) = common.figure(2)
    positions = np.arange(length)
    left.bar(positions, terms, label="E_p KL at position t")
    left.plot(positions, np.cumsum(terms), "o-", color="C1", label="running sum")
    left.axhline(exact, color="C3", linestyle="--", label=f"sequence KL {exact:.4f}")
    left.axhline(uniform, color="grey", linestyle=":", label="uniform-weighted sum")
    left.set_xlabel("position t")
    left.set_title(f"chain rule, V={vocab}, T={length} (exact)")
    left.legend(fontsize=8)
    right.plot(counts, chain_mean, label="Σ_t KL_t along y ~ p")
    right.plot(counts, ratio_mean, label="log p(y)/q(y), y ~ p", alpha=0.8)
    right.axhline(exact, color="C3", linestyle="--", label="exact")
    right.set_xscale("log")
    right.set_xlabel("samples")
    right.set_title("sampled estimates of the sequence KL")
    right.legend(fontsize=8)
    common.save_figure(fig, args.plot)
    return check.exit_code()


if __name__ == "__main__":
    common.main_guard(main)
