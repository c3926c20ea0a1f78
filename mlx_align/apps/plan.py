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
from mlx_align.sampling.fused_sampler import fusable_adapters, fused_copy_bytes
from mlx_align.train.adapted import adapter_config
from mlx_align.train.memory_plan import (
    ADAM_COPIES,
    SAMPLING,
    STEP,
    Geometry,
    MemoryPlan,
    activations,
    gb,
    training_parts,
    transient,
)

PAIR_STAGES = ("dpo", "orpo", "cpo", "reward")
CRITIC_SCORES = 0.5  # measured: bench/plan.py --stages ppo
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


def completions_per_prompt(stage: str, config) -> int:
    """Online DPO samples a pair; GRPO and RLOO a group; PPO one."""
    return 2 if stage == "online-dpo" else getattr(config, "group_size", 1)


def sampled_geometry(
    stage: str, config, tokenizer, layout: str
) -> tuple[Geometry, int]:
    """(the training batch of the longest prompts, their prompt width)
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
    rows = config.batch_size * completions_per_prompt(stage, config)
    width = bucket_for(longest, piece_bucket_lengths(config.max_length))
    span = bucket_for(
        config.max_completion_tokens, piece_bucket_lengths(config.max_length)
    )
    if layout == "full":
        total = bucket_for(longest + config.max_completion_tokens, bucket_lengths(config.max_length))  # fmt: skip
        return Geometry.full_rows(rows, total), width
    return Geometry.shared_prompt(config.batch_size, width, rows, span), width


def sampling_parts(
    plan: MemoryPlan, stage: str, config, model, fp: Footprint, prompt_width: int
) -> None:
    """What a rollout holds while it samples (freed before the step): every sampled
    row's keys and values (mlx-lm's ``KVCache`` grows by ``step`` positions), and
    the fused copy of the adapted weights."""
    from mlx_lm.models.cache import KVCache

    rows = config.batch_size * completions_per_prompt(stage, config)
    if stage == "ppo":  # a rollout batch holds every mini-batch of the update
        rows *= config.grad_accumulation * config.num_mini_batches
    step = KVCache.step
    positions = -(-(prompt_width + config.max_completion_tokens) // step) * step
    cache = rows * positions * kv_width(model) * fp.dtype_bytes
    plan.add("sampling caches", cache, f"{rows} rows' keys and values", SAMPLING)
    if not fusable_adapters(model):  # none, or a quantized base: never fused
        return
    copy = fused_copy_bytes(model)
    if config.fuse_rollout == "auto":  # fuse only where the copy costs no peak
        peaks = plan.phase_peaks()
        fuse = peaks[SAMPLING] + copy <= peaks[STEP]
        plan.choices["fuse_rollout"] = "on" if fuse else "off"
        plan.notes.append(
            f"  --fuse-rollout auto: {'on' if fuse else 'off'} (the copy, {gb(copy)}, "
            f"{'fits under' if fuse else 'would raise'} the step's peak)"
        )
        if not fuse:
            return
    elif config.fuse_rollout == "off":
        return
    plan.add("fused sampling copy", copy, "--fuse-rollout", SAMPLING)


def side_models(config) -> list[tuple[str, str]]:
    """(part name, model) of the other models a stage holds: a judge, a reward model."""
    found = []
    for flag, name in (("reward_model", "reward model"), ("judge_model", "judge model")):  # fmt: skip
        if getattr(config, flag, ""):
            found.append((name, getattr(config, flag)))
    return found


def plan_stage(stage: str, config) -> MemoryPlan:
    """The predicted peak of ``mlx-align STAGE`` with ``config``."""
    from mlx_lm.utils import load_tokenizer

    model, _ = lazy_model(config.model)
    layout = likely_layout(model, getattr(config, "padding_free", False))
    if stage in ("reward", "ppo"):  # a score / a value at each token: full rows
        layout = "full"
    adapters = (
        None if getattr(config, "full", stage == "pretrain") else adapter_config(config)
    )
    fp = footprint(model, adapters, getattr(config, "quantize", 0))
    tokenizer = load_tokenizer(config.model)
    plan = MemoryPlan(stage)
    plan.notes.append(f"  layout: {layout}; batch {config.batch_size} x {config.grad_accumulation} accumulation")  # fmt: skip
    if stage in SAMPLING_STAGES:
        geometry, prompt_width = sampled_geometry(stage, config, tokenizer, layout)
    elif stage in PAIR_STAGES:
        geometry = worst(pair_geometries(config, tokenizer, layout), fp)
    else:
        geometry = worst(row_geometries(stage, config, tokenizer), fp)
    training_parts(plan, fp, geometry, config.grad_checkpoint, stage != "reward")
    for name, path in side_models(config):
        other, _ = lazy_model(path)
        plan.add(name, footprint(other, None).weight_bytes)
    if stage == "ppo":
        critic_parts(plan, config, fp, adapters, geometry)
    if stage in SAMPLING_STAGES:  # last: whether to fuse weighs the step's peak
        sampling_parts(plan, stage, config, model, fp, prompt_width)
    return plan


def critic_parts(plan: MemoryPlan, config, fp: Footprint, adapters, geometry) -> None:
    """PPO's critic: its trainable state, and what its branch of the step adds.

    The step differentiates policy loss + vf_coef · value loss, but MLX runs the
    critic's forward and backward before the policy's (the branches share no
    node), so the two sets of activations are not held together: measured, the
    step is the larger branch plus about half of one attention call's buffers.
    """
    critic = fp
    if config.value_model:
        other, _ = lazy_model(config.value_model)
        critic = footprint(other, adapters, config.quantize)
        plan.add("critic backbone", critic.frozen_bytes)
    plan.add("critic trainable + optimizer", ADAM_COPIES * critic.trainable_bytes)
    checkpoint = config.grad_checkpoint
    larger = activations(critic, geometry, checkpoint) - activations(fp, geometry, checkpoint)  # fmt: skip
    extra = max(0.0, larger) + CRITIC_SCORES * transient(critic, geometry)
    plan.add("critic branch", extra, "run before the policy's", STEP)


def fit_to_memory(stage: str, config, echo: Callable[[str], None]) -> object:
    """``config``, or the cheapest change of it whose plan fits ``--memory-limit``."""
    limit = parse_size(config.memory_limit)
    if not limit:
        return config
    plan = quiet_plan(stage, config)
    if plan.peak <= limit:
        echo(f"memory plan: peak {gb(plan.peak)}, under the {gb(limit)} limit")  # fmt: skip
        return resolved(config, plan, echo)
    tried = [(config, plan, "as given")]
    for change, why in fits(config, plan):
        fitted = quiet_plan(stage, change)
        tried.append((change, fitted, why))
        if fitted.peak <= limit:
            echo(f"memory plan: {gb(plan.peak)} is over the {gb(limit)} limit; {why}: {gb(fitted.peak)}")  # fmt: skip
            return resolved(change, fitted, echo)
    smallest = min(tried, key=lambda t: t[1].peak)
    raise UserError(
        "--memory-limit",
        f"the run needs about {gb(plan.peak)}, over {gb(limit)}; "
        f"the smallest plan ({smallest[2]}) still needs {gb(smallest[1].peak)} "
        "(`mlx-align plan` shows the parts)",
    )


def resolved(config, plan: MemoryPlan, echo: Callable[[str], None]) -> object:
    """``config`` with the settings the plan decided (``--fuse-rollout auto``)."""
    for name in plan.choices:
        flag = "--" + name.replace("_", "-")
        echo("memory plan: " + next(n.strip() for n in plan.notes if flag in n))
    return dataclasses.replace(config, **plan.choices)


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
