"""Verifiable math reward: extract the final answer, judge it with math-verify.

Normalisation rule, in order:
1. The answer is the content of the last ``\\boxed{...}`` (balanced braces),
   else the number after the last ``#### `` (GSM8K), else the content of the
   last ``<answer>...</answer>``, else the last number in the text. Thousands
   separators are dropped from numbers ("1,234" -> "1234"), as nanochat's
   GSM8K task does.
2. The reference answer goes through rule 1 only where it carries one of those
   markers (a full GSM8K or MATH solution); a bare reference ("63/400",
   "\\frac{1}{2}") is used whole.
3. Both strings are parsed by math-verify (``parse``) and compared with
   ``verify(gold, prediction)``: numeric equality to 6 decimals or symbolic
   equality in sympy, so "63/400", "\\frac{63}{400}" and "0.1575" agree. A
   string with a LaTeX command but no ``$`` is wrapped in ``$...$`` first,
   since math-verify reads bare "2\\pi" as 2.
"""

import re
import threading
from collections.abc import Sequence
from typing import Any

from math_verify import parse, verify

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_GSM8K_RE = re.compile(rf"####\s*\$?\s*({_NUMBER})")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"

_TIMEOUT_SECONDS = 5


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, matching nested braces."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 1
    content_start = start + len(_BOXED)
    for i in range(content_start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[content_start:i].strip()
    return None  # unbalanced


def _marked_answer(text: str) -> str | None:
    """An answer flagged by ``\\boxed``, ``####`` or ``<answer>``, in that order."""
    if (boxed := _last_boxed(text)) is not None:
        return boxed
    if gsm8k := _GSM8K_RE.findall(text):
        return gsm8k[-1].replace(",", "")
    if tagged := _ANSWER_TAG_RE.findall(text):
        return tagged[-1].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (rule 1 of the module docstring), or None."""
    if (marked := _marked_answer(text)) is not None:
        return marked
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _timeout() -> int | None:
    """math-verify times out with signal.alarm, which raises off the main
    thread; there (e.g. a reward thread pool) run without a timeout."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    return _TIMEOUT_SECONDS if on_main_thread else None


def _parse_math(answer: str) -> list:
    """math-verify parse of one answer string; [] when nothing parses."""
    if "\\" in answer and "$" not in answer:
        answer = f"${answer}$"
    return parse(answer, fallback_mode="no_fallback", parsing_timeout=_timeout())


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """Text of a completion: a string, or TRL's conversational form (the last
    message's ``content``)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def judge_answer(completion: str, reference: str) -> float | None:
    """1.0 if the completion's final answer equals the reference, else 0.0;
    None when the reference itself cannot be parsed."""
    reference = str(reference)
    gold = _parse_math(_marked_answer(reference) or reference)
    if not gold:
        return None
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    prediction = _parse_math(answer)
    if not prediction:
        return 0.0
    return float(verify(gold, prediction, timeout_seconds=_timeout()))


def math_reward(
    prompts: Sequence[Any],
    completions: Sequence[str | list[dict[str, Any]]],
    answer: Sequence[str] | None = None,
    solution: Sequence[str] | None = None,
    **columns: Any,
) -> list[float | None]:
    """Accuracy reward for math answers (TRL reward-function signature).

    The reference comes from the ``answer`` column, else ``solution``. Each
    completion scores 1.0 when equivalent to its reference under the module's
    normalisation rule, 0.0 otherwise (including no answer found), and None
    when the reference cannot be parsed, so the sample is left out as in TRL.
    """
    references = answer if answer is not None else solution
    if references is None:
        raise ValueError("math_reward needs an `answer` or `solution` column")
    return [
        judge_answer(completion_text(completion), reference)
        for completion, reference in zip(completions, references, strict=True)
    ]
