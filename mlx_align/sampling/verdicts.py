"""What a judge returns for a batch of pairs (``judges.py``, ``llm_judge.py``)."""

from __future__ import annotations

from typing import NamedTuple


class Verdicts(NamedTuple):
    """Per pair: the preferred index (None: a tie) and the two scores (None: unscored)."""

    preferred: list[int | None]
    scores: list[tuple[float, float]] | None
