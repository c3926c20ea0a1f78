"""Prompt-only records (GRPO, eval-math, rerank): ``prompt`` plus the columns rewards read.

``check_prompt_records`` runs before any model loads; ``encode_prompts``
once the tokenizer is there. Both raise ``DataError`` at the bad line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import Record, require_text
from mlx_align.data.tokenize import encode_prompt, require_prompt

# A needed column: one name, or a tuple of alternatives (the first present is read).
Column = str | tuple[str, ...]


def alternatives(column: Column) -> tuple[str, ...]:
    return (column,) if isinstance(column, str) else tuple(column)


def column_value(record: Record, column: Column) -> str:
    """The first of ``column``'s alternatives present in the record, as a non-empty string."""
    names = alternatives(column)
    present = next((name for name in names if name in record.fields), None)
    if present is None:
        wanted = " or ".join(f"'{name}'" for name in names)
        raise DataError(record.path, record.line, f"missing field {wanted}")
    value = record.fields[present]
    if not isinstance(value, str):
        kind = type(value).__name__
        raise DataError(
            record.path,
            record.line,
            f"field '{present}' must be a string, got {kind} {value!r}"[:200],
        )
    return require_text(record, present)


def check_prompt_records(
    records: Sequence[Record], needs: Sequence[Column] = ()
) -> None:
    """Every record has a usable ``prompt`` (a non-empty string, or chat messages
    ending with the user's turn) and a non-empty string for every column in
    ``needs`` (e.g. ``[("answer", "solution")]`` for the math reward).

    Of a column's alternatives, every record must carry the one the first
    record does: a reward receives each column for a whole batch (TRL's
    convention), so a batch mixing ``answer`` and ``solution`` would hand it
    None. Runs on the records alone, before a model or tokenizer loads.
    """
    chosen: dict[Column, str] = {}
    for record in records:
        require_prompt(record)
        for column in needs:
            column_value(record, column)
            names = alternatives(column)
            used = next(name for name in names if name in record.fields)
            first = chosen.setdefault(column, used)
            if used != first:
                raise DataError(
                    record.path,
                    record.line,
                    f"field '{used}' where earlier records have '{first}': "
                    f"use one of {' or '.join(map(repr, names))} throughout",
                )


def encode_prompts(
    tokenizer,
    records: Sequence[Record],
    max_tokens: int | None = None,
    report: Callable[[str], None] = print,
) -> list[list[int]]:
    """``tokenize.encode_prompt`` of every record. A prompt that encodes to no
    token is a DataError; one longer than ``max_tokens`` (e.g. --max-length
    minus --max-completion-tokens) keeps its last ``max_tokens`` tokens, and
    the count is reported, as the training stages truncate prompts."""
    prompts, truncated = [], 0
    for record in records:
        tokens = encode_prompt(tokenizer, record)
        if not tokens:
            raise DataError(record.path, record.line, "the prompt encodes to no tokens")
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, truncated = tokens[-max_tokens:], truncated + 1
        prompts.append(tokens)
    if truncated:
        report(
            f"{records[0].path}: {truncated} of {len(records)} prompts truncated "
            f"from the left to fit {max_tokens} tokens"
        )
    return prompts
