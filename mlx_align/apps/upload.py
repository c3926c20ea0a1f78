"""Send a run's adapters, or a fused model, to the Hugging Face hub with a model card.

``mlx-align upload RUN --repo ORG/NAME`` sends the adapters alone
(``adapters.safetensors``, ``adapter_config.json``, the run's ``config.yaml``;
with ``--full`` the model directory ``R/model``); ``mlx-align fuse ...
--upload-repo ORG/NAME`` (mlx-lm's flag) sends the fused model directory.
Either way the ``README.md`` is the card ``apps/model_card.py`` writes, and
the files go in one commit through ``huggingface_hub`` (its token, its
``HF_ENDPOINT``). mlx-lm's own ``upload_to_hub`` rewrites the card with its
own text and uploads with ``upload_large_folder``; this keeps our card and
sends exactly the files named, in one commit.
"""

from __future__ import annotations

from pathlib import Path

from mlx_align.apps.model_card import (
    StageRecord,
    model_card,
    run_history,
)
from mlx_align.core.errors import UserError

ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json", "config.yaml")


def folder_files(directory: Path) -> dict[str, Path]:
    """Every file under ``directory``, by its path inside it."""
    return {
        p.relative_to(directory).as_posix(): p
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_files(run: Path) -> tuple[dict[str, Path], bool]:
    """What ``upload RUN`` sends, and whether it is adapters (else a model)."""
    if (run / "adapters.safetensors").exists():
        return {n: run / n for n in ADAPTER_FILES if (run / n).exists()}, True
    if (run / "model" / "config.json").exists():
        return folder_files(run / "model"), False
    raise UserError(
        str(run),
        "holds neither adapters.safetensors nor model/config.json "
        "(the output of a finished mlx-align training stage)",
    )


def push(
    repo: str, files: dict[str, Path | bytes], message: str, private: bool = False
) -> str:
    """``files`` (path in the repo -> a file or bytes) to ``repo`` in one commit;
    the repository's URL. A refused or failed upload is one line, exit 2."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # OSError: refusals (HfHubHTTPError) and, with requests, network errors;
    # HfHubHTTPError's other base is the HTTP client's own error (httpx's);
    # ValueError: the hub found the card's metadata invalid.
    failures = (OSError, ValueError, *HfHubHTTPError.__bases__)
    api = HfApi()
    operations = [
        CommitOperationAdd(
            path_in_repo=name,
            path_or_fileobj=source if isinstance(source, bytes) else str(source),
        )
        for name, source in files.items()
    ]
    try:
        api.create_repo(repo, exist_ok=True, private=private)
        api.create_commit(repo, operations=operations, commit_message=message)
    except failures as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__  # fmt: skip
        raise UserError("--repo", f"upload to {repo} failed: {reason}") from None
    return f"{api.endpoint}/{repo}"


def commit_message(history: list[StageRecord], adapters: bool) -> str:
    stages = " → ".join(h.stage for h in history)
    what = "adapters" if adapters else "model"
    return f"mlx-align: {stages} {what}" if stages else f"mlx-align: {what}"


def upload_run(run: Path, repo: str, private: bool = False) -> str:
    """The adapters (or ``--full`` model) of training run ``run``, with a card."""
    files, adapters = run_files(run)
    history = run_history(run)
    card = model_card(repo, history, adapters).encode()
    return push(repo, {**files, "README.md": card}, commit_message(history, adapters), private)  # fmt: skip


def upload_fused(directory: Path, repo: str, history: list[StageRecord]) -> str:
    """A fused model directory (its card already written by ``fuse``)."""
    return push(repo, folder_files(directory), commit_message(history, False))
