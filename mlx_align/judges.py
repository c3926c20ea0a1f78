"""Judges: which of two completions of a prompt is better (online DPO, win rates).

A judge takes the prompts' records and one pair of completion texts per
prompt, and returns the preferred index per pair (0 or 1; None when it
cannot tell them apart) with the scores it based that on, if any:

- ``RewardModelJudge``: a reward model from ``mlx-align reward``, higher wins;
- ``RewardJudge``: reward functions with GRPO's signature (a verifiable
  reward such as ``math``, with the dataset's columns), higher wins;
- ``FunctionJudge``: any ``module:function`` with TRL's pairwise-judge
  signature ``judge(prompts, completions) -> list[int]`` (``completions`` a
  list of pairs; -1 for no preference), e.g. a rubric or another model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from .data.jsonl import Record
from .errors import UserError


class Verdicts(NamedTuple):
    """Per pair: the preferred index (None: a tie) and the two scores (None: unscored)."""

    preferred: list[int | None]
    scores: list[tuple[float, float]] | None


Judge = Callable[[Sequence[Record], Sequence[tuple[str, str]]], Verdicts]


def by_score(scores: Sequence[tuple[float, float]]) -> Verdicts:
    """The higher score wins; equal scores tie."""
    preferred = [None if a == b else int(b > a) for a, b in scores]
    return Verdicts(preferred, [tuple(map(float, s)) for s in scores])


class RewardModelJudge:
    """A trained reward model (``mlx-align reward``): scores each completion."""

    def __init__(self, path: str):
        from .model.reward_head import load_reward_model

        self.model, self.tokenizer = load_reward_model(path)

    def __call__(self, records, pairs) -> Verdicts:
        from .train.reward import score

        prompts = [r.fields["prompt"] for r in records for _ in range(2)]
        texts = [text for pair in pairs for text in pair]
        flat = score(self.model, self.tokenizer, prompts, texts)
        return by_score(list(zip(flat[0::2], flat[1::2], strict=True)))


class RewardJudge:
    """Reward functions with GRPO's signature (``rewards.scoring.GroupScorer``)."""

    def __init__(self, specs: Sequence[str], weights: str = ""):
        from .rewards.scoring import GroupScorer

        self.scorer = GroupScorer(specs, weights)

    def __call__(self, records, pairs) -> Verdicts:
        texts = [text for pair in pairs for text in pair]
        rewards, _ = self.scorer(records, 2, texts)
        flat = rewards.tolist()
        return by_score(list(zip(flat[0::2], flat[1::2], strict=True)))


class FunctionJudge:
    """``judge(prompts, completions) -> list[int]``, TRL's pairwise-judge contract."""

    def __init__(self, spec: str):
        from .rewards.registry import resolve_reward

        try:
            self.function = resolve_reward(spec)
        except ValueError as error:
            raise UserError("--judge", str(error)) from None

    def __call__(self, records, pairs) -> Verdicts:
        prompts = [r.fields["prompt"] for r in records]
        picks = self.function(prompts, [list(p) for p in pairs])
        ok = isinstance(picks, list | tuple) and len(picks) == len(pairs)
        if not ok or any(p not in (-1, 0, 1, None) for p in picks):
            raise UserError(
                "--judge",
                f"must return 0, 1 or -1 for each of {len(pairs)} pairs, got {picks!r}",
            )
        return Verdicts([None if p in (-1, None) else int(p) for p in picks], None)


def make_judge(
    reward_model: str, judge: str, reward: Sequence[str], weights: str
) -> Judge:
    """The one judge the flags name (exactly one of the three)."""
    given = [name for name, v in (("--reward-model", reward_model), ("--judge", judge), ("--reward", reward)) if v]  # fmt: skip
    if len(given) != 1:
        raise UserError(
            "--reward-model / --judge / --reward",
            f"name exactly one judge, got {', '.join(given) or 'none'}",
        )
    if reward_model:
        return RewardModelJudge(reward_model)
    if judge:
        return FunctionJudge(judge)
    return RewardJudge(reward, weights)
