"""eval-math's tools: held-out questions answered in conversations that may call them.

GRPO's and PPO's own (``online.ToolSettings``) add environments and share
the completion budget the same way; these read ``--max-tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_align.config.settings import positive, setting


@dataclass
class EvalToolSettings:
    tool: tuple = setting(
        (),
        "A tool the model may call while it answers: module:function with type hints "
        "and a docstring, as grpo --tool takes; repeat for several. The last turn is "
        "the answer judged.",
        multiple=True,
    )
    max_turns: int = setting(
        4,
        "Model turns per problem with --tool (a call in the last is not run); the "
        "turns' and tool results' tokens stay within --max-tokens.",
        check=positive,
    )
