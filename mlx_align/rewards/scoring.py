"""Scoring sampled groups with several reward functions, TRL's way."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.losses.advantages import combine_rewards
from mlx_align.rewards.registry import resolve_reward


class GroupScorer:
    """The ``--reward`` functions, weighted by ``--reward-weights``, applied to
    G completions of each prompt with the prompt's dataset columns."""

    def __init__(self, specs: Sequence[str], weights: str = ""):
        self.functions = [resolve_reward(spec) for spec in specs]
        self.names = [spec.rsplit(":", 1)[-1] for spec in specs]
        values = [float(w) for w in weights.split(",") if w.strip()]
        if values and len(values) != len(self.functions):
            raise UserError(
                "--reward-weights",
                f"{len(values)} weights for {len(self.functions)} reward functions",
            )
        self.weights = values or None

    @property
    def metric_names(self) -> list[str]:
        """The per-function metrics ``__call__`` returns besides ``reward`` and ``reward_std``."""
        return [f"rewards/{n}/{s}" for n in self.names for s in ("mean", "std")]

    def __call__(
        self, records: Sequence[Record], group_size: int, completions: Sequence[str]
    ) -> tuple[mx.array, dict[str, float]]:
        """Rewards (N,) of ``completions`` (G per record, consecutive) and their metrics."""
        return self.combine(self.per_function(records, group_size, completions))

    def combine(
        self, per_function: list[list[float | None]]
    ) -> tuple[mx.array, dict[str, float]]:
        """The weighted sum of ``per_function`` rewards, and their metrics."""
        return combine_rewards(per_function, self.weights, self.names)

    def per_function(
        self,
        records: Sequence[Record],
        group_size: int,
        completions: Sequence[str],
        extra: dict[str, list] | None = None,
    ) -> list[list[float | None]]:
        """Each function's rewards of ``completions``, F lists of N (None: missing).

        Each function gets TRL's arguments: ``prompts``, ``completions`` and
        every other column of the records, one entry per completion, and the
        ``extra`` columns (e.g. ``environments``), one entry per completion too.
        """
        rows = [r for r in records for _ in range(group_size)]
        columns = {
            key: [r.fields.get(key) for r in rows]
            for key in records[0].fields
            if key != "prompt"
        }
        columns |= extra or {}
        prompts = [r.fields["prompt"] for r in rows]
        return [fn(prompts, list(completions), **columns) for fn in self.functions]
