"""Datasets on the Hugging Face hub: ``--data ORG/NAME`` or ``ORG/NAME:CONFIG``.

The files come through ``huggingface_hub`` into its cache (``HF_HUB_CACHE``,
default ``~/.cache/huggingface/hub``): online, the repository's file list
is read, then only the files of the splits a run reads (and ``README.md``)
are downloaded; offline (``HF_HUB_OFFLINE=1``, or the hub out of reach) the
cached snapshot of ``refs/main`` is read as it is. Which file holds which
split: ``hub_layout.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlx_align.core.errors import DataError
from mlx_align.data.hub_layout import Layout, layout_of


def cache_dir() -> str:
    """The hub cache, read from the environment now (``huggingface_hub``
    reads it once, when it is imported)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if value := os.environ.get(name):
            return os.path.expanduser(os.path.expandvars(value))
    if home := os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass
class HubDataset:
    """One dataset on the hub (or in the cache): its files, where they are."""

    repo_id: str
    config: str | None
    remote: list[str] | None  # the repository's files, None when offline
    folder: Path | None  # the cached snapshot, once there is one
    cache: str
    reason: str = ""  # why the hub was not asked, for messages

    @property
    def label(self) -> str:
        return self.repo_id + (f":{self.config}" if self.config else "")

    def layout(self) -> Layout:
        paths = self.remote if self.remote is not None else self.local_files()
        readme = ""
        if "README.md" in paths:
            if self.remote is not None:
                self.download(["README.md"])
            readme_path = self.folder and self.folder / "README.md"
            if readme_path and readme_path.is_file():
                readme = readme_path.read_text(errors="replace")
        return layout_of(self.label, paths, self.config, readme)

    def local_files(self) -> list[str]:
        if self.folder is None:
            return []
        return sorted(
            p.relative_to(self.folder).as_posix()
            for p in self.folder.rglob("*")
            if p.is_file()
        )

    def download(self, paths: list[str]) -> Path:
        """``paths`` in the cache (downloaded when online); the snapshot folder."""
        if self.remote is None:
            assert self.folder is not None
            return self.folder
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                self.repo_id,
                repo_type="dataset",
                allow_patterns=[glob_escape(p) for p in paths],
                cache_dir=self.cache,
            )
        except Exception as e:  # network, disk, hub: one line naming the dataset
            raise DataError(
                self.label,
                0,
                f"download from the Hugging Face hub failed ({one_line(e)})",
            ) from None
        self.folder = Path(folder)
        return self.folder


def glob_escape(path: str) -> str:
    """A path as a pattern that matches only itself (fnmatch's [, *, ?)."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)


@cache
def open_dataset(
    repo_id: str, config: str | None, cache: str, is_offline: bool
) -> HubDataset:
    """The dataset's file list: from the hub, else (offline, or the hub out of
    reach) from the cached snapshot of ``refs/main``. Not there at all: a
    DataError naming the dataset."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    label = repo_id + (f":{config}" if config else "")
    reason = "HF_HUB_OFFLINE is set" if is_offline else ""
    if not is_offline:
        try:
            info = HfApi().dataset_info(repo_id)  # one request, no retries
            files = [s.rfilename for s in info.siblings or []]
            return HubDataset(repo_id, config, files, None, cache)
        except GatedRepoError:
            raise DataError(
                label,
                0,
                "a gated dataset: accept its terms on huggingface.co and log in "
                "(`hf auth login`)",
            ) from None
        except RepositoryNotFoundError:
            raise DataError(
                label,
                0,
                "no such local path, and no such dataset on the Hugging Face hub "
                "(a private one needs `hf auth login`)",
            ) from None
        except Exception as e:  # offline, no route, hub down: try the cache
            reason = f"the hub could not be reached: {one_line(e)}"
    folder = cached_snapshot(repo_id, cache)
    if folder is None:
        raise DataError(
            label,
            0,
            f"no such local path, and the dataset is not in the Hugging Face "
            f"cache {cache} ({reason})",
        )
    return HubDataset(repo_id, config, None, folder, cache, reason)


def cached_snapshot(repo_id: str, cache: str) -> Path | None:
    """The cached snapshot folder of ``refs/main``, found by ``snapshot_download``
    without the network; None when there is none."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            repo_type="dataset",
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=["README.md"],  # only it must be complete
        )
    except Exception:  # not cached (LocalEntryNotFoundError), a bad id, ...
        return None
    return Path(folder)


def hub_dataset(repo_id: str, config: str | None) -> HubDataset:
    return open_dataset(repo_id, config, cache_dir(), offline())
