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

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..data.errors import DataError
from ..layouts import FullRows
from .adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    attach_adapters,
    quantize_base,
    save_adapters,
)
from .load import load_model, save_full_model
from .reward_head import ScalarHeadModel

VALUE_HEAD_WEIGHTS = "value_head.safetensors"
CRITIC_CONFIG = "critic_config.json"


class ValueModel(ScalarHeadModel):
    """``lm.model`` (embeddings, blocks, final norm) + ``head`` (H -> 1, starts at 0)."""

    def __call__(self, tokens: mx.array) -> mx.array:
        """(B, T) ids -> (B, T) float32 values, one per position."""
        hidden = self.lm.model(tokens)  # (B, T, H), after the final norm
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


def save_critic(
    critic: ValueModel,
    adapters: dict | None,
    out: Path,
    base_model: str,
    tokenizer,
    model_config: dict,
    quantize: int = 0,
) -> Path:
    """``out/``: the critic's mlx-lm adapters (or a full model in ``out/model``), head, config."""
    out.mkdir(parents=True, exist_ok=True)
    if adapters:
        save_adapters(critic.lm, adapters, out)
    else:
        save_full_model(out / "model", base_model, critic.lm, tokenizer, model_config)
    weights = dict(tree_flatten(critic.head.parameters()))
    mx.save_safetensors(str(out / VALUE_HEAD_WEIGHTS), weights)
    config = {
        "base_model": base_model,
        "fine_tune_type": adapters["fine_tune_type"] if adapters else "full",
        "quantize": quantize,
        "hidden_size": critic.head.weight.shape[1],
    }
    (out / CRITIC_CONFIG).write_text(json.dumps(config, indent=2))
    return out


def load_critic(path: str | Path, base_model: str | None = None) -> ValueModel:
    """A ``save_critic`` directory as a ``ValueModel`` in eval mode."""
    path = Path(path)
    if not (path / CRITIC_CONFIG).exists():
        raise DataError(str(path), 0, f"not a critic: no {CRITIC_CONFIG}")
    config = json.loads((path / CRITIC_CONFIG).read_text())
    if config["fine_tune_type"] == "full":
        lm = load_model(str(path / "model"))[0]
    else:
        lm = load_model(base_model or config["base_model"])[0]
        if config.get("quantize"):
            quantize_base(lm, config["quantize"])
        attach_adapters(lm, json.loads((path / ADAPTER_CONFIG).read_text()))
        lm.load_weights(str(path / ADAPTER_WEIGHTS), strict=False)
    critic = ValueModel(lm, config["hidden_size"])
    critic.head.load_weights(str(path / VALUE_HEAD_WEIGHTS))
    critic.eval()
    mx.eval(critic.parameters())
    return critic
