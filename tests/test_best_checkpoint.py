"""--save-best keeps the best evaluation's weights in R/best/; --early-stopping-
patience stops a run that stopped improving; both survive --resume exactly."""

import json

import mlx.core as mx
import pytest
from conftest import write_jsonl
from test_dpo import WORDS, dpo_config, metrics_of, preference_rows

from mlx_align.config.build import build_config
from mlx_align.config.stages import DPOConfig
from mlx_align.core import events
from mlx_align.core.errors import UserError
from mlx_align.stages.dpo import run_dpo
from mlx_align.train.best import BestTracker


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_jsonl(root / "train.jsonl", preference_rows(WORDS[:8]))
    write_jsonl(root / "valid.jsonl", preference_rows(WORDS[8:]))
    return root


def tracker(metric, greater="auto", patience=0):
    config = DPOConfig(model="m", data="d", save_best=metric, greater_is_better=greater, early_stopping_patience=patience)  # fmt: skip
    return BestTracker.of(config)


def test_the_tracker_orders_by_the_metric_and_counts_stale_evaluations():
    """val_loss (a loss: lower is better) 1.0, 0.8, 0.9, 0.85 with patience 2:
    the best is 0.8 at step 2, then two evaluations without improvement stop
    the run. An accuracy is higher-better; an equal value is no improvement."""
    loss = tracker("val_loss", patience=2)
    seen = [loss.observe(s, {"val_loss": v}) for s, v in [(1, 1.0), (2, 0.8), (3, 0.9)]]
    assert seen == [True, True, False] and not loss.stopping
    assert loss.observe(4, {"val_loss": 0.85}) is False and loss.stopping
    assert (loss.value, loss.step, loss.stale) == (0.8, 2, 2)
    accuracy = tracker("val_rewards/accuracies")
    assert accuracy.greater
    assert [accuracy.observe(s, {"val_rewards/accuracies": v}) for s, v in [(1, 0.5), (2, 0.75), (3, 0.75)]] == [True, True, False]  # fmt: skip
    assert tracker("val_win_rate", greater="false").greater is False
    with pytest.raises(
        Exception, match="--save-best val_nope: evaluations log val_loss"
    ):
        tracker("val_nope").observe(1, {"val_loss": 1.0})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"save_best": "loss"}, "--save-best: evaluations log val_"),
        (
            {"early_stopping_patience": 2},
            "--early-stopping-patience: needs --save-best",
        ),
        ({"greater_is_better": "true"}, "--greater-is-better: needs --save-best"),
    ],
)
def test_best_settings_that_clash_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        build_config(DPOConfig, {"model": "m", "data": "d", **flags}, None)


def best_run(model, data, out, **overrides):
    """DPO whose held-out margin widens at every evaluation: ordered as
    lower-is-better, the first evaluation (step 2) stays the best."""
    settings = dict(
        steps=20, eval_every=2, save_every=2, log_every=1, eval_batches=-1,
        save_best="val_rewards/margins", greater_is_better="false",
    )  # fmt: skip
    return DPOConfig(**dpo_config(model, data, out, **{**settings, **overrides}))


def test_best_weights_are_the_best_evaluations_and_the_run_stops(tiny_model, pairs, tmp_path):  # fmt: skip
    out = tmp_path / "run"
    run_dpo(best_run(tiny_model, pairs, out, early_stopping_patience=1))
    lines = metrics_of(out)
    evals = [m for m in lines if "val_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]  # stopped after one stale evaluation
    assert evals[1]["val_rewards/margins"] > evals[0]["val_rewards/margins"]
    assert max(m["step"] for m in lines) == 4
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["step"] == 2 and best["value"] == pytest.approx(evals[0]["val_rewards/margins"])  # fmt: skip
    at_two = mx.load(str(out / "checkpoints" / "step_0000002" / "adapters.safetensors"))
    kept = mx.load(str(out / "best" / "adapters.safetensors"))
    last = mx.load(str(out / "adapters.safetensors"))
    assert all(mx.array_equal(kept[k], at_two[k]).item() for k in kept)
    assert any(not mx.array_equal(kept[k], last[k]).item() for k in kept)
    assert (out / "best" / "adapter_config.json").exists()  # mlx-lm loads it


def test_early_stopping_survives_resume(tiny_model, pairs, tmp_path):
    """Patience 3: best at step 2, stale at 4, 6, 8 -> stops at 8. Interrupted
    at step 4 (one stale evaluation counted, in the checkpoint) and resumed,
    the run stops at step 8 too, with the same best and the same weights."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_dpo(best_run(tiny_model, pairs, whole, early_stopping_patience=3))

    def interrupt(event, fields):
        if event == "step" and fields["step"] == 4:
            raise KeyboardInterrupt

    with events.listening(interrupt), pytest.raises(KeyboardInterrupt):
        run_dpo(best_run(tiny_model, pairs, cut, early_stopping_patience=3))
    run_dpo(best_run(tiny_model, pairs, cut, early_stopping_patience=3, resume=True))
    for run in (whole, cut):
        assert max(m["step"] for m in metrics_of(run)) == 8
        assert json.loads((run / "best" / "best.json").read_text())["step"] == 2
    a, b = (mx.load(str(r / "adapters.safetensors")) for r in (whole, cut))
    assert all(mx.allclose(a[k], b[k], atol=1e-6).item() for k in a)
