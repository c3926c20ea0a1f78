"""Data files other than JSONL: parquet (streamed in row groups) and JSON arrays.

Every reader returns ``Record(path, line, fields)`` with ``path`` the name
errors should show (a hub file's ``ORG/NAME/data/train-...parquet``) and
``line`` the 1-based row, so a bad row reads ``source:row: what is wrong``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_align.core.errors import DataError
from mlx_align.data.formats import Convert
from mlx_align.data.jsonl import Record, read_jsonl

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")

ROWS_PER_BATCH = 1024  # parquet rows converted to Python at a time


def read_parquet(
    path: str | Path, name: str, limit: int = 0, convert: Convert | None = None
) -> list[Record]:
    """The rows of a parquet file, read batch by batch (``iter_batches``): the
    file's Arrow data is never all in memory next to the Python rows. Stops
    after ``limit`` rows (0: all). Nulls are left for ``convert`` to drop."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records: list[Record] = []
    row = 0
    try:
        with pq.ParquetFile(path) as table:
            size = min(ROWS_PER_BATCH, limit) if limit else ROWS_PER_BATCH
            for batch in table.iter_batches(batch_size=size):
                for fields in batch.to_pylist():
                    row += 1
                    if convert is not None:
                        fields = convert(fields, name, row)
                    records.append(Record(name, row, fields))
                    if limit and row >= limit:
                        return records
    except (OSError, pa.ArrowException) as e:
        where = f" after row {row}" if row else ""
        raise DataError(name, 0, f"cannot read parquet{where}: {e}") from None
    if not records:
        raise DataError(name, 0, "empty file: no rows")
    return records


def read_json(
    path: str | Path, name: str, limit: int = 0, convert: Convert | None = None
) -> list[Record]:
    """A ``.json`` file: one array of objects (line = its position, 1-based),
    or JSON lines, as the hub's ``json`` loader takes both."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as e:
        raise DataError(name, 0, f"cannot read: {e.strerror or e}") from None
    if not head.startswith(b"["):
        return read_jsonl(path, name=name, limit=limit, convert=convert)
    try:
        rows = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(name, 0, f"invalid JSON ({e})") from None
    records = []
    for number, row in enumerate(rows[:limit] if limit else rows, start=1):
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise DataError(name, number, f"expected a JSON object, got {kind}")
        fields = convert(row, name, number) if convert is not None else row
        records.append(Record(name, number, fields))
    if not records:
        raise DataError(name, 0, "empty file: no JSON objects")
    return records


def read_data_file(
    path: str | Path, name: str, limit: int = 0, convert: Convert | None = None
) -> list[Record]:
    """Any data file by its suffix: ``.parquet``, ``.json``, else JSON lines."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return read_parquet(path, name, limit, convert)
    if suffix == ".json":
        return read_json(path, name, limit, convert)
    return read_jsonl(path, name=name, limit=limit, convert=convert)
