"""How a batch of completions reaches the model: three named layouts.

- ``FullRows``: every prompt + completion as its own right-padded row. Any model.
- ``SharedPrompt``: each prompt once (left-padded) and its completions
  (right-padded) attending to it like a KV cache. Models whose every layer
  is attention (``model/shared_prompts.py``: probed per model).
- ``Packed``: prompts and completions end to end in a few rows, no padding
  (``packing.py``). Those of them whose RoPE is a plain rope call (probed).

A batch holds ``n`` completions. Each layout knows how many token positions
it runs (``padded_tokens``), the widths that fix its compiled shape
(``widths``), and the completions' log-probs (``logps``), always in *slot
order*: completion k of every prompt, then completion k + 1. For preference
pairs that is every chosen completion, then every rejected one, whatever the
layout; for a GRPO group it is the row order of ``token_logps``.

The layouts are NamedTuples, so MLX treats them as trees of arrays:
``mx.compile`` and ``nn.value_and_grad`` pass them through with their type
(``tests/test_layouts.py``), and a stage's batch names them as one field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_align.batches.packing import (
    enable_packing,
    packed_completion_logps,
    packed_target_logps,
    supports_packing,
)
from mlx_align.batches.planning import pad_examples
from mlx_align.data.tokenize import Encoded
from mlx_align.model.logprobs import (
    TokenStat,
    differentiable_entropy_stat,
    entropy_stat,
    sequence_logps,
    sequence_logps_and_stat,
)
from mlx_align.model.shared_prompts import (
    grouped_completion_logps,
    supports_shared_prompts,
)


class FullRows(NamedTuple):
    """(n, T) right-padded prompt + completion rows; ``loss_mask`` 1 on completion targets."""

    tokens: mx.array
    loss_mask: mx.array

    @classmethod
    def pad(
        cls,
        examples: Sequence[Encoded],
        rows: int,
        buckets: Sequence[int],
        pad_id: int,
        width: int | None = None,
    ) -> FullRows:
        """``examples`` in ``rows`` rows (empty filler rows after them), see ``pad_examples``."""
        return cls(*pad_examples(examples, rows, buckets, pad_id, width))

    @property
    def padded_tokens(self) -> int:
        return self.tokens.size

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.tokens.shape[1],)

    def token_logps(self, model: nn.Module) -> tuple[mx.array, mx.array]:
        """(per-token log-probs, mask), (n, T-1) each, 0 off the completions."""
        per_token, _, mask = sequence_logps(model, self.tokens, self.loss_mask)
        return per_token, mask

    def token_logps_and_entropy(
        self, model: nn.Module, differentiable: bool = False
    ) -> tuple[mx.array, mx.array, mx.array]:
        """``token_logps`` and the entropy of each scored position's whole next-token
        distribution (PPO's ``policy/entropy_avg``), (n, T-1) each; no gradient
        unless ``differentiable`` (an entropy bonus)."""
        stat = differentiable_entropy_stat if differentiable else entropy_stat
        return sequence_logps_and_stat(model, self.tokens, self.loss_mask, stat)

    def logps(self, model: nn.Module) -> tuple[mx.array, mx.array]:
        """(summed log-probs, completion lengths), (n,) each, in row order."""
        _, summed, mask = sequence_logps(model, self.tokens, self.loss_mask)
        return summed, mask.sum(axis=-1)


class SharedPrompt(NamedTuple):
    """P left-padded prompts (P, Lp) and their G completions each (P*G, C), right-padded.

    The completions of one prompt are consecutive rows, so row r is
    completion ``r % G`` of prompt ``r // G``.
    """

    prompts: mx.array
    prompt_mask: mx.array
    completions: mx.array
    completion_mask: mx.array

    @classmethod
    def pad(
        cls,
        prompts: Sequence[list[int]],
        completions: Sequence[list[int]],
        rows: int,
        pad_id: int,
        widths: tuple[int, int],
    ) -> SharedPrompt:
        """``prompts`` and their completions (``len(completions) // len(prompts)`` each,
        consecutive) in ``rows`` prompt rows, filler rows empty; ``widths`` = (Lp, C)."""
        group = len(completions) // len(prompts)
        width, limit = widths
        prompt_ids = np.full((rows, width), pad_id, dtype=np.int32)
        prompt_mask = np.zeros((rows, width), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            prompt_ids[row, width - len(prompt) :] = prompt
            prompt_mask[row, width - len(prompt) :] = 1.0
        completion_ids = np.full((rows * group, limit), pad_id, dtype=np.int32)
        completion_mask = np.zeros((rows * group, limit), dtype=np.float32)
        for row, tokens in enumerate(completions):
            completion_ids[row, : len(tokens)] = tokens
            completion_mask[row, : len(tokens)] = 1.0
        arrays = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        return cls(*(mx.array(a) for a in arrays))

    @property
    def group_size(self) -> int:
        return self.completions.shape[0] // self.prompts.shape[0]

    @property
    def padded_tokens(self) -> int:
        return self.prompts.size + self.completions.size

    @property
    def widths(self) -> tuple[int, ...]:
        return self.prompts.shape[1], self.completions.shape[1]

    def token_logps(self, model: nn.Module) -> tuple[mx.array, mx.array]:
        """(per-token log-probs, mask), (P*G, C) each, in row order; each prompt runs once."""
        per_token = grouped_completion_logps(model, *self)
        return per_token, self.completion_mask

    def token_logps_and_entropy(
        self, model: nn.Module, differentiable: bool = False
    ) -> tuple[mx.array, mx.array, mx.array]:
        """``token_logps`` and each scored position's entropy, as ``FullRows``'."""
        stat = differentiable_entropy_stat if differentiable else entropy_stat
        per_token, entropy = grouped_completion_logps(model, *self, stat=stat)
        return per_token, self.completion_mask, entropy

    def logps(self, model: nn.Module) -> tuple[mx.array, mx.array]:
        """(summed log-probs, completion lengths), (P*G,) each, in slot order."""
        summed = grouped_completion_logps(model, *self).sum(axis=-1)
        lengths = self.completion_mask.sum(axis=-1)
        return self.slot_order(summed), self.slot_order(lengths)

    def slot_order(self, rows: mx.array) -> mx.array:
        """Row r = (prompt p, completion k) -> slot k*P + p."""
        group = self.group_size
        return mx.concatenate([rows[k::group] for k in range(group)])


class Packed(NamedTuple):
    """Prompts and completions packed without padding: see ``packing.pack_trees``."""

    tokens: mx.array
    positions: mx.array
    tree_ids: mx.array
    branches: mx.array
    sources: mx.array
    targets: mx.array
    membership: mx.array

    @property
    def padded_tokens(self) -> int:
        return self.tokens.size

    @property
    def widths(self) -> tuple[int, ...]:
        """None: a packed batch is packed anew, never to another batch's shape."""
        return ()

    def logps(self, model: nn.Module) -> tuple[mx.array, mx.array]:
        """(summed log-probs, completion lengths) per slot, (n_slots,) each."""
        return packed_completion_logps(model, self)


Layout = FullRows | SharedPrompt | Packed


def pair_token_logps(
    inputs: Layout, model: nn.Module, stat: TokenStat | None = None
) -> tuple[mx.array, mx.array, mx.array | None]:
    """Per-token log-probs, mask, and with ``stat`` that statistic of each
    position's distribution (no gradient; else None), of 2B pair completions
    in slot order (chosen first), (2B, L) each, 0 off the completions."""
    if isinstance(inputs, Packed):
        targets, mask, stats = packed_target_logps(model, inputs, stat)  # (S, T)
        spread = lambda per_target: mask * per_target[None, :]  # noqa: E731
        return spread(targets), mask, stats if stats is None else spread(stats)
    if isinstance(inputs, SharedPrompt):
        out = grouped_completion_logps(model, *inputs, stat=stat)
        per_token, stats = out if stat else (out, None)
        order = inputs.slot_order
        return order(per_token), order(inputs.completion_mask), stats if stats is None else order(stats)  # fmt: skip
    if stat:
        return sequence_logps_and_stat(model, inputs.tokens, inputs.loss_mask, stat)
    per_token, _, mask = sequence_logps(model, inputs.tokens, inputs.loss_mask)
    return per_token, mask, None


def ld_sums(per_token: mx.array, mask: mx.array, ld_alpha: float) -> mx.array:
    """Summed log-probs of 2B pair completions (slot order), each token past the
    pair's shared length weighted by ``ld_alpha``, (2B,).

    LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference
    Optimization", eq. 9), as TRL's ``ld_alpha``: of two completions of
    lengths l_c and l_r, the first min(l_c, l_r) tokens count fully, the
    longer one's rest α times. α = 1 is the plain sum.
    """
    mask = mask.astype(per_token.dtype)
    if ld_alpha == 1.0:
        return (per_token * mask).sum(axis=-1)
    lengths = mask.sum(axis=-1)  # (2B,)
    shared = mx.tile(mx.minimum(*mx.split(lengths, 2)), 2)  # (2B,)
    position = mx.cumsum(mask, axis=-1) * mask  # 1-based, 0 off the completion
    weights = mx.where(position <= shared[:, None], 1.0, ld_alpha) * mask
    return (per_token * weights).sum(axis=-1)


def pair_logps(
    inputs: Layout, model: nn.Module, ld_alpha: float = 1.0
) -> tuple[mx.array, mx.array]:
    """(summed log-probs, lengths) of 2B pair completions in slot order, LD-DPO-
    weighted past each pair's shared length (``ld_sums``); α = 1 is
    ``inputs.logps``."""
    if ld_alpha == 1.0:
        return inputs.logps(model)
    per_token, mask, _ = pair_token_logps(inputs, model)
    return ld_sums(per_token, mask, ld_alpha), mask.sum(axis=-1)


LAYOUTS: dict[str, type] = {"full": FullRows, "shared": SharedPrompt, "packed": Packed}


def width_of(inputs: Layout) -> int:
    """Token positions one row of ``inputs`` spans: T, Lp + C, or a packed row's width."""
    return sum(inputs.widths) or inputs.tokens.shape[1]


def choose_layout(padding_free: bool, *models: nn.Module | None) -> str:
    """How batches reach ``models`` (names of ``LAYOUTS``): ``packed`` with
    ``padding_free``, else ``shared``, when every model allows it; else ``full``."""
    models = tuple(m for m in models if m is not None)
    if padding_free and all(map(supports_packing, models)):
        for model in models:
            enable_packing(model)  # before any compiled trace sees the model
        return "packed"
    return "shared" if all(map(supports_shared_prompts, models)) else "full"
