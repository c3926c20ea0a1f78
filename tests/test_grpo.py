"""GRPO end to end on a tiny model, group sampling, rollout reuse, eval-math."""

import json

import mlx.core as mx
import mlx_lm
import pytest
from conftest import write_jsonl
from mlx_lm.generate import generate_step

from mlx_align.apps.eval_math import run_eval_math
from mlx_align.config.online import GRPOConfig
from mlx_align.config.stages import EvalMathConfig
from mlx_align.sampling.rollout import sample_group, trim_at_eos
from mlx_align.stages.grpo import run_grpo
from mlx_align.stages.grpo_rollouts import rollout_index


def starts_with_space(prompts, completions, **columns):
    """A reward a random tiny model can learn: the first character is a space."""
    return [1.0 if c.startswith(" ") else 0.0 for c in completions]


def test_rollout_reuses_each_batch_for_mu_steps():
    # A = 1, μ = 2: steps 0,1 -> rollout 0; steps 2,3 -> rollout 1.
    assert [rollout_index(k, 1, 2) for k in range(4)] == [0, 0, 1, 1]
    # A = 2, μ = 2: micro-batches (step, micro) share rollouts across the two steps.
    assert [rollout_index(k, 2, 2) for k in range(8)] == [0, 1, 0, 1, 2, 3, 2, 3]
    assert [rollout_index(k, 3, 1) for k in range(4)] == [0, 1, 2, 3]


def test_greedy_group_sampling_with_a_shared_prompt_cache_matches_mlx_lm(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    prompt = tokenizer.encode("Question: What colour is the sky?\nAnswer:")
    eos = set(tokenizer.eos_token_ids)
    group = sample_group(
        model, prompt, group_size=3, max_tokens=8, eos_ids=eos, temperature=0.0
    )
    expected = [
        int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=8)
    ]
    expected = trim_at_eos(expected, eos)
    assert group.completions == [expected] * 3


def test_sampled_groups_differ_and_stop_at_eos(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    eos = set(tokenizer.eos_token_ids)
    mx.random.seed(0)
    group = sample_group(
        model, tokenizer.encode("The cat"), 6, 12, eos, temperature=1.0
    )
    assert len({tuple(c) for c in group.completions}) > 1
    for c in group.completions:
        assert len(c) <= 12 and all(t not in eos for t in c[:-1])


def grpo_config(model, tmp_path, **overrides) -> GRPOConfig:
    data = tmp_path / "data"
    rows = [
        {"prompt": f"Question: item {i}?\nAnswer:", "answer": str(i)} for i in range(16)
    ]
    write_jsonl(data / "train.jsonl", rows)
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(tmp_path / "run"),
        steps=40,
        batch_size=2,
        group_size=8,
        max_completion_tokens=1,
        reward=("test_grpo:starts_with_space",),
        learning_rate=2e-2,
        warmup_steps=1,
        log_every=1,
        save_every=0,
        eval_every=0,
        compile=True,
        max_length=64,
        lora_rank=8,
        lora_alpha=16,
    )
    return GRPOConfig(**{**settings, **overrides})


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_compiled_grpo_raises_a_learnable_reward(tiny_model, tmp_path):
    config = grpo_config(tiny_model, tmp_path)
    run_grpo(config)
    rewards = [m["reward"] for m in metrics(tmp_path / "run")]
    # the start: rollouts of the untrained policy and after one update (lr 2e-2
    # learns this within a few steps, so a longer window already holds the rise)
    first, last = sum(rewards[:2]) / 2, sum(rewards[-8:]) / 8
    assert last > first + 0.3 and last > 0.5, rewards
    samples = [
        json.loads(x)
        for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    ]
    assert samples and {"prompt", "completion", "reward"} <= samples[0].keys()
    assert (tmp_path / "run" / "adapters.safetensors").exists()


def test_second_pass_over_a_rollout_is_clipped_and_kl_is_measured(tiny_model, tmp_path):
    """μ = 2: pass 1 has ratio 1 (nothing clipped); after a large step, pass 2 clips."""
    run_grpo(
        grpo_config(
            tiny_model,
            tmp_path,
            steps=4,
            iterations=2,
            beta=0.02,
            learning_rate=5e-2,
            max_completion_tokens=3,
            compile=False,
        )
    )
    lines = metrics(tmp_path / "run")
    first_passes, second_passes = lines[0::2], lines[1::2]
    assert all(m["clip_ratio/region_mean"] == 0 for m in first_passes)
    assert any(m["clip_ratio/region_mean"] > 0 for m in second_passes)
    assert lines[0]["kl"] == pytest.approx(
        0.0, abs=1e-6
    )  # policy == reference before any update
    assert lines[1]["kl"] > 0
    assert all(
        0 <= m["frac_reward_zero_std"] <= 1 and m["completion_length_max"] <= 3
        for m in lines
    )


def test_eval_math_judges_greedy_completions(tiny_model, tmp_path, monkeypatch):
    data = tmp_path / "math"
    write_jsonl(
        data / "test.jsonl",
        [
            {"prompt": "Question: What is 2 + 3?\nAnswer:", "answer": "5"},
            {"prompt": "Question: What is 6 * 7?\nAnswer:", "answer": "42"},
            {"prompt": "Question: What is 9 - 1?\nAnswer:", "answer": "8"},
        ],
    )
    fake = type("R", (), {})()
    fake.texts = [" 2 + 3 = 5.\n#### 5", " 6 * 7 = 41.\n#### 41", " so \\boxed{8}"]
    monkeypatch.setattr("mlx_lm.batch_generate", lambda *a, **k: fake)
    out = tmp_path / "results.jsonl"
    accuracy = run_eval_math(
        EvalMathConfig(model=str(tiny_model), data=str(data), out=str(out))
    )
    assert accuracy == pytest.approx(2 / 3)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [1.0, 0.0, 1.0]


def test_top_p_keeps_only_the_nucleus():
    """p = [0.7, 0.2, 0.1]: top-p 0.5 keeps only token 0; top-p 0.8 keeps tokens 0 and 1."""
    from mlx_align.sampling.slots import sample_next

    logits = mx.log(mx.array([[0.7, 0.2, 0.1]] * 400))
    mx.random.seed(1)
    assert set(sample_next(logits, 1.0, 0.5).tolist()) == {0}
    assert set(sample_next(logits, 1.0, 0.8).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, 1.0).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, 0.0, 1.0).tolist()) == {0}  # temperature 0 is greedy


def test_models_without_shared_prompt_support_score_full_rows(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "mlx_align.stages.grpo_rollouts.supports_shared_prompts", lambda model: False
    )
    run_grpo(
        grpo_config(
            tiny_model, tmp_path, steps=3, max_completion_tokens=3, compile=False
        )
    )
    lines = metrics(tmp_path / "run")
    assert len(lines) == 3 and all(m["tokens"] > 0 for m in lines)


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "dapo"},
        {"loss": "bnpo"},
        {"loss": "cispo", "epsilon_high": 5.0},
        {"loss": "sapo"},
        {"loss": "luspo", "importance_sampling_level": "sequence"},
        {"loss": "vespo"},
        {"loss": "grpo", "importance_sampling_level": "sequence", "delta": 2.0},
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
def test_every_grpo_loss_type_raises_the_reward_compiled(
    settings, tiny_model, tmp_path
):
    """Each of TRL's loss types (grpo and dr_grpo have their own runs), μ = 2 so
    the ratios move off 1: the reward the policy can learn rises in 16 steps."""
    run_grpo(grpo_config(tiny_model, tmp_path, steps=16, iterations=2, **settings))
    rewards = [m["reward"] for m in metrics(tmp_path / "run")]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert last > first + 0.3, rewards


def test_truncated_completions_leave_the_loss(tiny_model, tmp_path):
    """Completions are cut at one token, before any EOS: the same run trains
    without --mask-truncated-completions (a gradient), and with it nothing is
    trained (loss and gradient 0)."""
    run_grpo(grpo_config(tiny_model, tmp_path / "all", steps=2))
    assert any(m["grad_norm"] > 0 for m in metrics(tmp_path / "all" / "run"))
    masked = tmp_path / "masked"
    run_grpo(grpo_config(tiny_model, masked, steps=2, mask_truncated_completions=True))
    lines = metrics(masked / "run")
    assert all(m["loss"] == 0.0 and m["grad_norm"] == 0.0 for m in lines)
    samples = (masked / "run" / "samples.jsonl").read_text().splitlines()
    assert samples and all(json.loads(s)["completion"] for s in samples)


def test_rloo_raises_a_learnable_reward_with_the_kl_in_the_reward(tiny_model, tmp_path):
    """RLOO (G = 4, β = 0.05): the reward the policy can learn rises; the KL
    is 0 at the first step (policy == reference) and positive once it moved;
    ``reward`` is TRL's: the reward less β·KL (so at most the raw reward)."""
    from mlx_align.config.online import RLOOConfig
    from mlx_align.stages.rloo import run_rloo

    settings = {
        k: v
        for k, v in vars(grpo_config(tiny_model, tmp_path)).items()
        if k in {f for f in RLOOConfig.__dataclass_fields__}
    }
    settings.update(steps=20, group_size=4, beta=0.05)
    run_rloo(RLOOConfig(**settings))
    lines = metrics(tmp_path / "run")
    rewards = [m["reward"] for m in lines]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:2]) / 2 + 0.3, rewards
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert lines[-1]["kl"] > 1e-4
    assert {"clip_ratio/high_mean", "frac_reward_zero_std"} <= lines[-1].keys()


def test_gdpo_trains_with_two_rewards(tiny_model, tmp_path):
    """--multi-objective-aggregation normalize_then_sum with two reward
    functions (the learnable one and a constant, which adds 0 in every group):
    the learnable reward still rises."""
    run_grpo(
        grpo_config(
            tiny_model,
            tmp_path,
            steps=16,
            reward=("test_grpo:starts_with_space", "test_grpo:constant_one"),
            multi_objective_aggregation="normalize_then_sum",
        )
    )
    lines = metrics(tmp_path / "run")
    learned = [m["rewards/starts_with_space/mean"] for m in lines]
    assert sum(learned[-4:]) / 4 > sum(learned[:2]) / 2 + 0.3, learned
    assert all(m["rewards/constant_one/mean"] == 1.0 for m in lines)


def constant_one(prompts, completions, **_):
    return [1.0] * len(completions)


def test_top_entropy_quantile_trains_on_the_forking_tokens(tiny_model, tmp_path):
    """--top-entropy-quantile 0.5 (compiled): half the completion tokens train,
    the learnable reward still rises, and the policy's entropy is logged."""
    run_grpo(grpo_config(tiny_model, tmp_path, steps=16, top_entropy_quantile=0.5))
    lines = metrics(tmp_path / "run")
    rewards = [m["reward"] for m in lines]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:2]) / 2 + 0.3, rewards
    assert all(m["entropy"] > 0 for m in lines)


def test_an_entropy_bonus_keeps_the_policy_more_uncertain(tiny_model, tmp_path):
    """The same run with --entropy-coef 1.0 against a negligible 1e-9 (which
    logs the entropy but leaves the update alone): after 12 steps the policy's
    entropy is higher with the bonus; policy_loss is logged beside the loss."""
    ends = {}
    for coef in (1e-9, 1.0):
        out = tmp_path / f"coef-{coef}"
        run_grpo(grpo_config(tiny_model, out, steps=12, entropy_coef=coef))
        lines = metrics(out / "run")
        assert all("policy_loss" in m for m in lines)
        ends[coef] = sum(m["entropy"] for m in lines[-4:]) / 4
    assert ends[1.0] > ends[1e-9] + 0.05, ends
