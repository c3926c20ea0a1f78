"""Online DPO (and RLAIF): on-policy pairs labelled by a judge, a DPO-family step on them.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback";
TRL's ``OnlineDPOTrainer``. Each micro-batch samples two completions of
each prompt from the current policy (the compiled sampler GRPO uses), asks
the judge (``sampling/judges.py``: a reward model, a verifiable reward, an LLM
reading both, or any ``module:function``) which is better, and takes the DPO-family loss
(``stages/dpo.py:dpo_loss``, any of ``losses.DPO_LOSSES``) on the pairs
against the reference: the base with the adapters off, sharing its arrays,
scored once at sampling time. Pairs the judge cannot separate are not
trained on (``index`` -1) and counted.

At each evaluation (``--eval-every``; with 0, once after training), the judge
compares one sample of the policy with one of the starting model on each
held-out prompt (``valid.jsonl``): ``val_win_rate`` (ties count half) is
logged with the run's metrics, so ``--save-best val_win_rate`` keeps the best.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from mlx_align.batches.layouts import FullRows, SharedPrompt, pair_logps
from mlx_align.batches.planning import BatchPlan, bucket_for, bucket_lengths
from mlx_align.batches.types import OnlineDPOBatch
from mlx_align.config.online import OnlineDPOConfig
from mlx_align.core import distributed
from mlx_align.core.events import emit
from mlx_align.data.jsonl import Record
from mlx_align.data.prompts import encode_prompts
from mlx_align.data.tokenize import Encoded, pad_id_of
from mlx_align.model.shared_prompts import supports_shared_prompts
from mlx_align.sampling.fused_sampler import FusedSampler, sampling_model, should_fuse
from mlx_align.sampling.judges import Verdicts, make_judge
from mlx_align.sampling.rollout import Group
from mlx_align.stages.dpo import dpo_loss, dpo_objective
from mlx_align.stages.grpo_rollouts import (
    draw,
    read_prompt_splits,
    seed_for_rank,
    write_samples,
)
from mlx_align.train.reference import live_reference
from mlx_align.train.stage import Job, Stage, StageRun, adapters_or_model, run_stage

SAMPLER_STATS = ("judge/ties", "val/contain_eos_token")
SCORE_STATS = ("objective/scores", "objective/scores_margin")


class OnlinePairs:
    """Micro-batch k: a pair per prompt sampled from the policy, judged, batched chosen first."""

    def __init__(self, config: OnlineDPOConfig, model, tokenizer, records, judge):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.records, self.judge = records, judge
        room = config.max_length - config.max_completion_tokens
        self.prompts = encode_prompts(tokenizer, records, room, report=tqdm.write)
        lengths = [len(p) for p in self.prompts]
        self.plan = BatchPlan.by_length(
            lengths, config.batch_size, config.seed, fill_last=distributed.size() > 1
        )
        self.eos_ids = set(tokenizer.eos_token_ids)
        self.pad_id = pad_id_of(tokenizer)
        self.buckets = bucket_lengths(config.max_length)
        self.shared_prompts = supports_shared_prompts(model)
        self.reference: nn.Module | None = None  # the start: adapters off
        self.sampler: FusedSampler | None = None
        self.scored = bool(config.reward_model or config.reward)  # they give scores
        self.stat_names = [*SAMPLER_STATS, *(SCORE_STATS if self.scored else ())]
        self.samples_path = Path(config.out) / "samples.jsonl"

    def micro_batch(self, k: int) -> OnlineDPOBatch:
        config = self.config
        if distributed.size() > 1 and k % config.grad_accumulation == 0:
            seed_for_rank(config.seed, k // config.grad_accumulation + 1)
        indices = self.plan.local_batch(k)
        with sampling_model(self.model, self.sampler) as model:
            prompts = [self.prompts[i] for i in indices]
            groups = draw(model, config, prompts, 2, self.eos_ids)
        texts = [tuple(self.decode(c) for c in g.completions) for g in groups]
        tic = time.perf_counter()
        verdicts = self.judge([self.records[i] for i in indices], texts)
        emit("rewards", seconds=time.perf_counter() - tic)
        if k % max(config.log_every, 1) == 0 and distributed.is_main():
            flat = [t for pair in texts for t in pair]
            write_samples(self.samples_path, k, self.tokenizer, groups, flat, judged(verdicts))  # fmt: skip
        return self.batch(indices, groups, verdicts)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos_ids])

    def batch(self, indices, groups: list[Group], verdicts: Verdicts) -> OnlineDPOBatch:
        """The pairs chosen first; a tie keeps its order and is marked filler."""
        ordered = [
            g.completions if p != 1 else g.completions[::-1]
            for g, p in zip(groups, verdicts.preferred, strict=True)
        ]
        inputs = self.inputs([g.prompt for g in groups], ordered)
        reference = pair_logps(inputs, self.reference, self.config.ld_alpha)[0]
        reference = mx.stop_gradient(reference)
        index = [i if p is not None else -1 for i, p in zip(indices, verdicts.preferred, strict=True)]  # fmt: skip
        stats = self.stats(groups, verdicts)
        mx.eval(reference)
        return OnlineDPOBatch(inputs, mx.array(index), reference, mx.array(stats))

    def inputs(self, prompts, pairs) -> FullRows | SharedPrompt:
        """Chosen completions in slot 0, rejected in slot 1 (``batches/layouts.py``)."""
        if self.shared_prompts:
            widths = (
                bucket_for(max(map(len, prompts)), self.buckets),
                self.config.max_completion_tokens,
            )
            flat = [c for pair in pairs for c in pair]
            return SharedPrompt.pad(prompts, flat, len(prompts), self.pad_id, widths)
        rows = [
            Encoded(p + pair[slot], len(p))
            for slot in (0, 1)
            for p, pair in zip(prompts, pairs, strict=True)
        ]
        return FullRows.pad(rows, len(rows), self.buckets, self.pad_id)

    def stats(self, groups: list[Group], verdicts: Verdicts) -> list[float]:
        ties = sum(p is None for p in verdicts.preferred) / len(groups)
        ends = [c[-1] in self.eos_ids for g in groups for c in g.completions if c]
        values = [ties, sum(ends) / max(2 * len(groups), 1)]
        if self.scored:
            scores, preferred = verdicts.scores, verdicts.preferred
            margins = [s[p] - s[1 - p] for s, p in zip(scores, preferred, strict=True) if p is not None]  # fmt: skip
            flat = [x for s in scores for x in s]
            values += [sum(flat) / len(flat), sum(margins) / max(len(margins), 1)]
        return values


def judged(verdicts: Verdicts) -> mx.array:
    """Each completion's figure in ``samples.jsonl``: the judge's score where it
    gives scores, else 1 for the preferred of the pair, 0 for the other, ½ each on a tie."""
    if verdicts.scores is not None:
        return mx.array([x for pair in verdicts.scores for x in pair])
    won = [(1.0, 0.0) if p == 0 else (0.0, 1.0) if p == 1 else (0.5, 0.5) for p in verdicts.preferred]  # fmt: skip
    return mx.array([x for pair in won for x in pair])


def online_dpo_loss(
    model: nn.Module,
    batch: OnlineDPOBatch,
    *,
    objective,
    beta: float,
    stat_names: list[str],
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
):
    """``dpo_loss`` on the judged pairs, with TRL's online-DPO metrics.

    Over the judged (untied) pairs: ``objective/kl`` = mean Σ (log π − log
    π_ref) per completion, ``objective/entropy`` = −mean Σ log π (the
    sampled estimate), ``objective/non_score_reward`` = −β·kl, and with
    scores ``objective/rlhf_reward`` = scores − β·kl.
    """
    loss, n_tokens, metrics = dpo_loss(
        model,
        batch,
        objective=objective,
        ld_alpha=ld_alpha,
        use_weighting=use_weighting,
    )
    stats = {name: batch.stats[i] for i, name in enumerate(stat_names)}
    kl = (metrics["rewards/chosen"] + metrics["rewards/rejected"]) / (2 * beta)
    extra = {
        "objective/kl": kl,
        "objective/entropy": -(metrics["logps/chosen"] + metrics["logps/rejected"]) / 2,
        "objective/non_score_reward": -beta * kl,
        "beta": mx.array(beta),
    }
    if "objective/scores" in stats:
        extra["objective/rlhf_reward"] = stats["objective/scores"] - beta * kl
    return loss, n_tokens, {**metrics, **extra, **stats}


def one_sample_each(model: nn.Module, prompts, pairs: OnlinePairs) -> list[str]:
    """One sampled completion per prompt, decoded."""
    model.eval()
    groups = draw(model, pairs.config, prompts, 1, pairs.eos_ids)
    return [pairs.decode(g.completions[0]) for g in groups]


def win_rate(
    policy: nn.Module, start: nn.Module, pairs: OnlinePairs, records: list[Record]
) -> tuple[float, float]:
    """(win rate, tie share) of one policy sample against one of the start, per prompt."""
    room = pairs.config.max_length - pairs.config.max_completion_tokens
    prompts = encode_prompts(pairs.tokenizer, records, room, report=tqdm.write)
    mx.random.seed(pairs.config.seed)
    mine = one_sample_each(policy, prompts, pairs)
    theirs = one_sample_each(start, prompts, pairs)
    verdicts = pairs.judge(records, list(zip(mine, theirs, strict=True)))
    ties = sum(p is None for p in verdicts.preferred)
    wins = sum(p == 0 for p in verdicts.preferred) + ties / 2
    return wins / len(records), ties / len(records)


def run_online_dpo(config: OnlineDPOConfig) -> Path:
    """Train with online DPO; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    return run_stage(ONLINE_DPO, config)


def online_data(run: StageRun) -> OnlinePairs:
    return OnlinePairs(run.config, run.model, run.tokenizer, run.records[0], judge=None)


def online_reference(run: StageRun) -> nn.Module:
    """The start: the DPO loss's reference, the judge's model when it judges
    itself, and the opponent of the held-out win rate."""
    return live_reference(run.config, run.model)


def online_job(run: StageRun) -> Job:
    config, pairs = run.config, run.data
    if should_fuse(run.model, config.fuse_rollout):
        pairs.sampler = FusedSampler(run.model)
    pairs.reference = run.reference
    pairs.judge = make_judge(config, start=lambda: (run.reference, run.tokenizer))
    tqdm.write(
        f"online DPO: {len(run.records[0])} prompts, {config.batch_size} pairs per micro-batch"
    )
    loss_fn = partial(
        online_dpo_loss,
        objective=dpo_objective(config),
        beta=config.beta,
        stat_names=pairs.stat_names,
        ld_alpha=config.ld_alpha,
        use_weighting=config.use_weighting,
    )
    held_out = run.records[1]
    return Job(
        loss_fn,
        pairs.micro_batch,
        held_out=partial(win_rates, run, held_out) if held_out else None,
    )


def win_rates(run: StageRun, held_out: list[Record]) -> dict[str, float]:
    """The held-out win rate against the start, as an evaluation logs it."""
    rate, ties = win_rate(run.model, run.reference, run.data, held_out)
    tqdm.write(f"held-out win rate against the start: {rate:.3f} (ties {ties:.3f})")
    return {"val_win_rate": rate, "val_win_ties": ties}


ONLINE_DPO = Stage(
    online_job,
    read=lambda config: read_prompt_splits(config, "train", "valid"),
    data=online_data,
    reference=online_reference,
    write=adapters_or_model,
)
