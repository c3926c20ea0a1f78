"""Judges: which of two completions of a prompt is better (online DPO, win rates).

A judge takes the prompts' records and one pair of completion texts per
prompt, and returns the preferred index per pair (0 or 1; None when it
cannot tell them apart) with the scores it based that on, if any:

- ``RewardModelJudge``: a reward model from ``mlx-align reward``, higher wins;
- ``RewardJudge``: reward functions with GRPO's signature (a verifiable
  reward such as ``math``, with the dataset's columns), higher wins;
- ``FunctionJudge``: any ``module:function`` with TRL's pairwise-judge
  signature ``judge(prompts, completions) -> list[int]`` (``completions`` a
  list of pairs; -1 for no preference), e.g. a rubric or another model;
- ``llm_judge.LLMPairwiseJudge``: a language model reads both completions
  in TRL's pairwise prompt and names the better one (``--judge-model``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.sampling.verdicts import Verdicts

Judge = Callable[[Sequence[Record], Sequence[tuple[str, str]]], Verdicts]


def by_score(scores: Sequence[tuple[float, float]]) -> Verdicts:
    """The higher score wins; equal scores tie."""
    preferred = [None if a == b else int(b > a) for a, b in scores]
    return Verdicts(preferred, [tuple(map(float, s)) for s in scores])


class RewardModelJudge:
    """A trained reward model (``mlx-align reward``): scores each completion."""

    def __init__(self, path: str):
        from mlx_align.model.reward_head import load_reward_model

        self.model, self.tokenizer = load_reward_model(path)

    def __call__(self, records, pairs) -> Verdicts:
        from mlx_align.sampling.reward_model import score

        prompts = [r.fields["prompt"] for r in records for _ in range(2)]
        texts = [text for pair in pairs for text in pair]
        flat = score(self.model, self.tokenizer, prompts, texts)
        return by_score(list(zip(flat[0::2], flat[1::2], strict=True)))


class RewardJudge:
    """Reward functions with GRPO's signature (``rewards.scoring.GroupScorer``)."""

    def __init__(self, specs: Sequence[str], weights: str = ""):
        from mlx_align.rewards.scoring import GroupScorer

        self.scorer = GroupScorer(specs, weights)

    def __call__(self, records, pairs) -> Verdicts:
        texts = [text for pair in pairs for text in pair]
        rewards, _ = self.scorer(records, 2, texts)
        flat = rewards.tolist()
        return by_score(list(zip(flat[0::2], flat[1::2], strict=True)))


class FunctionJudge:
    """``judge(prompts, completions) -> list[int]``, TRL's pairwise-judge contract."""

    def __init__(self, spec: str):
        from mlx_align.rewards.registry import resolve_reward

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


# The flags that each name a judge, and the config field behind each.
JUDGE_FLAGS = {
    "--reward-model": "reward_model",
    "--judge": "judge",
    "--judge-model": "judge_model",
    "--reward": "reward",
}


def judges_named(config) -> list[str]:
    """The judge flags a config gives (online DPO takes exactly one)."""
    return [flag for flag, field in JUDGE_FLAGS.items() if getattr(config, field)]


def one_judge(config) -> tuple[str, str] | None:
    """(setting, problem) unless the config names exactly one judge, its prompt
    only with ``--judge-model``."""
    named = judges_named(config)
    if len(named) != 1:
        return (
            " / ".join(JUDGE_FLAGS),
            f"name exactly one judge, got {', '.join(named) or 'none'}",
        )
    if config.judge_prompt and not config.judge_model:
        return "--judge-prompt", "is the prompt of --judge-model's LLM judge; name one"
    return None


def make_judge(config, start: Callable[[], tuple] | None = None) -> Judge:
    """The one judge the config names.

    ``start()`` gives ``(model, tokenizer)`` of the starting weights, which
    judge when ``--judge-model`` names the ``--model`` itself.
    """
    clash = one_judge(config)  # build_config ran it; a config built in code may not
    if clash:
        raise UserError(*clash)
    if config.reward_model:
        return RewardModelJudge(config.reward_model)
    if config.judge:
        return FunctionJudge(config.judge)
    if config.judge_model:
        from mlx_align.model.load import load_model, same_model
        from mlx_align.sampling.llm_judge import LLMPairwiseJudge, read_prompt_template

        template = read_prompt_template(config.judge_prompt)
        if start is not None and same_model(config.judge_model, config.model):
            model, tokenizer = start()
        else:
            model, tokenizer, _ = load_model(config.judge_model, "--judge-model")
            model.freeze()
        return LLMPairwiseJudge(model, tokenizer, template, seed=config.seed)
    return RewardJudge(config.reward, config.reward_weights)
