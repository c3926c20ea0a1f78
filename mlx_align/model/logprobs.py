"""The one place that turns logits into log-probs.

Scoring a prompt once for its group lives in ``shared_prompts.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from mlx_align.model.probes import differs, probe_tokens, probed


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position: (B, T, V), (B, T) -> (B, T), in float32."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


# Logits of up to LOGITS_IN_ONE_PIECE elements (64 MB in float32) are formed
# whole. Larger ones (a large vocabulary: Qwen's 152k tokens take 0.6 MB per
# position, and the softmax and gradient as much again) are formed a chunk of
# positions at a time, forward and backward (bench/logits_memory.py):
# CHUNK_ELEMENTS (4 MB) a chunk, but at least MIN_CHUNK_ROWS positions: every
# chunk reads the whole head weight, and smaller chunks cost more time than
# they save memory (8 chunks of 16 positions made a GRPO step at a 152k
# vocabulary ~30% slower on this CPU; 4 chunks of 32 cost nothing and cut
# its peak by 31%).
LOGITS_IN_ONE_PIECE = 1 << 24
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK_ROWS = 32


def output_layer(model: nn.Module) -> tuple[nn.Module, Callable]:
    """(the module owning the output weights, the function applying them): lm_head, or tied embeddings."""
    if getattr(model, "lm_head", None) is not None:
        return model.lm_head, model.lm_head
    return model.model.embed_tokens, model.model.embed_tokens.as_linear


# A statistic of each position's whole next-token distribution, read off the
# float32 logits, their softmax and logsumexp where the log-probs are formed
# (one exp per logit for both), never differentiated: (N, V) x3 -> (N,).
TokenStat = Callable[[mx.array, mx.array, mx.array], mx.array]


def entropy_stat(logits: mx.array, softmax: mx.array, lse: mx.array) -> mx.array:
    """−Σ p log p = logsumexp − Σ p·logit."""
    return lse - (softmax * logits).sum(axis=-1)


def log_sum_sq_stat(logits: mx.array, softmax: mx.array, lse: mx.array) -> mx.array:
    """log Σ p²: the log-probability that two draws agree (WPO's alignment term)."""
    del logits, lse
    return mx.log((softmax * softmax).sum(axis=-1))


def differentiable_entropy_stat(
    logits: mx.array, softmax: mx.array, lse: mx.array
) -> mx.array:
    """The entropy, differentiated (an entropy bonus trains it): the logits are
    then formed whole, by MLX's autodiff, not the head's fast paths."""
    return entropy_stat(logits, softmax, lse)


DIFFERENTIABLE_STATS = frozenset({differentiable_entropy_stat})


def distribution_stat(logits: mx.array, stat: TokenStat) -> mx.array:
    """``stat`` of softmax(logits) per position, float32: (..., V) -> (...); no
    gradient unless ``stat`` is one of ``DIFFERENTIABLE_STATS``."""
    if stat not in DIFFERENTIABLE_STATS:
        logits = mx.stop_gradient(logits)
    logits = logits.astype(mx.float32)
    lse = mx.logsumexp(logits, axis=-1, keepdims=True)
    return stat(logits, mx.exp(logits - lse), lse[..., 0])


def head_logps(model: nn.Module, hidden: mx.array, targets: mx.array) -> mx.array:
    """log p(target) from the backbone's final hidden states: (..., D), (...) -> (...), float32.

    Equal to ``token_logps(head(hidden), targets)`` (tested, values and
    gradients). When the head is a plain weight matrix (an unquantized
    ``lm_head`` without bias, or tied embeddings) the logits go through
    ``linear_logps``, or above ``LOGITS_IN_ONE_PIECE`` through
    ``chunked_linear_logps``.
    """
    return _head_logps(model, hidden, targets, None)[0]


def head_logps_and_stat(
    model: nn.Module, hidden: mx.array, targets: mx.array, stat: TokenStat
) -> tuple[mx.array, mx.array]:
    """``head_logps`` and ``stat`` of each position's whole next-token
    distribution (no gradient), from the same logits."""
    return _head_logps(model, hidden, targets, stat)


def _head_logps(
    model: nn.Module, hidden: mx.array, targets: mx.array, stat: TokenStat | None
) -> tuple[mx.array, mx.array | None]:
    """``head_logps``, and with ``stat`` that statistic of each position's whole
    next-token distribution (no gradient), from the same logits."""
    owner, head = output_layer(model)
    weight = owner.get("weight")
    # A weight matrix and nothing else: not quantized, no LoRA, no bias.
    plain = type(owner) in (nn.Linear, nn.Embedding) and "bias" not in owner
    n, vocab = targets.size, weight.shape[0]
    if not plain or stat in DIFFERENTIABLE_STATS:
        logits = head(hidden)
        return token_logps(logits, targets), (
            distribution_stat(logits, stat) if stat else None
        )
    flat_hidden, flat_targets = hidden.reshape(n, -1), targets.reshape(n)
    if n * vocab <= LOGITS_IN_ONE_PIECE:
        out = _linear_logps(weight, flat_hidden, flat_targets, stat)
    else:
        rows = chunk_rows(vocab)
        out = _chunked_linear_logps(weight, flat_hidden, flat_targets, rows, stat)
    logps, stats = out
    if stats is not None:
        stats = stats.reshape(targets.shape)
    return logps.reshape(targets.shape), stats


def chunk_rows(vocab: int) -> int:
    """Positions per chunk when logits are formed a chunk at a time."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)


def in_turn(x: mx.array, *previous: list[mx.array]) -> mx.array:
    """``x`` once the last of each ``previous`` list is computed (``mx.depends``):
    chunks one after another, each done with its logits before the next forms its own."""
    last = [p[-1] for p in previous if p]
    return mx.depends([x], last)[0] if last else x


def linear_logps(weight: mx.array, hidden: mx.array, targets: mx.array) -> mx.array:
    """log softmax(hidden @ weight.T)[target] per row, its backward from the forward's softmax.

    (V, D), (N, D), (N,) -> (N,). MLX's own ``logsumexp`` backward computes
    ``exp(logits - lse)`` again: one more ``exp`` per logit, the costliest
    elementwise op on the CPU backend (~20 ns, an add ~0.5 ns). Here the
    forward's normalised exponentials are a second output, kept for the
    backward in place of the logits (the same size), so the backward has no
    ``exp`` at all: d logits = g (onehot - softmax).
    """
    return _linear_logps(weight, hidden, targets, None)[0]


def softmax_parts(
    logits: mx.array, targets: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """(log p(target), softmax, logsumexp) per row of float32 (N, V) logits, one
    ``exp`` per logit; a ``TokenStat`` reads the last two."""
    top = logits.max(axis=-1, keepdims=True)
    exps = mx.exp(logits - top)
    total = exps.sum(axis=-1, keepdims=True)
    lse = top + mx.log(total)
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1)
    return (picked - lse)[:, 0], exps / total, lse[:, 0]


def _linear_logps(
    weight: mx.array,
    hidden: mx.array,
    targets: mx.array,
    stat: TokenStat | None,
) -> tuple[mx.array, mx.array | None]:
    """``linear_logps``, and with ``stat`` each row's statistic from the same
    softmax (a third output whose cotangent the backward drops: no gradient)."""

    @mx.custom_function
    def logps(weight, hidden, targets):
        logits = (hidden @ weight.T).astype(mx.float32)
        picked, softmax, lse = softmax_parts(logits, targets)
        if not stat:
            return picked, softmax
        return picked, softmax, stat(logits, softmax, lse)

    @logps.vjp
    def logps_vjp(primals, cotangents, outputs):
        weight, hidden, targets = primals
        softmax = outputs[1]
        onehot = mx.arange(softmax.shape[-1]) == targets[:, None]
        d_logits = (cotangents[0][:, None] * (onehot - softmax)).astype(weight.dtype)
        # d weight is not evaluated when the head is frozen
        return d_logits.T @ hidden, d_logits @ weight, mx.zeros_like(targets)

    out = logps(weight, hidden, targets)
    return out[0], (out[2] if stat else None)


def chunked_linear_logps(
    weight: mx.array, hidden: mx.array, targets: mx.array, rows: int
) -> mx.array:
    """log softmax(hidden @ weight.T)[target] per row, ``rows`` rows at a time: (V, D), (N, D), (N,) -> (N,).

    A custom VJP forms each chunk's logits again in the backward pass and
    turns them into that chunk's gradients at once: d logits = g (onehot -
    softmax). ``mx.depends`` chains the chunks, forward and backward; MLX
    still runs a few chunks ahead (on the CPU backend about 8-12 chunks'
    logits are alive at once with the chain, twice that without), so the
    saving needs many chunks (``bench/logits_memory.py``).
    """
    return _chunked_linear_logps(weight, hidden, targets, rows, None)[0]


def _chunked_linear_logps(
    weight: mx.array,
    hidden: mx.array,
    targets: mx.array,
    rows: int,
    stat: TokenStat | None,
) -> tuple[mx.array, mx.array | None]:
    """``chunked_linear_logps``, and with ``stat`` each row's statistic from the
    same chunk's logits (a second output whose cotangent the backward drops)."""
    starts = range(0, targets.shape[0], rows)

    @mx.custom_function
    def logps(weight, hidden, targets):
        parts, spreads = [], []
        for i in starts:
            # with a stat, its chunk too: else every chunk's logits wait for it
            logits = in_turn(hidden[i : i + rows], parts, spreads) @ weight.T
            if not stat:
                parts.append(token_logps(logits, targets[i : i + rows]))
                continue
            logits = logits.astype(mx.float32)
            picked, softmax, lse = softmax_parts(logits, targets[i : i + rows])
            parts.append(picked)
            spreads.append(stat(logits, softmax, lse))
        if not stat:
            return mx.concatenate(parts)
        return mx.concatenate(parts), mx.concatenate(spreads)

    @logps.vjp
    def logps_vjp(primals, cotangents, outputs):
        weight, hidden, targets = primals
        cotangent = cotangents[0] if stat else cotangents
        d_hidden, d_weight = [], None
        for i in starts:
            h, g = in_turn(hidden[i : i + rows], d_hidden), cotangent[i : i + rows]
            probs = mx.softmax((h @ weight.T).astype(mx.float32), axis=-1)
            onehot = mx.arange(probs.shape[-1]) == targets[i : i + rows, None]
            d_logits = (g[:, None] * (onehot - probs)).astype(weight.dtype)
            d_hidden.append(d_logits @ weight)
            part = d_logits.T @ h  # (V, D); not evaluated when the head is frozen
            d_weight = part if d_weight is None else d_weight + part
        return d_weight, mx.concatenate(d_hidden), mx.zeros_like(targets)

    out = logps(weight, hidden, targets)
    return (out[0], out[1]) if stat else (out, None)


def sequence_logps(
    model: nn.Module, tokens: mx.array, loss_mask: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """Per-token and summed log-probs of the masked (completion) tokens of a padded batch.

    Args:
        tokens: (B, T) int ids, right-padded. Right padding needs no attention
            mask: a causal model's logits at real positions never see the pad.
        loss_mask: (B, T), 1 where ``tokens[:, t]`` is a scored target.

    Returns:
        ``(per_token, summed, mask)``: per-token log-probs (B, T-1) with zeros
        off the mask, their sum per row (B,), and the shifted mask (B, T-1).
    """
    mask = loss_mask[:, 1:]  # (B, T-1)
    per_token = next_token_logps(model, tokens, None)[0] * mask
    return per_token, per_token.sum(axis=-1), mask


def sequence_logps_and_stat(
    model: nn.Module, tokens: mx.array, loss_mask: mx.array, stat: TokenStat
) -> tuple[mx.array, mx.array, mx.array]:
    """``sequence_logps``'s per-token log-probs and mask, and ``stat`` at each
    scored position (no gradient), all (B, T-1), 0 off the mask."""
    mask = loss_mask[:, 1:]
    per_token, stats = next_token_logps(model, tokens, stat)
    return per_token * mask, mask, stats * mask


def next_token_logps(
    model: nn.Module, tokens: mx.array, stat: TokenStat | None
) -> tuple[mx.array, mx.array | None]:
    """(log p(tokens[:, t+1] | tokens[:, :t+1]), and if asked ``stat`` of that distribution), (B, T-1) each.

    The forward is the one generation runs: through a fresh prompt cache
    where the model computes another function without one (gemma3n's
    KV-shared layers), so the loss trains the model that samples.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if scores_without_cache(model) and splits_head(
        model
    ):  # chunked at a large vocabulary
        return _head_logps(model, model.model(inputs), targets, stat)
    logits = full_logits(model, inputs)
    return token_logps(logits, targets), (
        distribution_stat(logits, stat) if stat else None
    )


def full_logits(model: nn.Module, tokens: mx.array) -> mx.array:
    """(B, T, V) logits of right-padded rows, computed as generation computes them."""
    if scores_without_cache(model):
        return model(tokens)
    return model(tokens, cache=make_prompt_cache(model))


def generation_logps(model: nn.Module, rows: list[list[int]]) -> list[mx.array]:
    """Each row's next-token log-probs as generation computes them: the row alone
    through a fresh mlx-lm prompt cache. (T-1,) per row; the probes' reference."""
    out = []
    for row in rows:
        logits = model(mx.array(row)[None, :-1], cache=make_prompt_cache(model))
        out.append(token_logps(logits, mx.array(row)[None, 1:])[0])
    return out


def vocab_size(model: nn.Module) -> int:
    """The width of ``model``'s logits."""
    return model(mx.array([[0]]), cache=make_prompt_cache(model)).shape[-1]


def _probe_rows(model: nn.Module) -> list[list[int]]:
    return probe_tokens(vocab_size(model), rows=2, length=9)


def probe_scoring(model: nn.Module) -> None:
    """Decide, outside any compiled function, how ``next_token_logps`` runs ``model``."""
    scores_without_cache(model)
    splits_head(model)


def scores_without_cache(model: nn.Module) -> bool:
    """Whether the model's forward without a cache computes what it computes with
    one (not so for gemma3n, whose KV-shared layers share only through a cache)."""

    def check(model):
        try:
            make_prompt_cache(model)
        except AttributeError:  # no mlx-lm model: its plain forward is all there is
            return None
        rows = _probe_rows(model)
        expected = mx.stack(generation_logps(model, rows))
        tokens = mx.array(rows)
        return differs(
            token_logps(model(tokens[:, :-1]), tokens[:, 1:]), expected, model
        )

    return probed(
        model,
        "scoring without a prompt cache",
        check,
        "scoring through a fresh one, as generation does",
    )


def splits_head(model: nn.Module) -> bool:
    """Whether logits are ``output_layer(model)(model.model(x))``, so log-probs can
    be formed from the backbone's hidden states a chunk at a time."""

    def check(model):
        rows = _probe_rows(model)
        expected = mx.stack(generation_logps(model, rows))
        tokens = mx.array(rows)
        hidden = model.model(tokens[:, :-1])
        return differs(head_logps(model, hidden, tokens[:, 1:]), expected, model)

    # Not announced: the fallback (whole logits) is the model's own forward.
    return probed(model, "log-probs from the backbone", check, fallback=None)
