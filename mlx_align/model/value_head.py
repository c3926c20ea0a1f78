"""PPO's critic: an mlx-lm backbone plus a value head read at every token.

As TRL's value model (``AutoModelForSequenceClassification`` with one label,
read at every position rather than the last): final-norm hidden states
(B, T, H) -> a bias-free linear head -> one value per position. The value of
completion token t is read at the position that predicts it, so values line
up with ``FullRows.token_logps``: V_t is the value of the state the policy
was in when it sampled token t.

The critic's adapters live on its inner mlx-lm model, so ``critic/`` of a PPO
run holds plain mlx-lm adapters (``adapters.safetensors`` +
``adapter_config.json``), the head in ``value_head.safetensors`` and
``critic_config.json`` naming the base. ``ActorCritic`` is what the training
loop trains: the policy and the critic side by side, one set of trainable
parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from mlx_align.model.reward_head import (
    ScalarHeadModel,
    load_head_model,
    save_head_model,
)

if TYPE_CHECKING:  # an annotation: batches sit a layer above the model
    from mlx_align.batches.layouts import FullRows

VALUE_HEAD_WEIGHTS = "value_head.safetensors"
CRITIC_CONFIG = "critic_config.json"


class ValueModel(ScalarHeadModel):
    """The backbone of ``lm`` (embeddings, blocks, final norm) + ``head`` (H -> 1, starts at 0)."""

    def __call__(self, tokens: mx.array) -> mx.array:
        """(B, T) ids -> (B, T) float32 values, one per position."""
        hidden = self.hidden(tokens)  # (B, T, H), after the final norm
        return self.head(hidden).squeeze(-1).astype(mx.float32)

    def token_values(self, inputs: FullRows) -> tuple[mx.array, mx.array]:
        """(values, mask), (B, T-1) each, aligned with ``inputs.token_logps``; 0 off the mask."""
        mask = inputs.loss_mask[:, 1:]
        return self(inputs.tokens[:, :-1]) * mask, mask


class ActorCritic(nn.Module):
    """The policy (an mlx-lm model, LoRA or full) and the critic, trained as one module."""

    def __init__(self, policy: nn.Module, critic: ValueModel):
        super().__init__()
        self.policy = policy
        self.critic = critic

    @property
    def layers(self):  # the loop's --grad-checkpoint reaches both backbones
        return [*self.policy.layers, *self.critic.layers]


CRITIC_FILES = (VALUE_HEAD_WEIGHTS, CRITIC_CONFIG)


def save_critic(
    critic: ValueModel, adapters: dict | None, out: Path, *args, **kwargs
) -> Path:
    """``out/``: the critic's mlx-lm adapters (or a full model in ``out/model``), head, config."""
    return save_head_model(critic, adapters, out, CRITIC_FILES, *args, **kwargs)


def load_critic(path: str | Path, base_model: str | None = None) -> ValueModel:
    """A ``save_critic`` directory as a ``ValueModel`` in eval mode."""
    return load_head_model(path, ValueModel, CRITIC_FILES, base_model)[0]
