"""The one place that turns logits into log-probs."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn


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


def head_logps(model: nn.Module, hidden: mx.array, targets: mx.array) -> mx.array:
    """log p(target) from the backbone's final hidden states: (..., D), (...) -> (...), float32.

    Equal to ``token_logps(head(hidden), targets)`` (tested, values and
    gradients). When the head is a plain weight matrix (an unquantized
    ``lm_head`` without bias, or tied embeddings) the logits go through
    ``linear_logps``, or above ``LOGITS_IN_ONE_PIECE`` through
    ``chunked_linear_logps``.
    """
    return _head_logps(model, hidden, targets, entropy=False)[0]


def _head_logps(
    model: nn.Module, hidden: mx.array, targets: mx.array, entropy: bool
) -> tuple[mx.array, mx.array | None]:
    """``head_logps``, and with ``entropy`` the entropy of each position's whole
    next-token distribution (no gradient), from the same logits where they are
    formed whole."""
    owner, head = output_layer(model)
    weight = owner.get("weight")
    # A weight matrix and nothing else: not quantized, no LoRA, no bias.
    plain = type(owner) in (nn.Linear, nn.Embedding) and "bias" not in owner
    n, vocab = targets.size, weight.shape[0]
    if not plain:
        logits = head(hidden)
        return token_logps(logits, targets), (
            token_entropy(logits) if entropy else None
        )
    flat_hidden, flat_targets = hidden.reshape(n, -1), targets.reshape(n)
    if n * vocab <= LOGITS_IN_ONE_PIECE:
        out = _linear_logps(weight, flat_hidden, flat_targets, entropy)
    else:
        rows = chunk_rows(vocab)
        out = _chunked_linear_logps(weight, flat_hidden, flat_targets, rows, entropy)
    logps, entropies = out
    if entropies is not None:
        entropies = entropies.reshape(targets.shape)
    return logps.reshape(targets.shape), entropies


def chunk_rows(vocab: int) -> int:
    """Positions per chunk when logits are formed a chunk at a time."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)


def in_turn(x: mx.array, previous: list[mx.array]) -> mx.array:
    """``x`` once the last of ``previous`` is computed (``mx.depends``): chunks one after another."""
    return mx.depends([x], [previous[-1]])[0] if previous else x


def linear_logps(weight: mx.array, hidden: mx.array, targets: mx.array) -> mx.array:
    """log softmax(hidden @ weight.T)[target] per row, its backward from the forward's softmax.

    (V, D), (N, D), (N,) -> (N,). MLX's own ``logsumexp`` backward computes
    ``exp(logits - lse)`` again: one more ``exp`` per logit, the costliest
    elementwise op on the CPU backend (~20 ns, an add ~0.5 ns). Here the
    forward's normalised exponentials are a second output, kept for the
    backward in place of the logits (the same size), so the backward has no
    ``exp`` at all: d logits = g (onehot - softmax).
    """
    return _linear_logps(weight, hidden, targets, entropy=False)[0]


def softmax_parts(
    logits: mx.array, targets: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """(log p(target), softmax, logsumexp) per row of float32 (N, V) logits, one ``exp`` per logit.

    The entropy is then ``logsumexp - (softmax * logits).sum(-1)``.
    """
    top = logits.max(axis=-1, keepdims=True)
    exps = mx.exp(logits - top)
    total = exps.sum(axis=-1, keepdims=True)
    lse = top + mx.log(total)
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1)
    return (picked - lse)[:, 0], exps / total, lse[:, 0]


def _linear_logps(
    weight: mx.array, hidden: mx.array, targets: mx.array, entropy: bool
) -> tuple[mx.array, mx.array | None]:
    """``linear_logps``, and with ``entropy`` each row's −Σ p log p from the same
    softmax (a third output whose cotangent the backward drops: no gradient)."""

    @mx.custom_function
    def logps(weight, hidden, targets):
        logits = (hidden @ weight.T).astype(mx.float32)
        picked, softmax, lse = softmax_parts(logits, targets)
        if not entropy:
            return picked, softmax
        return picked, softmax, lse - (softmax * logits).sum(axis=-1)

    @logps.vjp
    def logps_vjp(primals, cotangents, outputs):
        weight, hidden, targets = primals
        softmax = outputs[1]
        onehot = mx.arange(softmax.shape[-1]) == targets[:, None]
        d_logits = (cotangents[0][:, None] * (onehot - softmax)).astype(weight.dtype)
        # d weight is not evaluated when the head is frozen
        return d_logits.T @ hidden, d_logits @ weight, mx.zeros_like(targets)

    out = logps(weight, hidden, targets)
    return out[0], (out[2] if entropy else None)


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
    return _chunked_linear_logps(weight, hidden, targets, rows, entropy=False)[0]


def _chunked_linear_logps(
    weight: mx.array, hidden: mx.array, targets: mx.array, rows: int, entropy: bool
) -> tuple[mx.array, mx.array | None]:
    """``chunked_linear_logps``, and with ``entropy`` each row's −Σ p log p from
    the same chunk's logits (a second output whose cotangent the backward drops)."""
    starts = range(0, targets.shape[0], rows)

    @mx.custom_function
    def logps(weight, hidden, targets):
        parts, spreads = [], []
        for i in starts:
            logits = in_turn(hidden[i : i + rows], parts) @ weight.T
            if not entropy:
                parts.append(token_logps(logits, targets[i : i + rows]))
                continue
            logits = logits.astype(mx.float32)
            picked, softmax, lse = softmax_parts(logits, targets[i : i + rows])
            parts.append(picked)
            spreads.append(lse - (softmax * logits).sum(axis=-1))
        if not entropy:
            return mx.concatenate(parts)
        return mx.concatenate(parts), mx.concatenate(spreads)

    @logps.vjp
    def logps_vjp(primals, cotangents, outputs):
        weight, hidden, targets = primals
        cotangent = cotangents[0] if entropy else cotangents
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
    return (out[0], out[1]) if entropy else (out, None)


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
    per_token = next_token_logps(model, tokens, entropy=False)[0] * mask
    return per_token, per_token.sum(axis=-1), mask


def sequence_logps_and_entropy(
    model: nn.Module, tokens: mx.array, loss_mask: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """``sequence_logps``'s per-token log-probs and mask, and the entropy of the model's
    whole next-token distribution at each scored position (no gradient), all (B, T-1), 0 off the mask."""
    mask = loss_mask[:, 1:]
    per_token, entropy = next_token_logps(model, tokens, entropy=True)
    return per_token * mask, mask, entropy * mask


def next_token_logps(
    model: nn.Module, tokens: mx.array, entropy: bool
) -> tuple[mx.array, mx.array | None]:
    """(log p(tokens[:, t+1] | tokens[:, :t+1]), and if asked the entropy of that distribution), (B, T-1) each."""
    targets = tokens[:, 1:]
    if supports_shared_prompts(model):  # llama family: logits = head(backbone)
        return _head_logps(model, model.model(tokens[:, :-1]), targets, entropy)
    logits = model(tokens[:, :-1])
    return token_logps(logits, targets), (token_entropy(logits) if entropy else None)


def token_entropy(logits: mx.array) -> mx.array:
    """−Σ p log p of softmax(logits) per position, float32, no gradient: (..., V) -> (...)."""
    logits = mx.stop_gradient(logits).astype(mx.float32)
    lse = mx.logsumexp(logits, axis=-1, keepdims=True)
    probs = mx.exp(logits - lse)
    return lse[..., 0] - (probs * logits).sum(axis=-1)


class _PromptCache:
    """Stands in for a KV cache while the prompts run: keeps each layer's keys/values
    (with their gradient) and masks left padding."""

    def __init__(self, key_is_real: mx.array):
        self.offset, self.key_is_real = 0, key_is_real  # (P, Lp) bool

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))
        allowed = causal[None] & self.key_is_real[:, None, :]  # (P, Lp, Lp)
        return (allowed | mx.eye(n, dtype=mx.bool_)[None])[
            :, None
        ]  # a pad query sees itself

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values
        return keys, values


class _PrefixCache:
    """The completions' view: each prompt's keys/values repeated G times, then their own."""

    def __init__(self, prompt: _PromptCache, group_size: int):
        self.offset = prompt.keys.shape[2]
        self.keys = mx.repeat(prompt.keys, group_size, axis=0)
        self.values = mx.repeat(prompt.values, group_size, axis=0)
        self.prompt_is_real = mx.repeat(
            prompt.key_is_real, group_size, axis=0
        )  # (N, Lp)

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))
        prompt = mx.broadcast_to(
            self.prompt_is_real[:, None, :],
            (self.prompt_is_real.shape[0], n, self.offset),
        )
        own = mx.broadcast_to(causal[None], (prompt.shape[0], n, n))
        return mx.concatenate([prompt, own], axis=-1)[:, None]  # (N, 1, n, Lp + n)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate(
            [self.values, values], axis=2
        )


def supports_shared_prompts(model: nn.Module) -> bool:
    """mlx-lm llama-family models: a ``.model`` backbone that takes a per-layer cache."""
    backbone = getattr(model, "model", None)
    return getattr(model, "model_type", None) in SHARED_PROMPT_MODELS and hasattr(
        backbone, "layers"
    )


SHARED_PROMPT_MODELS = {"llama", "mistral", "qwen2", "qwen3"}


def grouped_completion_logps(
    model: nn.Module,
    prompts: mx.array,
    prompt_mask: mx.array,
    completions: mx.array,
    completion_mask: mx.array,
) -> mx.array:
    """Per-token log-probs of G completions per prompt, each prompt run through the model ONCE.

    The prompt's keys and values (kept with their gradient) are repeated for
    its G completions, which attend to them like a KV cache; logits are
    formed only at completion positions. Equal to scoring every
    prompt + completion row in full (tested), at a fraction of the compute
    and memory when prompts are long.

    Args:
        prompts: (P, Lp) ids, LEFT-padded so every prompt ends at Lp - 1.
        prompt_mask: (P, Lp), 1 on real prompt tokens.
        completions: (P*G, C) ids, right-padded; rows of one prompt contiguous.
        completion_mask: (P*G, C), 1 on real completion tokens.

    Returns:
        (P*G, C) log-probs, 0 off the mask.
    """
    group_size = completions.shape[0] // prompts.shape[0]
    backbone = model.model
    prompt_caches = [
        _PromptCache(prompt_mask.astype(mx.bool_)) for _ in backbone.layers
    ]
    prompt_hidden = backbone(prompts, cache=prompt_caches)  # (P, Lp, D)
    hidden = mx.repeat(prompt_hidden[:, -1:], group_size, axis=0)  # predicts token 0
    if completions.shape[1] > 1:
        prefix = [_PrefixCache(c, group_size) for c in prompt_caches]
        rest = backbone(completions[:, :-1], cache=prefix)  # (N, C-1, D)
        hidden = mx.concatenate([hidden, rest], axis=1)
    return head_logps(model, hidden, completions) * completion_mask  # (N, C)
