"""``mlx-align plan STAGE`` and ``--memory-limit``: a run's peak memory before it loads.

``plan_stage`` reads the stage's data with its own readers and batchers
(the tokenizer only), finds the micro-batch that costs the most, and adds
up ``train/memory_plan.py``'s parts on a lazily built model
(``model/footprint.py``: no weight is read). ``fit_to_memory`` turns a plan
over ``--memory-limit`` into settings that fit, trying in order a token
budget per piece (pair stages), gradient checkpointing and gradient
accumulation (half the batch, twice the micro-batches); each keeps the
update the same. When none fits, one line and exit 2, before any weight loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from collections.abc import Callable, Iterable

from mlx_align.batches.budget import fit_to_budget, token_budget
from mlx_align.batches.layouts import FullRows, Packed, SharedPrompt
from mlx_align.batches.planning import (
    BatchPlan,
    bucket_for,
    bucket_lengths,
    piece_bucket_lengths,
    visited_batches,
)
from mlx_align.core.errors import UserError
from mlx_align.core.sizes import parse_size
from mlx_align.model.footprint import Footprint, footprint, kv_width, lazy_model
from mlx_align.sampling.fused_sampler import fused_copy_bytes, should_fuse
from mlx_align.train.adapted import adapter_config
from mlx_align.train.memory_plan import Geometry, MemoryPlan, gb, training_parts

PAIR_STAGES = ("dpo", "orpo", "cpo", "reward")
SAMPLING_STAGES = ("grpo", "rloo", "ppo", "online-dpo")


def geometry_of(layout) -> Geometry:
    """The positions and attention of one batch in any layout."""
    if isinstance(layout, SharedPrompt):
        (p, pw), (c, cw) = layout.prompts.shape, layout.completions.shape
        return Geometry.shared_prompt(p, pw, c, cw)
    if isinstance(layout, (FullRows, Packed)):
        return Geometry.full_rows(*layout.tokens.shape)
    raise TypeError(f"no geometry for {type(layout).__name__}")


def likely_layout(model, padding_free: bool) -> str:
    """The layout ``layouts.choose_layout`` would pick, without its probes (which
    run the model): shared prompts where every layer keeps a plain KV cache."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    plain = all(type(c) is KVCache for c in make_prompt_cache(model))
    return ("packed" if padding_free else "shared") if plain else "full"


def worst(geometries: Iterable[Geometry], fp: Footprint) -> Geometry:
    return max(geometries, key=lambda g: g.cost(fp))


def pair_geometries(config, tokenizer, layout: str) -> Iterable[Geometry]:
    """Every piece of every train batch the run visits, as ``planned_batch`` cuts it."""
    from mlx_align.train.pairs import pair_splits
    from mlx_align.train.stage import StageRun

    train_set, _ = pair_splits(StageRun(config, tokenizer=tokenizer))
    make = train_set.maker(layout)
    budget = (
        token_budget(config, make, train_set.plan)
        if hasattr(config, "max_batch_tokens")
        else 0
    )
    for indices in visited_batches(train_set.plan, config, "train"):
        fitted = fit_to_budget(make, indices, train_set.batch_size, budget)
        for batch in [b for b, _ in fitted] if isinstance(fitted, list) else [fitted]:
            yield geometry_of(batch.inputs)


def row_geometries(stage: str, config, tokenizer) -> Iterable[Geometry]:
    """SFT's and pretraining's padded rows; KTO's matched + mismatched rows."""
    from mlx_align.train.stage import StageRun

    if stage == "kto":
        from mlx_align.stages.kto import KTO as phases
    else:
        from mlx_align.data.sft import encode_pretrain_record
        from mlx_align.data.tokenize import encode_sft_record
        from mlx_align.stages.sft import sft_stage

        encoder = encode_pretrain_record if stage == "pretrain" else encode_sft_record
        phases = sft_stage(encoder)
    run = StageRun(config, tokenizer=tokenizer)
    run.records = phases.read(config)
    train_set = phases.data(run)[0]
    for indices in visited_batches(train_set.plan, config, "train"):
        yield geometry_of(train_set.pad(indices).inputs if stage == "kto" else train_set.pad(indices))  # fmt: skip


def sampled_geometry(
    stage: str, config, tokenizer, layout: str
) -> tuple[Geometry, int, int]:
    """(the training batch of the longest prompts, completion rows, prompt width)
    of a sampling stage: each prompt with its completions of at most
    ``--max-completion-tokens``."""
    from mlx_align.data.prompts import encode_prompts
    from mlx_align.stages.grpo_rollouts import read_prompt_splits

    records = read_prompt_splits(config, "train")[0]
    room = config.max_length - config.max_completion_tokens
    prompts = encode_prompts(tokenizer, records, room, report=lambda _: None)
    plan = BatchPlan.by_length(
        [len(p) for p in prompts], config.batch_size, config.seed
    )
    longest = max(max(len(prompts[i]) for i in b) for b in visited_batches(plan, config, "train"))  # fmt: skip
    group = 2 if stage == "online-dpo" else config.group_size if hasattr(config, "group_size") else 1  # fmt: skip
    rows = config.batch_size * group
    width = bucket_for(longest, piece_bucket_lengths(config.max_length))
    span = bucket_for(
        config.max_completion_tokens, piece_bucket_lengths(config.max_length)
    )
    if layout == "full":
        total = bucket_for(longest + config.max_completion_tokens, bucket_lengths(config.max_length))  # fmt: skip
        return Geometry.full_rows(rows, total), rows, width
    return Geometry.shared_prompt(config.batch_size, width, rows, span), rows, width


def side_models(stage: str, config) -> list[tuple[str, str]]:
    """(part name, model) of the other models a stage holds: judge, reward, critic."""
    found = []
    for flag, name in (("reward_model", "reward model"), ("judge_model", "judge model"), ("value_model", "critic backbone")):  # fmt: skip
        if getattr(config, flag, ""):
            found.append((name, getattr(config, flag)))
    if stage == "ppo" and not getattr(config, "value_model", ""):
        found.append(("critic adapters", ""))
    return found


def plan_stage(stage: str, config) -> MemoryPlan:
    """The predicted peak of ``mlx-align STAGE`` with ``config``."""
    from mlx_lm.utils import load_tokenizer

    model, _ = lazy_model(config.model)
    layout = likely_layout(model, getattr(config, "padding_free", False))
    if stage == "reward":  # a score at each row's last token: full rows
        layout = "full"
    adapters = (
        None if getattr(config, "full", stage == "pretrain") else adapter_config(config)
    )
    fp = footprint(model, adapters, getattr(config, "quantize", 0))
    tokenizer = load_tokenizer(config.model)
    plan = MemoryPlan(stage)
    plan.notes.append(f"  layout: {layout}; batch {config.batch_size} x {config.grad_accumulation} accumulation")  # fmt: skip
    if stage in SAMPLING_STAGES:
        geometry, rows, width = sampled_geometry(stage, config, tokenizer, layout)
    elif stage in PAIR_STAGES:
        geometry = worst(pair_geometries(config, tokenizer, layout), fp)
    else:
        geometry = worst(row_geometries(stage, config, tokenizer), fp)
    training_parts(plan, fp, geometry, config.grad_checkpoint, stage != "reward")
    if stage in SAMPLING_STAGES:
        cache = rows * (width + config.max_completion_tokens) * kv_width(model) * fp.dtype_bytes  # fmt: skip
        plan.add("sampling caches", cache, f"{rows} rows' keys and values")
        if stage in ("grpo", "rloo") and should_fuse(model, config.fuse_rollout):
            plan.add("fused sampling copy", fused_copy_bytes(model), "--fuse-rollout")
    for name, path in side_models(stage, config):
        if path:
            other, _ = lazy_model(path)
            plan.add(name, footprint(other, None).weight_bytes)
        else:
            plan.add(name, 4 * fp.trainable_bytes, "a second set of adapters")
    return plan


def fit_to_memory(stage: str, config, echo: Callable[[str], None]) -> object:
    """``config``, or the cheapest change of it whose plan fits ``--memory-limit``."""
    limit = parse_size(config.memory_limit)
    if not limit:
        return config
    plan = quiet_plan(stage, config)
    if plan.peak <= limit:
        echo(f"memory plan: peak {gb(plan.peak)}, under the {gb(limit)} limit")  # fmt: skip
        return config
    tried = [(config, plan, "as given")]
    for change, why in fits(config, plan):
        fitted = quiet_plan(stage, change)
        tried.append((change, fitted, why))
        if fitted.peak <= limit:
            echo(f"memory plan: {gb(plan.peak)} is over the {gb(limit)} limit; {why}: {gb(fitted.peak)}")  # fmt: skip
            return change
    smallest = min(tried, key=lambda t: t[1].peak)
    raise UserError(
        "--memory-limit",
        f"the run needs about {gb(plan.peak)}, over {gb(limit)}; "
        f"the smallest plan ({smallest[2]}) still needs {gb(smallest[1].peak)} "
        "(`mlx-align plan` shows the parts)",
    )


def quiet_plan(stage: str, config) -> MemoryPlan:
    """``plan_stage`` without the data readers' reports, which the run itself prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return plan_stage(stage, config)


def fits(config, plan: MemoryPlan) -> Iterable[tuple[object, str]]:
    """Settings that cut ``plan``'s peak and keep the update, cheapest first."""
    if getattr(config, "max_batch_tokens", 0) != 0:  # below the widest batch
        budget = 1 << (plan.geometry.positions - 1).bit_length() - 1
        while budget >= 64:
            yield dataclasses.replace(config, max_batch_tokens=budget), f"--max-batch-tokens {budget}"  # fmt: skip
            budget //= 2
    current = config
    if not config.grad_checkpoint:
        current = dataclasses.replace(config, grad_checkpoint=True)
        yield current, "--grad-checkpoint"
    while current.batch_size > 1 and current.batch_size % 2 == 0:
        current = dataclasses.replace(current, batch_size=current.batch_size // 2, grad_accumulation=current.grad_accumulation * 2)  # fmt: skip
        yield current, f"--grad-checkpoint --batch-size {current.batch_size} --grad-accumulation {current.grad_accumulation}"  # fmt: skip


def print_plan(stage: str, config) -> None:
    """``mlx-align plan``'s output: the parts, the peak, and how it stands to the limit."""
    plan = plan_stage(stage, config)
    print("\n".join(plan.lines()))
    limit = parse_size(config.memory_limit)
    if limit and plan.peak > limit:
        print(f"over the {gb(limit)} limit: the run would change its settings or stop", file=sys.stderr)  # fmt: skip
