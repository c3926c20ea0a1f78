"""DPO, ORPO and CPO on a tiny model: reference = base with adapters off, cached; metrics move."""

import json
import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import mlx_lm
import numpy as np
import pytest
from conftest import write_jsonl

from mlx_align.batches.layouts import LAYOUTS
from mlx_align.batches.preference import PairBatches, encode_pairs
from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import CPOConfig, DPOConfig, ORPOConfig
from mlx_align.core import events
from mlx_align.data.jsonl import read_jsonl
from mlx_align.losses import dpo as dpo_losses
from mlx_align.model.adapters import attach_adapters
from mlx_align.model.logprobs import sequence_logps
from mlx_align.stages.cpo import run_cpo
from mlx_align.stages.dpo import dpo_loss, dpo_objective, run_dpo
from mlx_align.stages.orpo import run_orpo
from mlx_align.train import reference

WORDS = "apple river stone cloud tiger piano lemon forest candle rocket violin garden".split()
LORA = {
    "fine_tune_type": "lora",
    "num_layers": -1,
    "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
}


def preference_rows(words, chosen=" It is good.", rejected=" It is bad."):
    return [
        {
            "prompt": f"Question: What about the {w} {i}?\nAnswer:",
            "chosen": chosen,
            "rejected": rejected,
        }
        for i in range(4)
        for w in words
    ]


@pytest.fixture(scope="module")
def pref_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    write_jsonl(root / "train.jsonl", preference_rows(WORDS[:8]))
    write_jsonl(root / "valid.jsonl", preference_rows(WORDS[8:]))  # held-out prompts
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))


def dpo_config(model, data, out, **overrides):
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        steps=30,
        batch_size=8,
        learning_rate=5e-3,
        warmup_steps=2,
        eval_every=0,
        log_every=5,
        save_every=0,
        lora_rank=8,
        lora_alpha=16,
        compile=False,
        beta=0.5,
        max_length=64,
    )
    return {**settings, **overrides}


def metrics_of(run_dir):
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def batch_of(model_dir, data_dir):
    model, tokenizer = mlx_lm.load(str(model_dir))
    pairs = encode_pairs(tokenizer, read_jsonl(data_dir / "train.jsonl"), 64)
    batches = PairBatches(pairs, 4, 64, tokenizer.pad_token_id, seed=0)
    return model, batches


def test_dpo_raises_held_out_implicit_reward_accuracy(tiny_model, pref_dir, tmp_path):
    out = tmp_path / "dpo"
    run_dpo(
        DPOConfig(**dpo_config(tiny_model, pref_dir, out, eval_every=10, compile=True))
    )
    lines = metrics_of(out)
    val = [m for m in lines if "val_loss" in m]
    assert val[-1]["val_rewards/accuracies"] >= 0.9
    assert val[-1]["val_loss"] < math.log(2) - 0.1  # below the ln 2 it starts at
    assert val[-1]["val_rewards/margins"] > 0
    assert (out / "adapters.safetensors").exists()
    # Implicit rewards at step 0 are all 0 (policy == reference): accuracy 0 with strict >.
    model, tokenizer = mlx_lm.load(str(tiny_model))
    trained, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    valid = encode_pairs(tokenizer, read_jsonl(pref_dir / "valid.jsonl"), 64)
    correct = 0
    valid_set = PairBatches(valid, 8, 64, tokenizer.pad_token_id, 0)
    for indices in valid_set.plan.batches:
        tokens, mask = valid_set.full(indices)
        index = valid_set.index(indices)
        ref = sequence_logps(model, tokens, mask)[1]
        pol = sequence_logps(trained, tokens, mask)[1]
        chosen, rejected = mx.split(pol - ref, 2)
        correct += int(((chosen > rejected) * (index >= 0)).sum().item())
    assert correct / len(valid) >= 0.9


def test_dpo_loss_is_ln2_at_init_and_a_step_moves_log_ratios_the_right_way(
    tiny_model, pref_dir
):
    model, batches = batch_of(tiny_model, pref_dir)
    indices = batches.plan.batch(0)
    tokens, mask = inputs = batches.full(indices)
    ref = sequence_logps(model, tokens, mask)[1]
    batch = PairBatch(inputs, batches.index(indices), reference=ref)
    attach_adapters(model, LORA)
    objective = dpo_objective(DPOConfig(model="m", data="d", beta=0.1))
    loss, n_tokens, metrics = dpo_loss(model, batch, objective=objective)
    assert loss.item() == pytest.approx(
        math.log(2), abs=1e-6
    )  # lora_b = 0: policy == reference
    assert n_tokens.item() == mask[:, 1:].sum().item()

    grad_fn = nn.value_and_grad(
        model, lambda m: dpo_loss(m, batch, objective=objective)[0]
    )
    optimizer = optim.SGD(learning_rate=0.5)
    for _ in range(
        2
    ):  # lora_a gets no gradient while lora_b = 0; the second step moves both
        _, grads = grad_fn(model)
        optimizer.update(model, grads)
    after = sequence_logps(model, tokens, mask)[1]
    chosen_ratio, rejected_ratio = mx.split(after - ref, 2)
    assert chosen_ratio.mean().item() > 0 > rejected_ratio.mean().item()


def test_reference_with_adapters_off_is_exactly_the_base_model(tiny_model, pref_dir):
    model, batches = batch_of(tiny_model, pref_dir)
    before = score_all(model, batches)
    attach_adapters(model, LORA)
    model.update(
        {
            "model": {
                "layers": [{"self_attn": {"q_proj": {"lora_b": mx.ones((4, 64))}}}] * 2
            }
        }
    )
    shared = reference.shared_reference(model, str(tiny_model))
    fresh, _ = mlx_lm.load(str(tiny_model))
    assert mx.array_equal(score_all(shared, batches), before).item()
    assert mx.array_equal(score_all(fresh, batches), before).item()
    policy = score_all(model, batches)
    assert not mx.allclose(policy, before).item()  # the adapters do change the policy


def score_all(model, batches):
    logps = np.full((len(batches.pairs), 2), np.nan, dtype=np.float32)
    make = batches.maker("full")
    reference.score_items(model, map(make, batches.plan.batches), logps)
    assert not np.isnan(logps).any()
    return mx.array(logps)


def test_reference_cache_is_reused_extended_and_invalidated(
    tiny_model, pref_dir, tmp_path
):
    scored = []  # pairs scored per reference pass that scored any

    def count(event, fields):
        if event == "reference" and fields["items"]:
            scored.append(fields["items"])

    def dpo(data, out, steps):
        config = dpo_config(tiny_model, data, tmp_path / out, steps=steps, log_every=1)
        with events.listening(count):
            run_dpo(DPOConfig(**config))

    # 32 train pairs in 4 batches of 8; 2 steps visit 2 of them. 16 valid pairs.
    dpo(pref_dir, "a", steps=2)
    assert scored == [16, 16]  # only the visited train pairs, then the valid split
    dpo(pref_dir, "b", steps=2)
    assert scored == [16, 16]  # both reused from the cache
    dpo(pref_dir, "c", steps=6)
    assert scored == [16, 16, 16]  # a longer run scores only the batches not cached yet
    changed = tmp_path / "changed"
    write_jsonl(changed / "train.jsonl", preference_rows(WORDS[:8], chosen=" Fine."))
    (changed / "valid.jsonl").write_text((pref_dir / "valid.jsonl").read_text())
    dpo(changed, "d", steps=2)
    assert scored == [16] * 4  # new train data recomputed, unchanged valid reused


@pytest.mark.parametrize("compiled", [False, True])
def test_no_precompute_matches_precomputed_reference(
    compiled, tiny_model, pref_dir, tmp_path
):
    settings = dict(steps=3, log_every=1, compile=compiled)
    run_dpo(DPOConfig(**dpo_config(tiny_model, pref_dir, tmp_path / "pre", **settings)))
    run_dpo(
        DPOConfig(
            **dpo_config(
                tiny_model, pref_dir, tmp_path / "live", precompute=False, **settings
            )
        )
    )
    pre, live = metrics_of(tmp_path / "pre"), metrics_of(tmp_path / "live")
    assert len(pre) == len(live) == 4  # three steps and the final eval
    for a, b in zip(pre, live, strict=True):
        key = "loss" if "loss" in a else "val_loss"
        assert a[key] == pytest.approx(b[key], abs=1e-5)


def test_padding_free_run_matches_the_padded_run(tiny_model, pref_dir, tmp_path):
    """``--padding-free`` (compiled; reference precomputed or run every step, packed
    too) trains the same curve as padded batches."""
    settings = dict(steps=3, log_every=1, compile=True, eval_every=3)
    run_dpo(DPOConfig(**dpo_config(tiny_model, pref_dir, tmp_path / "pad", **settings)))
    run_dpo(
        DPOConfig(
            **dpo_config(
                tiny_model, pref_dir, tmp_path / "free", padding_free=True, **settings
            )
        )
    )
    run_dpo(  # the reference runs every step, packed as well
        DPOConfig(
            **dpo_config(
                tiny_model,
                pref_dir,
                tmp_path / "live",
                padding_free=True,
                precompute=False,
                **settings,
            )
        )
    )
    padded, packed = metrics_of(tmp_path / "pad"), metrics_of(tmp_path / "free")
    live = metrics_of(tmp_path / "live")
    assert len(padded) == len(packed) == len(live) == 4
    for a, b, c in zip(padded, packed, live, strict=True):
        for key in ("loss", "val_loss", "val_rewards/margins"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), key
                assert a[key] == pytest.approx(c[key], abs=1e-4), key
    assert packed[-1]["val_rewards/margins"] != 0  # the run trained


LOSS_SETTINGS = {
    "robust": {"label_smoothing": 0.1},
    "exo_pair": {"label_smoothing": 1e-3},
    "aot": {"label_smoothing": 0.1},
    "discopop": {"discopop_tau": 0.2},
}


@pytest.mark.parametrize(
    "loss",
    [(name,) for name in dpo_losses.DPO_LOSSES if name != "sigmoid"]
    + [("sigmoid", "bco_pair", "sft")],
    ids="+".join,
)
def test_every_dpo_loss_trains(loss, tiny_model, pref_dir, tmp_path):
    """Each of TRL's loss types (sigmoid has its own tests), and a weighted sum,
    widens the reward margin from 0 (step 1: policy == reference) in 12 steps;
    sft alone raises the chosen log-probs."""
    extra = LOSS_SETTINGS.get(loss[0], {})
    if len(loss) > 1:
        extra = {"loss_weights": "0.8,0.2,1.0"}
    out = tmp_path / "+".join(loss)
    run_dpo(
        DPOConfig(
            **dpo_config(
                tiny_model, pref_dir, out, loss=loss, steps=12, log_every=1, **extra
            )
        )
    )
    lines = [m for m in metrics_of(out) if "loss" in m]
    moved = "logps/chosen" if loss == ("sft",) else "rewards/margins"
    assert lines[-1][moved] > lines[0][moved] + 0.05


@pytest.mark.parametrize("padding_free", [False, True])
def test_orpo_moves_chosen_logps_above_rejected(
    padding_free, tiny_model, pref_dir, tmp_path
):
    out = tmp_path / "orpo"
    settings = dict(eval_every=10, beta=1.0, padding_free=padding_free)
    run_orpo(ORPOConfig(**dpo_config(tiny_model, pref_dir, out, **settings)))
    val = [m for m in metrics_of(out) if "val_loss" in m]
    first, last = val[0], val[-1]
    gap = lambda m: m["val_logps/chosen"] - m["val_logps/rejected"]  # noqa: E731
    assert gap(last) > gap(first) and gap(last) > 0
    assert last["val_rewards/accuracies"] >= 0.9


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "sigmoid"},  # CPO: with the chosen NLL (cpo_alpha 1)
        {"loss": "simpo", "cpo_alpha": 0.0, "beta": 2.0},  # SimPO
        {"loss": "alphapo", "alpha": 0.25, "beta": 2.0},  # AlphaPO
        {"loss": "ipo", "padding_free": True},
    ],
    ids=lambda s: s["loss"],
)
def test_cpo_family_widens_the_held_out_margin_without_a_reference(
    settings, tiny_model, pref_dir, tmp_path
):
    """No reference model loads (no reference pass runs); the reward margin
    β·(r(y_c) − r(y_r)) grows from its start (step 1) to the held-out end, and
    the held-out pairs rank right. IPO's margin goes to its target β·1/(2β) = ½
    instead of growing without end."""
    out = tmp_path / "cpo"
    config = dpo_config(tiny_model, pref_dir, out, eval_every=30, log_every=1)
    config.update(settings, beta=settings.get("beta", 0.5))
    seen = []
    with events.listening(lambda event, fields: seen.append(event)):
        run_cpo(CPOConfig(**config))
    assert "batch" in seen and "reference" not in seen
    start = metrics_of(out)[0]["rewards/margins"]
    end = next(m for m in metrics_of(out) if "val_loss" in m)
    if settings["loss"] == "ipo":
        assert abs(start - 0.5) > 0.2 and end["val_rewards/margins"] == pytest.approx(0.5, abs=0.1)  # fmt: skip
    else:
        assert end["val_rewards/margins"] > start + 1.0
    assert end["val_rewards/accuracies"] >= 0.9
    nll = [m["nll_loss"] for m in metrics_of(out) if "nll_loss" in m]
    with_nll = settings["loss"] != "alphapo" and settings.get("cpo_alpha", 1.0) > 0
    assert all(math.isfinite(x) for x in nll) and bool(nll) == with_nll


@pytest.mark.parametrize("layout", ["full", "shared", "packed"])
def test_ld_dpo_weighs_the_tokens_past_the_shorter_completion(
    layout, tiny_model, tmp_path
):
    """--ld-alpha 0.5 on pairs whose chosen is longer than its rejected: each
    pair's first min(l_c, l_r) tokens count once, the longer one's rest half,
    in every layout (checked against the full rows' per-token log-probs, a
    filler pair included); α = 1 is the plain sum."""
    from mlx_align.batches.layouts import pair_logps

    data = tmp_path / "pairs"
    write_jsonl(
        data / "train.jsonl",
        preference_rows(
            WORDS[:4], chosen=" It is good and fine, yes.", rejected=" Bad."
        ),
    )
    model, batches = batch_of(tiny_model, data)
    if layout == "packed":
        from mlx_align.batches.packing import enable_packing

        enable_packing(model)
    indices = batches.plan.batches[-1][:3]  # three pairs and a filler
    per_token, mask = batches.full(indices).token_logps(model)
    per_token, mask = np.array(per_token), np.array(mask)
    pairs = len(mask) // 2
    expected = []
    for row in range(len(mask)):
        other = row + pairs if row < pairs else row - pairs
        shared = min(mask[row].sum(), mask[other].sum())
        position = np.cumsum(mask[row]) * mask[row]
        weights = np.where(position <= shared, 1.0, 0.5) * mask[row]
        expected.append(float((per_token[row] * weights).sum()))
    assert any(mask[r].sum() > mask[r + pairs].sum() for r in range(3))
    inputs = (
        batches.inputs(indices, layout) if layout != "full" else batches.full(indices)
    )
    summed, lengths = pair_logps(inputs, model, 0.5)
    np.testing.assert_allclose(np.array(summed), expected, atol=1e-4)
    np.testing.assert_allclose(np.array(lengths), mask.sum(axis=1))
    plain, _ = pair_logps(inputs, model, 1.0)
    np.testing.assert_allclose(np.array(plain), per_token.sum(axis=1), atol=1e-4)


@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_wpo_alignment_term_is_the_same_in_every_layout(layout, tiny_model, pref_dir):
    """log Σ_v π(v)² at each completion position, from the full rows' own
    logits by hand, equals what the shared-prompt and packed layouts compute
    (with the log-probs), so WPO weighs alike whatever the layout."""
    from mlx_align.batches.layouts import pair_token_logps
    from mlx_align.model.logprobs import log_sum_sq_stat

    model, batches = batch_of(tiny_model, pref_dir)
    if layout == "packed":
        from mlx_align.batches.packing import enable_packing

        enable_packing(model)
    indices = batches.plan.batches[0][:3]
    full = batches.full(indices)
    logits = model(full.tokens[:, :-1]).astype(mx.float32)
    probs = mx.softmax(logits, axis=-1)
    mask = full.loss_mask[:, 1:]
    by_hand = mx.log((probs * probs).sum(axis=-1)) * mask  # (2B, T-1)
    _, full_mask, full_stat = pair_token_logps(full, model, log_sum_sq_stat)
    np.testing.assert_allclose(np.array(full_stat), np.array(by_hand), atol=1e-5)
    per_token, other_mask, stat = pair_token_logps(
        batches.inputs(indices, layout), model, log_sum_sq_stat
    )
    # per completion, the statistics in order, whatever the padding
    for row in range(full_mask.shape[0]):
        expected = np.array(by_hand[row])[np.array(full_mask[row]) > 0]
        got = np.array(stat[row])[np.array(other_mask[row]) > 0]
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_wpo_scales_the_first_loss_by_the_pairs_weights(tiny_model, pref_dir, tmp_path):
    """--use-weighting: at step 1 (policy == reference) every pair's loss is
    ln 2 · w_c · w_r with weights in (0, 1], so the logged loss is below ln 2
    (without it, exactly ln 2), and training still widens the margin."""
    runs = {}
    for weighting in (False, True):
        out = tmp_path / f"wpo-{weighting}"
        settings = dict(steps=10, log_every=1, use_weighting=weighting)
        run_dpo(DPOConfig(**dpo_config(tiny_model, pref_dir, out, **settings)))
        runs[weighting] = [m for m in metrics_of(out) if "loss" in m]
    assert runs[False][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert 0 < runs[True][0]["loss"] < math.log(2) - 1e-3
    assert runs[True][-1]["rewards/margins"] > runs[True][0]["rewards/margins"] + 0.05


def test_ld_dpo_trains_with_its_own_cached_reference(tiny_model, tmp_path):
    """The reference is cached LD-weighted, under its own key (a run with α = 1
    on the same data does not reuse it), and the margin rises from 0."""
    data = tmp_path / "pairs"
    rows = preference_rows(
        WORDS[:8], chosen=" It is good and fine, yes.", rejected=" Bad."
    )
    write_jsonl(data / "train.jsonl", rows)
    for alpha in (1.0, 0.5):
        out = tmp_path / f"ld-{alpha}"
        config = dpo_config(tiny_model, data, out, steps=8, log_every=1, ld_alpha=alpha)
        run_dpo(DPOConfig(**config))
    cached = list((tmp_path / "cache" / "reference").glob("*.npy"))
    assert len(cached) == 2
    lines = [m for m in metrics_of(tmp_path / "ld-0.5") if "loss" in m]
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert lines[-1]["rewards/margins"] > 0.05


@pytest.mark.parametrize("layout", ["shared", "packed"])
def test_shared_prompt_pairs_give_the_full_row_loss_and_gradients(
    layout, tiny_model, pref_dir
):
    """The prompt run once for chosen and rejected (padded, or packed without padding)
    == both full rows (values and gradients)."""
    from mlx.utils import tree_flatten

    model, batches = batch_of(tiny_model, pref_dir)
    attach_adapters(model, LORA)
    model.update(
        {
            "model": {
                "layers": [
                    {"self_attn": {"q_proj": {"lora_b": 0.1 * mx.ones((4, 64))}}}
                ]
                * 2
            }
        }
    )
    indices = batches.plan.batches[-1][:3]  # a short batch: one filler pair
    index = batches.index(indices)
    ref = mx.array([-20.0, -21.0, -22.0, 0.0, -23.0, -24.0, -25.0, 0.0])
    full = PairBatch(batches.full(indices), index, ref)
    shared = PairBatch(batches.inputs(indices, layout), index, ref)
    assert isinstance(shared.inputs, LAYOUTS[layout])
    objective = dpo_objective(DPOConfig(model="m", data="d", beta=0.1, sft_weight=0.5))
    grad_fn = lambda batch: nn.value_and_grad(  # noqa: E731
        model,
        lambda m: dpo_loss(m, batch, objective=objective, sft_weight=0.5)[0],
    )(model)
    (loss_full, g_full), (loss_shared, g_shared) = grad_fn(full), grad_fn(shared)
    assert loss_full.item() == pytest.approx(loss_shared.item(), abs=1e-5)
    for (name, a), (_, b) in zip(
        tree_flatten(g_full), tree_flatten(g_shared), strict=True
    ):
        assert mx.allclose(a, b, atol=1e-5, rtol=1e-3).item(), name
    _, n_full, m_full = dpo_loss(model, full, objective=objective)
    _, n_shared, m_shared = dpo_loss(model, shared, objective=objective)
    assert n_full.item() == n_shared.item()
    assert m_full.keys() == m_shared.keys()
    for name in m_full:
        assert m_full[name].item() == pytest.approx(m_shared[name].item(), abs=1e-5)
    assert full.n_examples.item() == 3  # the filler pair counts nowhere


def test_a_batch_over_the_token_budget_is_halved_into_weighted_pieces(
    tiny_model, pref_dir
):
    """Pieces at the whole batch's widths (one compiled shape), weighted by their
    share of the pairs."""
    from mlx_align.batches.budget import fit_to_budget, token_budget

    _, batches = batch_of(tiny_model, pref_dir)
    make = batches.maker("shared", reference=mx.zeros((len(batches.pairs), 2)))
    indices = batches.plan.batches[0]
    whole = make(indices)
    size = whole.inputs.padded_tokens
    assert fit_to_budget(make, indices, 4, size).inputs.padded_tokens == size  # fits
    pieces = fit_to_budget(make, indices, 4, size - 1)
    assert [w for _, w in pieces] == [0.5, 0.5]
    prompt_width, completion_width = whole.inputs.widths
    for piece, _ in pieces:  # 2 of the 4 prompt rows, completions at the same widths
        assert [a.shape for a in piece.inputs] == [
            (2, prompt_width),
            (2, prompt_width),
            (4, completion_width),
            (4, completion_width),
        ]
        assert piece.reference.shape == (4,)  # reference log-probs of its 2 pairs
    three = fit_to_budget(make, indices[:3], 4, size // 4)  # down to single pairs
    assert [w for _, w in three] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    # the third pair keeps its half's 2 rows (one filler): the shape of its half
    sizes = [p.inputs.padded_tokens for p, _ in three]
    assert sizes == [size // 4] * 2 + [size // 2]
    # auto: 1.25x the median padded batch of the visited train batches
    config = DPOConfig(model="m", data="d", steps=2, max_batch_tokens=-1)
    sizes = [make(b).inputs.padded_tokens for b in batches.plan.batches[:2]]
    assert token_budget(config, make, batches.plan) == int(1.25 * np.median(sizes))
    assert (
        token_budget(DPOConfig(model="m", data="d", max_batch_tokens=7), make, None)
        == 7
    )


@pytest.mark.parametrize(
    "layout, compiled",
    [("shared", False), ("shared", True), ("full", True), ("packed", True)],
)
def test_weighted_pieces_sum_to_the_whole_batch_gradient(
    layout, compiled, tiny_model, pref_dir
):
    """The loop's ``gradients`` of each piece, scaled by its weight, sum to the
    whole batch's gradient (3 pairs: pieces of 1, 1, 1 pair; random lora_b),
    in every pair layout.

    Adam all but cancels a uniform scale of the gradient, so a run-level test
    could not catch wrong weights: this checks the gradient itself.
    """
    from mlx.utils import tree_flatten, tree_map

    from mlx_align.batches.budget import fit_to_budget
    from mlx_align.train.evaluation import TrainJob
    from mlx_align.train.loop import make_step

    model, batches = batch_of(tiny_model, pref_dir)
    mx.random.seed(1)
    attach_adapters(model, LORA)
    model.update(
        tree_map(
            lambda a: 0.05 * mx.random.normal(a.shape), model.trainable_parameters()
        )
    )
    if layout == "packed":
        from mlx_align.batches.packing import enable_packing

        enable_packing(model)
    ref = mx.array(-20.0 - np.arange(32, dtype=np.float32).reshape(16, 2))
    make = batches.maker(layout, ref)
    indices = batches.plan.batches[0][:3]
    whole = make(indices, 4)
    pieces = fit_to_budget(make, indices, 4, whole.inputs.padded_tokens // 4)
    assert len(pieces) == 3
    config = DPOConfig(model="m", data="d", compile=compiled)
    objective = dpo_objective(config)
    job = TrainJob(model, partial(dpo_loss, objective=objective), None, None, None, "")
    gradients, _ = make_step(job, optim.AdamW(1e-3), config)
    loss, _, _, expected = gradients(whole, None)
    total, summed = 0.0, None
    for piece, weight in pieces:
        piece_loss, _, _, grad = gradients(piece, mx.array(weight))
        total += weight * piece_loss.item()
        summed = grad if summed is None else tree_map(mx.add, summed, grad)
    # The loss here is ~6.5e6 (random adapters against made-up reference
    # log-probs): float32 holds it to ~0.5, so the pieces' sum is compared to
    # a relative 1e-7, not an absolute 1e-6 that only bit-equal sums would meet.
    assert total == pytest.approx(loss.item(), rel=1e-7, abs=1e-6)
    largest = max(mx.abs(g).max().item() for _, g in tree_flatten(expected))
    assert largest > 1e-3
    for (name, a), (_, b) in zip(
        tree_flatten(expected), tree_flatten(summed), strict=True
    ):
        assert mx.allclose(a, b, atol=1e-5 * largest, rtol=1e-4).item(), name


def test_split_batches_train_like_whole_batches(tiny_model, pref_dir, tmp_path):
    """Every batch split down to single pairs (compiled step) logs the same
    losses and ends at the same adapters as whole batches, up to float noise
    that Adam enlarges where a gradient is near 0."""
    forwards = []

    def count(event, fields):
        if event == "batch":
            forwards.append(len(fields["widths"]))

    settings = dict(steps=4, batch_size=4, log_every=1, compile=True, warmup_steps=0)
    runs = {}
    for budget in (0, 1):
        out = tmp_path / f"budget-{budget}"
        config = dpo_config(tiny_model, pref_dir, out, max_batch_tokens=budget)
        with events.listening(count):
            run_dpo(DPOConfig(**{**config, **settings}))
        runs[budget] = out
    assert forwards == [1] * 4 + [4] * 4  # budget 1: four single-pair pieces a step
    whole, split = (mx.load(str(runs[b] / "adapters.safetensors")) for b in (0, 1))
    assert whole.keys() == split.keys()
    for name in whole:
        assert mx.allclose(whole[name], split[name], atol=1e-4, rtol=1e-3).item(), name
    trained = [whole[n] for n in whole if n.endswith("lora_b")]
    assert max(mx.abs(b).max().item() for b in trained) > 0  # lora_b left 0
    logged = [[m["loss"] for m in metrics_of(runs[b]) if "loss" in m] for b in (0, 1)]
    assert logged[0] == pytest.approx(logged[1], abs=1e-5)
    # The first step runs at policy == reference: each reward is 0 up to float
    # noise, so its accuracy (chosen > rejected) is a coin toss of that noise.
    accuracies = [
        [m["rewards/accuracies"] for m in metrics_of(runs[b]) if "loss" in m][1:]
        for b in (0, 1)
    ]
    assert accuracies[0] == pytest.approx(accuracies[1], abs=1e-6)


def toy_double_sigmoid_loss(pair, beta):
    """A toy DPO-family loss: twice the sigmoid loss, so 2 ln 2 at policy == reference."""
    return 2.0 * dpo_losses.dpo_sigmoid_loss(pair, beta)


def test_a_loss_added_to_the_registry_is_a_cli_choice(
    tiny_model, pref_dir, tmp_path, monkeypatch, capsys
):
    """One function plus one registry line: `--loss toy` is accepted by the CLI
    and the toy loss is what trains (its first logged loss is 2 ln 2, where
    every other registered loss gives ln 2 or something else)."""
    from mlx_align.cli import main

    monkeypatch.setitem(dpo_losses.DPO_LOSSES, "toy", toy_double_sigmoid_loss)
    main(["dpo", "--help"])
    assert "toy" in capsys.readouterr().out
    out = tmp_path / "toy"
    flags = dict(steps=1, log_every=1, warmup_steps=0, learning_rate=1e-9)
    settings = dpo_config(tiny_model, pref_dir, out, **flags)
    argv = ["dpo", "--loss", "toy", "--no-compile"]
    for name, value in settings.items():
        if name != "compile":
            argv += ["--" + name.replace("_", "-"), str(value)]
    main(argv)
    first = next(m for m in metrics_of(out) if "loss" in m)
    assert first["loss"] == pytest.approx(2 * math.log(2), abs=1e-4)


def test_an_unknown_loss_fails_before_anything_loads(tmp_path, capsys):
    from mlx_align.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "dpo",
                "--model",
                str(tmp_path / "none"),
                "--data",
                str(tmp_path),
                "--loss",
                "foo",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'foo' is not one of" in err and "sigmoid" in err
    assert "Traceback" not in err


def test_dpo_keeps_training_given_adapters_against_the_base(tiny_model, pref_dir, tmp_path):  # fmt: skip
    """--adapter-path: the policy starts from the adapters, the reference is the
    base without them (were it the adapters, step 1's loss would be ln 2), and the
    adapters' own settings win over the LoRA flags."""
    first = tmp_path / "first"
    run_dpo(DPOConfig(**dpo_config(tiny_model, pref_dir, first, steps=10, log_every=1)))  # fmt: skip
    assert metrics_of(first)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    second = tmp_path / "second"
    config = dpo_config(tiny_model, pref_dir, second, steps=1, log_every=1, adapter_path=str(first), lora_rank=4)  # fmt: skip
    run_dpo(DPOConfig(**config))
    step_one = metrics_of(second)[0]
    assert step_one["loss"] < math.log(2) - 0.05
    assert step_one["rewards/margins"] > 0.1
    saved = json.loads((second / "adapter_config.json").read_text())
    assert saved["lora_parameters"]["rank"] == 8  # first's, not the flag's 4
