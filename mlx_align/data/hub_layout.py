"""Which file of a hub dataset holds which split: the hub's own rules, in order.

1. ``README.md``'s ``configs:`` (``data_files`` per split), when it has them;
2. file names: ``data/train-00000-of-00002.parquet`` and
   ``CONFIG/test-00000-of-00001.parquet`` (what ``push_to_hub`` writes),
   ``train.jsonl``, ``train/part-0.parquet``; then the split's usual words in
   a file's path (``validation``, ``valid``, ``val``, ``dev``; ``test``,
   ``eval``; ``train``, ``training``); a dataset whose file names name no
   split at all is all ``train``.

Without ``:CONFIG`` a dataset's files at its root and under ``data/`` are
read; a dataset whose files lie only in per-config folders (``main/``,
``socratic/``) must be given one (the error lists them). ``hub.py`` fetches
the files these rules pick.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlx_align.core.errors import DataError

# ORG/NAME or ORG/NAME:CONFIG (the hub's repo-name characters).
HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<config>[\w.-]+))?"
)
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
# JSON files the hub and `datasets` write about a dataset, not rows of it.
METADATA_FILES = {
    "dataset_infos.json",
    "dataset_info.json",
    "dataset_dict.json",
    "state.json",
}
# The words that name a split in a file's path, by canonical split.
SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
# Held-out splits a run evaluates on when --valid-split is not given, first found.
VALID_SPLITS = ("validation", "test")
SHARD = re.compile(r"(?P<split>.+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?")


def parse_hub_id(data: str) -> tuple[str, str | None] | None:
    """``(repo_id, config)`` of ``ORG/NAME[:CONFIG]``, or None for anything else."""
    if Path(data).suffix in DATA_SUFFIXES:
        return None
    match = HUB_ID.fullmatch(data)
    return (match["repo"], match["config"]) if match else None


def is_data_file(path: str) -> bool:
    name = PurePosixPath(path).name
    return (
        name.endswith(DATA_SUFFIXES)
        and name not in METADATA_FILES
        and not any(part.startswith(".") for part in PurePosixPath(path).parts)
    )


# ---------------------------------------------------------------- which file is which split


def split_of(path: str) -> str:
    """The split a file's name states: ``train`` for ``train-00000-of-00001.parquet``,
    ``train.jsonl`` or ``train_prefs-00000-of-00001-1a2b.parquet`` -> ``train_prefs``."""
    stem = PurePosixPath(path).name.split(".")[0]
    shard = SHARD.fullmatch(stem)
    return shard["split"] if shard else stem


def words_of(path: str) -> set[str]:
    """The lower-case words of a path (split on anything not a letter)."""
    return {w for w in re.split(r"[^a-z]+", path.lower()) if w}


def group_of(split: str) -> tuple[str, ...]:
    """The words that mean ``split``: its SPLIT_WORDS group, or itself."""
    return next(
        (words for words in SPLIT_WORDS.values() if split.lower() in words), (split,)
    )


def files_of_split(paths: list[str], split: str) -> list[str]:
    """The files of ``split`` among ``paths`` (relative to the config's folder):
    named exactly for it, in a folder of its name, by one of its words (when
    those files are of one split: not ``train_sft`` and ``train_gen``); and,
    for ``train``, every file when no file's path names any split."""
    exact = [p for p in paths if split_of(p) == split]
    if exact:
        return exact
    in_folder = [p for p in paths if split in PurePosixPath(p).parts[:-1]]
    if in_folder:
        return in_folder
    words = set(group_of(split))
    by_word = [p for p in paths if words & words_of(p)]
    if by_word:
        # train_sft and train_gen are two splits, not one: ask for a name.
        kinds = {re.sub(r"\d+", "", split_of(p)) for p in by_word}
        return by_word if len(kinds) == 1 else []
    every_word = {w for group in SPLIT_WORDS.values() for w in group}
    if split in SPLIT_WORDS["train"] and not any(
        every_word & words_of(p) for p in paths
    ):
        return list(paths)
    return []


def splits_named(paths: list[str]) -> list[str]:
    """The split names files state, for messages."""
    return sorted({split_of(p) for p in paths})


# ---------------------------------------------------------------- README configs


def readme_configs(text: str) -> list[dict]:
    """The ``configs:`` list of a dataset card's YAML header ([] when none)."""
    import yaml

    if not text.startswith("---"):
        return []
    end = text.find("\n---", 3)
    if end < 0:
        return []
    try:
        header = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return []
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list):
        return []
    return [c for c in configs if isinstance(c, dict) and "config_name" in c]


def data_file_patterns(config: dict) -> dict[str, list[str]]:
    """``{split: [glob, ...]}`` of a README config's ``data_files`` (a string or
    list without splits is ``train``)."""
    spec = config.get("data_files")
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {"train": [spec]}
    if isinstance(spec, dict):
        return {str(k): v if isinstance(v, list) else [v] for k, v in spec.items()}
    patterns: dict[str, list[str]] = {}
    for item in spec if isinstance(spec, list) else []:
        if isinstance(item, str):
            patterns.setdefault("train", []).append(item)
        elif isinstance(item, dict) and "path" in item:
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            patterns.setdefault(str(item.get("split", "train")), []).extend(paths)
    return patterns


def matching(paths: list[str], patterns: list[str]) -> list[str]:
    """The paths one of ``patterns`` matches (hub globs; ``**/`` and ``**`` as
    ``*``, which crosses folders in ``fnmatch``)."""
    globs = [str(p).replace("**/", "*").replace("**", "*") for p in patterns]
    return [p for p in paths if any(fnmatch.fnmatchcase(p, g) for g in globs)]


# ---------------------------------------------------------------- a dataset's files


@dataclass
class Layout:
    """The data files of one config of a dataset, and how its splits are found.

    ``paths`` are relative to the snapshot; ``declared`` maps split -> files
    when README.md says, else splits are found by file name below ``scope``,
    the config's folder ('' for the dataset's root).
    """

    label: str  # ORG/NAME[:CONFIG], for messages
    paths: list[str]
    declared: dict[str, list[str]] | None = None
    scope: str = ""

    def relative(self, path: str) -> str:
        """The path below the config's folder (the whole path at the root)."""
        parts = PurePosixPath(path).parts
        if self.scope and self.scope in parts[:-1]:
            parts = parts[parts.index(self.scope) + 1 :]
        return "/".join(parts)

    def files(self, split: str) -> list[str]:
        if self.declared is not None:
            if split in self.declared:
                return self.declared[split]
            words = set(group_of(split))
            return next(
                (f for name, f in self.declared.items() if name.lower() in words), []
            )
        relative = [self.relative(p) for p in self.paths]
        chosen = set(files_of_split(relative, split))
        return [p for p, r in zip(self.paths, relative, strict=True) if r in chosen]

    def splits(self) -> list[str]:
        if self.declared is not None:
            return sorted(self.declared)
        return splits_named([self.relative(p) for p in self.paths])


def config_folders(paths: list[str]) -> list[str]:
    """Top-level folders that are configs: not ``data``, not a split's name."""
    split_words = {w for group in SPLIT_WORDS.values() for w in group}
    folders = {
        PurePosixPath(p).parts[0] for p in paths if len(PurePosixPath(p).parts) > 1
    }
    return sorted(f for f in folders if f != "data" and f.lower() not in split_words)


def layout_of(
    label: str, paths: list[str], config: str | None, readme: str = ""
) -> Layout:
    """Which of a dataset's files are its (config's) data, and its splits."""
    paths = sorted(p for p in paths if is_data_file(p))
    configs = readme_configs(readme)
    names = [str(c["config_name"]) for c in configs]
    if configs:
        if config is not None:
            chosen = next((c for c in configs if str(c["config_name"]) == config), None)
        else:
            chosen = next((c for c in configs if c.get("default") is True), None)
            chosen = chosen or next(
                (c for c in configs if c["config_name"] == "default"), None
            )
            if chosen is None and len(configs) == 1:
                chosen = configs[0]
            if chosen is None:
                raise DataError(label, 0, pick_a_config(label, names))
        if chosen is not None and (patterns := data_file_patterns(chosen)):
            declared = {s: matching(paths, g) for s, g in patterns.items()}
            return Layout(label, paths, {s: f for s, f in declared.items() if f})
    if config is not None:
        inside = [p for p in paths if config in PurePosixPath(p).parts[:-1]]
        if not inside:
            known = names or config_folders(paths)
            listed = ", ".join(known) if known else "none"
            raise DataError(label, 0, f"no config '{config}' (configs: {listed})")
        return Layout(label, inside, scope=config)
    top = [
        p for p in paths if len(PurePosixPath(p).parts) == 1 or p.startswith("data/")
    ]
    if top:
        return Layout(label, top)
    folders = config_folders(paths)
    if len(folders) > 1:
        raise DataError(label, 0, pick_a_config(label, names or folders))
    if len(folders) == 1:
        return Layout(
            label,
            [p for p in paths if p.startswith(f"{folders[0]}/")],
            scope=folders[0],
        )
    return Layout(label, paths)


def pick_a_config(label: str, names: list[str]) -> str:
    return (
        f"this dataset has configs {', '.join(names)}: pick one, "
        f"e.g. --data {label}:{names[0]}"
    )
