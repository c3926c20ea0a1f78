"""Best-of-K reranking: ``mlx-align rerank`` and ``rerank()``.

K completions of each prompt are sampled from the policy
(``rollout.sample_groups``: the prompt prefilled once, its K rows decoded
together) and ranked, best first, by

* DPO's implicit reward ``r(x, y) = β · (log π(y|x) − log π_ref(y|x))``,
  both log-probs summed over the completion's tokens (its EOS included when
  it was sampled). This is the reward a DPO policy fits up to ``β log Z(x)``
  (Rafailov et al. 2023, eq. 5); that term is the same for every completion
  of a prompt, so the ranking within a prompt is exact. The reference is the
  policy's base with the adapters off (``reference.shared_reference``: no
  copy of the weights), or a second model (``--ref-model``) for a fused
  policy; or
* a trained reward model (``mlx-align reward``), through
  ``train.reward.score``: the completion's text is encoded as in training,
  EOS appended.

The policy samples with its adapters fused (``fused_sampler``) and is scored
with them as trained: full prompt + completion rows
(``layouts.FullRows``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

from mlx_align.batches.layouts import FullRows
from mlx_align.batches.planning import bucket_lengths
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.formats import converter
from mlx_align.data.jsonl import Record, read_jsonl
from mlx_align.data.prompts import encode_prompts
from mlx_align.data.tokenize import Encoded, pad_id_of
from mlx_align.sampling.fused_sampler import FusedSampler, should_fuse
from mlx_align.sampling.rollout import Group, sample_groups


@dataclass(frozen=True)
class Candidate:
    """One sampled completion and its score; ``sample`` is its place in the draw order."""

    completion: str
    score: float
    sample: int
    tokens: list[int]  # the sampled ids, EOS included when it was sampled
    finished: bool  # ended with EOS, not at the token limit
    logp: float | None = None  # Σ log π(y|x), implicit reward only
    ref_logp: float | None = None  # Σ log π_ref(y|x), implicit reward only


@dataclass(frozen=True)
class Ranked:
    """A prompt's K candidates, best first (ties keep the draw order)."""

    record: Record
    candidates: list[Candidate]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_json(self) -> dict:
        ranked = [asdict(c) for c in self.candidates]
        return {"line": self.record.line, **self.record.fields, "ranked": ranked}


@dataclass
class Scorers:
    """What ranks the completions: a reference model (implicit reward) or a reward model."""

    reference: nn.Module | None = None
    beta: float = 0.1
    reward_model: nn.Module | None = None
    reward_tokenizer: object = None


def check_settings(k: int, beta: float) -> None:
    """K and β that can work, checked before anything loads."""
    if k < 1:
        raise UserError("--k", f"must be at least 1, got {k}")
    if beta <= 0:
        raise UserError("--beta", f"must be positive, got {beta}")


def prompt_records(prompts: Sequence[str | list[dict]]) -> list[Record]:
    """Prompts given in Python as records, numbered from 1 like lines of a file."""
    return [Record("<prompts>", i + 1, {"prompt": p}) for i, p in enumerate(prompts)]


def completion_logps(
    model: nn.Module, groups: Sequence[Group], pad_id: int
) -> np.ndarray:
    """Σ log p(completion | prompt) of every completion: (len(groups), K), one forward."""
    rows = [Encoded(g.prompt + c, len(g.prompt)) for g in groups for c in g.completions]
    longest = max(len(r.tokens) for r in rows)
    batch = FullRows.pad(rows, len(rows), bucket_lengths(longest), pad_id)
    summed = batch.logps(model)[0]
    return np.array(summed, dtype=np.float64).reshape(len(groups), -1)


def implicit_rewards(
    policy: nn.Module,
    reference: nn.Module,
    groups: Sequence[Group],
    beta: float,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(β · (Σ log π − Σ log π_ref), Σ log π, Σ log π_ref)``, each (len(groups), K)."""
    logp = completion_logps(policy, groups, pad_id)
    ref_logp = completion_logps(reference, groups, pad_id)
    return beta * (logp - ref_logp), logp, ref_logp


def rank_group(
    group: Group,
    texts: list[str],
    eos_ids: set[int],
    scores: np.ndarray,
    logps: tuple[np.ndarray, np.ndarray] | None,
) -> list[Candidate]:
    """One prompt's candidates sorted by score, best first."""
    candidates = [
        Candidate(
            completion=text,
            score=float(scores[i]),
            sample=i,
            tokens=tokens,
            finished=bool(tokens) and tokens[-1] in eos_ids,
            logp=float(logps[0][i]) if logps else None,
            ref_logp=float(logps[1][i]) if logps else None,
        )
        for i, (tokens, text) in enumerate(zip(group.completions, texts, strict=True))
    ]
    return sorted(candidates, key=lambda c: -c.score)


def score_chunk(
    policy: nn.Module,
    tokenizer,
    records: Sequence[Record],
    groups: list[Group],
    texts: list[list[str]],
    scorers: Scorers,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Scores (len(groups), K) of one chunk, and the two log-prob sums for the implicit reward."""
    if scorers.reward_model is not None:
        from mlx_align.sampling.reward_model import score

        k = len(groups[0].completions)
        prompts = [r.fields["prompt"] for r in records for _ in range(k)]
        flat = [t for row in texts for t in row]
        rewards = score(scorers.reward_model, scorers.reward_tokenizer, prompts, flat)
        return np.array(rewards).reshape(len(groups), k), None
    scores, logp, ref_logp = implicit_rewards(
        policy, scorers.reference, groups, scorers.beta, pad_id_of(tokenizer)
    )
    return scores, (logp, ref_logp)


def rank_chunk(
    policy: nn.Module,
    tokenizer,
    records: Sequence[Record],
    groups: list[Group],
    scorers: Scorers,
) -> list[Ranked]:
    """Decode, score and sort the sampled groups of ``records``, one Ranked each."""
    eos_ids = set(tokenizer.eos_token_ids)
    texts = [
        [tokenizer.decode([t for t in c if t not in eos_ids]) for c in g.completions]
        for g in groups
    ]
    scores, logps = score_chunk(policy, tokenizer, records, groups, texts, scorers)
    ranked = []
    for i, (record, group) in enumerate(zip(records, groups, strict=True)):
        pair = (logps[0][i], logps[1][i]) if logps else None
        ranked.append(
            Ranked(record, rank_group(group, texts[i], eos_ids, scores[i], pair))
        )
    return ranked


def rerank_records(
    policy: nn.Module,
    tokenizer,
    records: Sequence[Record],
    scorers: Scorers,
    k: int = 8,
    max_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> list[Ranked]:
    """Sample ``k`` completions of each record's prompt and rank them; one Ranked per record.

    ``batch_size`` prompts are sampled together (``batch_size * k`` rows) and
    scored in one forward per model.
    """
    check_settings(k, scorers.beta)
    if scorers.reference is None and scorers.reward_model is None:
        raise UserError("--ref-model", "no reference model and no reward model")
    prompts = encode_prompts(tokenizer, records, report=tqdm.write)
    eos_ids = set(tokenizer.eos_token_ids)
    mx.random.seed(seed)
    policy.eval()
    # Adapters fused for decoding when the copy is small (``--fuse-rollout auto``);
    # one twin for the whole run, so the compiled decode step keeps its trace.
    sampler = FusedSampler(policy) if should_fuse(policy, "auto") else None
    ranked: list[Ranked] = []
    step = max(batch_size, 1)
    with tqdm(
        total=len(records), desc="rerank", leave=False, disable=not progress
    ) as bar:
        for chunk in (slice(i, i + step) for i in range(0, len(records), step)):
            with sampler.fused() if sampler else nullcontext(policy) as model:
                groups = sample_groups(
                    model, prompts[chunk], k, max_tokens, eos_ids, temperature, top_p
                )
            ranked += rank_chunk(policy, tokenizer, records[chunk], groups, scorers)
            bar.update(len(groups))
    return ranked


def rerank(
    policy: nn.Module,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    reference: nn.Module | None = None,
    beta: float = 0.1,
    k: int = 8,
    reward_model: tuple[nn.Module, object] | None = None,
    **sampling,
) -> list[Ranked]:
    """Best-of-``k`` for each prompt (a string, or chat messages), best first.

    Ranked by the implicit reward against ``reference`` (e.g. the models of
    ``load_models``), or by ``reward_model``, a ``(RewardModel, tokenizer)``
    pair from ``model.reward_head.load_reward_model``. ``sampling``:
    max_tokens, temperature, top_p, batch_size, seed, progress.
    """
    rm, rm_tokenizer = reward_model or (None, None)
    scorers = Scorers(reference, beta, rm, rm_tokenizer)
    return rerank_records(
        policy, tokenizer, prompt_records(prompts), scorers, k, **sampling
    )


def load_models(
    model: str,
    adapter_path: str | None = None,
    ref_model: str | None = None,
    reward_model: str | None = None,
    beta: float = 0.1,
) -> tuple[nn.Module, object, Scorers]:
    """``(policy, tokenizer, scorers)``: the policy is ``model`` + adapters.

    The reference is ``ref_model``, else ``model`` with the adapters off;
    with ``reward_model`` there is none.
    """
    from mlx_align.model.adapters import load_adapters
    from mlx_align.model.load import load_model
    from mlx_align.train.reference import shared_reference

    if not (reward_model or adapter_path or ref_model):
        raise UserError(
            "--ref-model",
            "the implicit reward needs a reference: give --adapter-path (the "
            "reference is --model with the adapters off), --ref-model, or --reward-model",
        )
    policy, tokenizer, _ = load_model(model)
    if adapter_path:
        load_adapters(policy, adapter_path)
    if reward_model:
        from mlx_align.model.reward_head import load_reward_model

        rm, rm_tokenizer = load_reward_model(reward_model)
        return policy, tokenizer, Scorers(None, beta, rm, rm_tokenizer)
    if ref_model:
        reference, ref_tokenizer, _ = load_model(ref_model, "--ref-model")
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError(
                f"--ref-model {ref_model}",
                "its tokenizer is not --model's; the log-prob ratio needs the same tokens",
            )
    else:
        reference = shared_reference(policy, model)
    return policy, tokenizer, Scorers(reference, beta)


def write_ranked(ranked: Sequence[Ranked], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in ranked))
    return path


def run_rerank(
    model: str,
    data: str | Path,
    adapter_path: str | None = None,
    ref_model: str | None = None,
    reward_model: str | None = None,
    k: int = 8,
    beta: float = 0.1,
    out: str | Path | None = None,
    **sampling,
) -> list[Ranked]:
    """``mlx-align rerank``: settings and data checked before any model loads, JSONL to ``out``."""
    from mlx_align.apps.score import score_file  # a .jsonl, or a directory's split

    check_settings(k, beta)
    records = read_jsonl(score_file(data), convert=converter())  # TRL's formats
    for record in records:
        if "prompt" not in record.fields:
            raise DataError(record.path, record.line, "missing field 'prompt'")
    policy, tokenizer, scorers = load_models(
        model, adapter_path, ref_model, reward_model, beta
    )
    ranked = rerank_records(policy, tokenizer, records, scorers, k, **sampling)
    if out:
        write_ranked(ranked, out)
    return ranked
