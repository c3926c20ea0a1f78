"""Reading JSONL splits in mlx-lm's layout (``DIR/train.jsonl``, ``valid.jsonl``, ``test.jsonl``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlx_align.core.errors import DataError


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


def decode_line(raw: bytes, path: str, number: int) -> str:
    """One line's bytes as text; a byte that is not UTF-8 is a DataError at its column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8", errors="replace")) + 1
        raise DataError(
            path, number, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {column})"
        ) from None


def has_lone_surrogate(value: object) -> bool:
    """Whether a string anywhere in ``value`` (keys too) holds an unpaired surrogate,
    which JSON's ``\\uD800``-``\\uDFFF`` escapes can write but UTF-8 cannot encode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def parse_line(text: str, path: str, number: int) -> dict:
    """One JSON object; anything else (bad JSON, a list, a lone surrogate) is a DataError."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, number, f"invalid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(path, number, "invalid JSON (nested too deeply)") from None
    except ValueError:  # an integer of more digits than Python converts
        raise DataError(
            path, number, "invalid JSON (a number too long to read)"
        ) from None
    if not isinstance(fields, dict):
        kind = type(fields).__name__
        raise DataError(path, number, f"expected a JSON object, got {kind}")
    if "\\ud" in text.lower() and has_lone_surrogate(fields):
        raise DataError(
            path, number, "invalid JSON (a \\u escape is a lone UTF-16 surrogate)"
        )
    return fields


def read_jsonl(
    path: str | Path,
    name: str | None = None,
    limit: int = 0,
    convert: Callable[[dict, str, int], dict] | None = None,
) -> list[Record]:
    """Parse every non-blank line as a JSON object; the first bad line raises DataError.

    Lines are split on ``\\n`` and decoded one by one, so a byte that is not
    UTF-8 names its line and column; a UTF-8 byte-order mark is ignored.
    ``name`` is the path errors and records show (default: ``path``);
    ``limit`` stops after that many records (0: all); ``convert(fields, name,
    line)`` reshapes each object before it is a Record (``formats.converter``).
    """
    name, records = str(name or path), []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                text = decode_line(raw, name, number)
                if not text.strip():
                    continue
                fields = parse_line(text, name, number)
                if convert is not None:
                    fields = convert(fields, name, number)
                records.append(Record(name, number, fields))
                if limit and len(records) >= limit:
                    break
    except OSError as e:
        raise DataError(name, 0, f"cannot read: {e.strerror or e}") from None
    if not records:
        raise DataError(name, 0, "empty file: no JSON lines")
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


def require_text(record: Record, key: str) -> str:
    """``require_str``, and not empty or only whitespace: text a stage trains on or prompts with."""
    value = require_str(record, key)
    if not value.strip():
        what = "empty" if not value else "only whitespace"
        raise DataError(record.path, record.line, f"field '{key}' is {what}")
    return value


def keep_lines(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite the JSON-lines log ``path`` with only the records ``keep`` accepts
    (a resumed run drops what it will redo); a line cut short by a kill is dropped.
    Nothing is written when every line stays."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if keep(json.loads(line)):
                kept.append(line)
        except ValueError:
            continue
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
