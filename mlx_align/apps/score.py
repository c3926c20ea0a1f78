"""``mlx-align score``: one JSON line per response a trained reward model scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from mlx_align.batches.preference import encode_completion
from mlx_align.core.errors import DataError
from mlx_align.data.formats import converter
from mlx_align.data.jsonl import Record, read_jsonl, split_path
from mlx_align.data.tokenize import pad_id_of
from mlx_align.model.reward_head import load_reward_model
from mlx_align.sampling.reward_model import score_examples


def score_file(data: str | Path) -> Path:
    """A ``.jsonl`` file itself; a directory's ``test.jsonl``, else its ``valid.jsonl``."""
    if Path(data).suffix == ".jsonl":
        return Path(data)
    for split in ("test", "valid"):
        path = split_path(data, split)
        if path is not None and path.exists():
            return path
    raise DataError(str(data), 0, "no test.jsonl or valid.jsonl to score")


def responses_of(record: Record) -> list[str]:
    """The response fields a record holds: ``completion``, or ``chosen`` + ``rejected``."""
    if "completion" in record.fields:
        return ["completion"]
    if "chosen" in record.fields and "rejected" in record.fields:
        return ["chosen", "rejected"]
    raise DataError(
        record.path, record.line, "expected 'completion', or 'chosen' + 'rejected'"
    )


def run_score(
    reward_model: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Score every response in ``data``; JSON lines to ``out`` (or stdout).

    Each line is ``{"line", "field", "prompt", "response", "reward"}``; for
    paired data the share of pairs ranked right is reported on stderr.
    """
    records = read_jsonl(score_file(data), convert=converter())  # implicit prompts too
    targets = [(r, key) for r in records for key in responses_of(r)]
    model, tokenizer = load_reward_model(reward_model)
    examples = [encode_completion(tokenizer, r, key) for r, key in targets]
    rewards = score_examples(model, examples, pad_id_of(tokenizer), batch_size)
    rows = [
        {
            "line": r.line,
            "field": key,
            "prompt": r.fields["prompt"],
            "response": r.fields[key],
            "reward": reward,
        }
        for (r, key), reward in zip(targets, rewards, strict=True)
    ]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    report_pair_accuracy(rows)
    return rows


def report_pair_accuracy(rows: list[dict]) -> None:
    """On stderr: the share of pairs whose chosen response scored above the rejected one."""
    by_line = {}
    for row in rows:
        by_line.setdefault(row["line"], {})[row["field"]] = row["reward"]
    pairs = [v for v in by_line.values() if "chosen" in v]
    if pairs:
        right = sum(v["chosen"] > v["rejected"] for v in pairs)
        tqdm.write(
            f"{right} of {len(pairs)} pairs ranked chosen > rejected "
            f"(accuracy {right / len(pairs):.3f})",
            file=sys.stderr,
        )
