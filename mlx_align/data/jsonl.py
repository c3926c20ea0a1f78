"""Reading JSONL splits in mlx-lm's layout (``DIR/train.jsonl``, ``valid.jsonl``, ``test.jsonl``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


@dataclass(frozen=True)
class Record:
    """One JSON object and where it came from, so later checks can point at the line."""

    path: str
    line: int
    fields: dict


def split_path(data: str | Path, split: str) -> Path | None:
    """``DIR/<split>.jsonl``; a path to a single ``.jsonl`` file serves as ``train`` only."""
    data = Path(data)
    if data.suffix == ".jsonl":
        return data if split == "train" else None
    return data / f"{split}.jsonl"


def load_split(
    data: str | Path, split: str, required: bool = False
) -> list[Record] | None:
    """The records of one split, or None when it is absent and not required."""
    path = split_path(data, split)
    if path is None or not path.exists():
        if required:
            looked = path if path is not None else Path(data)
            raise DataError(str(looked), 0, f"no {split} data: file not found")
        return None
    return read_jsonl(path)


def read_jsonl(path: str | Path) -> list[Record]:
    """Parse every non-blank line as a JSON object; the first bad line raises DataError."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), number, f"invalid JSON ({e.msg})") from None
            if not isinstance(fields, dict):
                kind = type(fields).__name__
                raise DataError(
                    str(path), number, f"expected a JSON object, got {kind}"
                )
            records.append(Record(str(path), number, fields))
    if not records:
        raise DataError(str(path), 0, "empty file: no JSON lines")
    return records


def require_str(record: Record, key: str) -> str:
    """The string field ``key`` of a record, or a DataError naming the line."""
    if key not in record.fields:
        raise DataError(record.path, record.line, f"missing field '{key}'")
    value = record.fields[key]
    if not isinstance(value, str):
        kind = type(value).__name__
        raise DataError(
            record.path, record.line, f"field '{key}' must be a string, got {kind}"
        )
    return value
