"""``--data``: a local directory or file, or a dataset on the Hugging Face hub.

A stage asks for a split by its role: ``load_split(config.source, "train")``,
``"valid"``, or (eval-math) the split to evaluate. ``config.source`` is a
``DataSource``: the ``--data`` text with the settings that read it
(``--data-split``, ``--valid-split``, ``--max-samples``, ``--field-map``);
a plain string reads with the defaults.

Where the rows come from:

* a local path that exists wins. A directory in mlx-lm's layout
  (``train.jsonl``, ``valid.jsonl``, ``test.jsonl``; ``--data-split X``
  reads ``X.jsonl``) reads exactly as it always has: the validation split is
  ``valid.jsonl`` or none. A directory without those, holding a hub
  dataset's files (a ``hf download`` of one), is read by the hub's rules
  (``hub.py``, ``hub_layout.py``). A single ``.jsonl`` / ``.parquet`` / ``.json`` file is the
  train split (or the split eval-math evaluates), with no validation split.
* ``ORG/NAME`` or ``ORG/NAME:CONFIG`` that is not a local path: a hub
  dataset (``hub.py``), through the hub cache (``HF_HUB_OFFLINE=1`` reads the
  cache only). Its validation split, unless ``--valid-split`` names one, is
  the first present of validation (valid, val, dev) and test; which one is
  printed.

Each row goes through ``formats.converter`` (``--field-map``, then the
formats with no ``prompt``) as its ``Record`` is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mlx_align.core.errors import DataError, UserError
from mlx_align.data.formats import Convert, converter
from mlx_align.data.hub import hub_dataset
from mlx_align.data.hub_layout import (
    DATA_SUFFIXES,
    VALID_SPLITS,
    Layout,
    is_data_file,
    layout_of,
    parse_hub_id,
)
from mlx_align.data.jsonl import Record
from mlx_align.data.readers import read_data_file

NO_VALID = "none"  # --valid-split none: no evaluation split


@dataclass(frozen=True)
class DataOptions:
    """The settings that say how ``--data`` is read (``config.RunSettings``)."""

    data_split: str = "train"
    valid_split: str = ""  # "": found (see the module docstring); "none": none
    max_samples: int = 0  # rows read per split, 0: all
    field_map: str = ""  # NEW=OLD,... (formats.parse_field_map)


@dataclass(frozen=True)
class DataSource:
    """The ``--data`` text (a path or a hub id) and the ``DataOptions`` that read
    it: what a stage's config hands ``load_split`` (``RunSettings.source``)."""

    text: str
    options: DataOptions = DataOptions()

    def __str__(self) -> str:
        return self.text


def options_of(data: DataSource | str) -> DataOptions:
    return data.options if isinstance(data, DataSource) else DataOptions()


@dataclass(frozen=True)
class Wanted:
    """The split a role reads: its name, and whether it must be there."""

    role: str  # train, valid, or the split evaluated
    name: str  # "" for a validation split to be found
    required: bool


def wanted(role: str, options: DataOptions, required: bool) -> Wanted | None:
    if role == "train":
        return Wanted(role, options.data_split, required)
    if role == "valid":
        if options.valid_split == NO_VALID:
            return None
        return Wanted(role, options.valid_split, required or bool(options.valid_split))
    return Wanted(role, role, required)


def load_split(data, split: str, required: bool = False) -> list[Record] | None:
    """The records of ``split`` (``train``, ``valid``, or a split's name) of
    ``data`` (a ``DataSource``, path or hub id), or None when it is absent
    and not required (see the module docstring)."""
    options = options_of(data)
    want = wanted(split, options, required)
    if want is None:
        return None
    text = str(data)
    path = Path(text)
    if path.exists() or parse_hub_id(text) is None:
        return load_local(path, want, options)
    repo_id, config = parse_hub_id(text)
    dataset = hub_dataset(repo_id, config)
    layout = dataset.layout()
    picked = pick_files(layout, want, options)
    if picked is None:
        return None
    name, files = picked
    folder = dataset.download(files)
    located = [(folder / f, f"{repo_id}/{f}") for f in files]
    return read_files(located, dataset.label, want.role, name, options)


def converters(options: DataOptions) -> tuple[Convert, Convert]:
    """(JSON rows, parquet rows): parquet's nulls are absent fields."""
    try:
        return converter(options.field_map), converter(options.field_map, nulls=True)
    except ValueError as e:  # a DataSource made without build_config's check
        raise UserError("--field-map", str(e)) from None


def read_files(
    files: list[tuple[Path, str]],
    label: str,
    role: str,
    split: str,
    options: DataOptions,
) -> list[Record]:
    """The rows of ``files`` ((local path, name in messages)), at most
    ``--max-samples``; says on one line which split and files they are."""
    json_rows, parquet_rows = converters(options)
    records: list[Record] = []
    for local, name in files:
        left = options.max_samples - len(records) if options.max_samples else 0
        convert = parquet_rows if local.suffix == ".parquet" else json_rows
        records += read_data_file(local, name, left, convert)
        if options.max_samples and len(records) >= options.max_samples:
            break
    names = [PurePosixPath(n).name for _, n in files]
    shown = ", ".join(names[:2]) + (
        f", ... ({len(names)} files)" if len(names) > 2 else ""
    )
    cap = f", --max-samples {options.max_samples}" if options.max_samples else ""
    tqdm.write(f"{label}: {role} split '{split}', {len(records)} rows{cap} ({shown})")
    return records


def pick_files(
    layout: Layout, want: Wanted, options: DataOptions
) -> tuple[str, list[str]] | None:
    """(split name, its files) for ``want``; a validation split to be found is
    the first of VALID_SPLITS present (never the train split's files). None
    when absent and not required."""
    if want.name:
        files = layout.files(want.name)
        if files:
            return want.name, files
        if not want.required:
            return None
        splits = ", ".join(layout.splits()) or "none"
        raise DataError(layout.label, 0, f"no split '{want.name}' (splits: {splits})")
    train = set(layout.files(options.data_split))
    for name in VALID_SPLITS:
        files = [f for f in layout.files(name) if f not in train]
        if files:
            return name, files
    tqdm.write(
        f"{layout.label}: no {' or '.join(VALID_SPLITS)} split: "
        "no evaluation during training (--valid-split names one)"
    )
    return None


def mlx_layout(folder: Path, options: DataOptions, want: Wanted) -> bool:
    """A directory in mlx-lm's layout: ``<split>.jsonl`` files at its top (or no
    data file anywhere below it, which then reports the missing ``train.jsonl``)."""
    names = {"train", options.data_split, want.name or "valid"}
    if any((folder / f"{n}.jsonl").is_file() for n in names):
        return True
    return not any(
        p.is_file() and is_data_file(p.relative_to(folder).as_posix())
        for p in folder.rglob("*")
    )


def load_local(path: Path, want: Wanted, options: DataOptions) -> list[Record] | None:
    if path.is_dir() and not mlx_layout(path, options, want):
        return load_local_hub_layout(path, want, options)
    name = want.name or "valid"
    if path.suffix in DATA_SUFFIXES and not path.is_dir():
        file = path if want.role != "valid" else None
    else:
        file = path / f"{name}.jsonl"
    if file is None or not file.exists():
        if want.required:
            looked = file if file is not None else path
            raise DataError(str(looked), 0, f"no {name} data: file not found")
        return None
    json_rows, parquet_rows = converters(options)
    convert = parquet_rows if file.suffix == ".parquet" else json_rows
    return read_data_file(file, str(file), options.max_samples, convert)


def load_local_hub_layout(
    folder: Path, want: Wanted, options: DataOptions
) -> list[Record] | None:
    """A local copy of a hub dataset: its splits found by the hub's rules."""
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    readme = folder / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    layout = layout_of(str(folder), paths, None, text)
    picked = pick_files(layout, want, options)
    if picked is None:
        return None
    name, files = picked
    located = [(folder / f, str(folder / f)) for f in files]
    return read_files(located, str(folder), want.role, name, options)
