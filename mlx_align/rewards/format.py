"""Format reward: does the completion end on a GSM8K-style answer line?"""

import re
from collections.abc import Sequence
from typing import Any

from mlx_align.rewards.math import completion_text

# Rule: the last non-blank line is "#### <number>" (integer or decimal, optional
# sign and thousands commas), optionally followed by whitespace and
# end-of-sequence markers such as "</s>" or "<|im_end|>". Nothing else may follow.
_FINAL_ANSWER_LINE_RE = re.compile(
    r"(?:\A|\n)[ \t]*####[ \t]*-?\d+(?:,\d{3})*(?:\.\d+)?[ \t]*(?:\s*<[^<>\s]+>)*\s*\Z"
)


def format_reward(
    prompts: Sequence[Any],
    completions: Sequence[str | list[dict[str, Any]]],
    **columns: Any,
) -> list[float]:
    """1.0 for each completion whose final line is ``#### <number>``, else 0.0.

    The format of our GSM8K-style data: worked steps, then the answer on a
    last line ``#### 42``. The exact rule is at ``_FINAL_ANSWER_LINE_RE``.
    Completions may be strings or TRL conversational message lists.
    """
    return [
        float(_FINAL_ANSWER_LINE_RE.search(completion_text(completion)) is not None)
        for completion in completions
    ]
