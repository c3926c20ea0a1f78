"""PPO with a critic: GAE, the value clip, KL-shaped rewards by hand; gradients; tiny runs."""

import dataclasses
import json
import math
import shutil

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from conftest import write_jsonl
from mlx.utils import tree_flatten
from test_reward import HELD_OUT_THINGS, TRAIN_THINGS, shorter_is_better

from mlx_align.batches.layouts import FullRows
from mlx_align.cli import main
from mlx_align.config.online import PPOConfig
from mlx_align.config.stages import RewardConfig, SFTConfig
from mlx_align.losses.ppo import (
    clipped_value_loss,
    gae,
    kl_shaped_rewards,
    masked_whiten,
    ppo_policy_loss,
)
from mlx_align.model.adapters import attach_adapters
from mlx_align.model.fuse import fuse_adapters
from mlx_align.model.reward_head import load_reward_model
from mlx_align.model.value_head import (
    ActorCritic,
    ValueModel,
    load_critic,
)
from mlx_align.sampling.reward_model import score
from mlx_align.sampling.rollout import sample_groups
from mlx_align.stages.ppo import run_ppo
from mlx_align.stages.ppo_rollouts import locate
from mlx_align.stages.reward import run_reward
from mlx_align.stages.sft import run_sft
from mlx_align.train.reference import shared_reference

LORA = {
    "fine_tune_type": "lora",
    "num_layers": -1,
    "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
}


def starts_with_space(prompts, completions, **columns):
    """A reward a random tiny model can learn: +1 if the first character is a space, else −1."""
    return [1.0 if c.startswith(" ") else -1.0 for c in completions]


def test_gae_by_hand():
    """γ = 0.9, λ = 0.5 (γλ = 0.45).

    Row 0, four completion tokens, rewards (0, 0, 0, 1), values (0.5, 0.4, 0.6, 0.8):
        δ = (0.9·0.4 − 0.5, 0.9·0.6 − 0.4, 0.9·0.8 − 0.6, 1 − 0.8)
          = (−0.14, 0.14, 0.12, 0.2)
        A3 = 0.2
        A2 = 0.12 + 0.45·0.2    = 0.21
        A1 = 0.14 + 0.45·0.21   = 0.2345
        A0 = −0.14 + 0.45·0.2345 = −0.034475
        R = A + V = (0.465525, 0.6345, 0.81, 1.0)
    Row 1: a prompt position, two completion tokens, a pad; junk rewards and
    values (5, 7, 9) off the mask are ignored. Rewards (0, 2), values (1, 1):
        δ = (0.9·1 − 1, 2 − 1) = (−0.1, 1.0); A = (−0.1 + 0.45, 1.0) = (0.35, 1.0)
        R = (1.35, 2.0)
    """
    rewards = mx.array([[0.0, 0.0, 0.0, 1.0], [5.0, 0.0, 2.0, 7.0]])
    values = mx.array([[0.5, 0.4, 0.6, 0.8], [9.0, 1.0, 1.0, 9.0]])
    mask = mx.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards * mask, values, mask, gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx(
        [-0.034475, 0.2345, 0.21, 0.2], abs=1e-6
    )
    assert returns.tolist()[0] == pytest.approx([0.465525, 0.6345, 0.81, 1.0], abs=1e-6)
    assert advantages.tolist()[1] == pytest.approx([0.0, 0.35, 1.0, 0.0], abs=1e-6)
    assert returns.tolist()[1] == pytest.approx([0.0, 1.35, 2.0, 0.0], abs=1e-6)
    # γ = λ = 1: every advantage is the return-to-go minus the value.
    advantages, _ = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.5, 0.6, 0.4, 0.2], abs=1e-6)


def test_gae_steps_over_the_tool_turns_of_a_multi_turn_completion():
    """Row 0 of ``test_gae_by_hand`` with a tool turn (two masked-out positions,
    junk rewards and values) between its second and third tokens: the same
    advantages and returns on the model's tokens (t + 1 is the next model
    token), 0 on the tool turn."""
    rewards = mx.array([[0.0, 0.0, 3.0, 3.0, 0.0, 1.0]])
    values = mx.array([[0.5, 0.4, 8.0, 8.0, 0.6, 0.8]])
    mask = mx.array([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
    advantages, returns = gae(rewards * mask, values, mask, gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx(
        [-0.034475, 0.2345, 0.0, 0.0, 0.21, 0.2], abs=1e-6
    )
    assert returns.tolist()[0] == pytest.approx(
        [0.465525, 0.6345, 0.0, 0.0, 0.81, 1.0], abs=1e-6
    )


@pytest.mark.parametrize(
    "value, loss, clipfrac, grad",
    [
        # old value 0, ε_v = 0.2, return 1; loss ½·max((v − 1)², (clip(v, ±0.2) − 1)²)
        (0.1, 0.5 * 0.81, 0.0, 0.1 - 1.0),  # inside the clip: plain MSE
        (0.2, 0.5 * 0.64, 0.0, None),  # the upper kink: both terms 0.64
        (0.5, 0.5 * 0.64, 1.0, 0.0),  # beyond, towards the return: clipped, no gradient
        (-0.2, 0.5 * 1.44, 0.0, None),  # the lower kink: both terms 1.44
        (-0.5, 0.5 * 2.25, 0.0, -1.5),  # beyond, away from the return: unclipped wins
    ],
)
def test_clipped_value_loss_at_and_beyond_its_kinks(value, loss, clipfrac, grad):
    def value_loss(v):
        return clipped_value_loss(v, mx.zeros(1), mx.ones(1), mx.ones(1), 0.2)

    got, metrics = value_loss(mx.array([value]))
    assert got.item() == pytest.approx(loss, abs=1e-6)
    assert metrics["val/clipfrac_avg"].item() == clipfrac
    assert metrics["val/vpred"].item() == pytest.approx(value)
    if grad is not None:
        gradient = mx.grad(lambda v: value_loss(v)[0])(mx.array([value]))
        assert gradient.item() == pytest.approx(grad, abs=1e-6)


def test_kl_shaped_rewards_penalise_every_token_and_pay_the_score_last():
    """β = 0.1. Row 0: a prompt slot, three completion tokens, a pad; row 1: one token.

    k1 = log π − log π_ref = (·, 0.5, −0.2, 1.0, ·) and (2.0, ·, ...); padding
    (junk log-probs 9) counts nowhere. Rewards: −0.1·k1, plus the score (3 and
    −1) on the last real token: (0, −0.05, 0.02, −0.1 + 3, 0), (−0.2 − 1, 0, ...).
    """
    logps = mx.array([[9.0, -1.0, -2.0, -0.5, 9.0], [-1.0, 9.0, 9.0, 9.0, 9.0]])
    ref = mx.array([[0.0, -1.5, -1.8, -1.5, 0.0], [-3.0, 0.0, 0.0, 0.0, 0.0]])
    mask = mx.array([[0.0, 1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    rewards, kl = kl_shaped_rewards(logps, ref, mx.array([3.0, -1.0]), mask, 0.1)
    assert kl.tolist()[0] == pytest.approx([0.0, 0.5, -0.2, 1.0, 0.0], abs=1e-6)
    assert rewards.tolist()[0] == pytest.approx([0.0, -0.05, 0.02, 2.9, 0.0], abs=1e-6)
    assert rewards.tolist()[1] == pytest.approx([-1.2, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    # Whitening sees the real tokens only: junk off the mask changes nothing.
    whitened = masked_whiten(rewards, mask) * mask
    junk = masked_whiten(rewards + 100 * (1 - mask), mask) * mask
    assert mx.allclose(whitened, junk, atol=1e-5).item()
    real = mx.array([-0.05, 0.02, 2.9, -1.2])
    by_hand = (real - real.mean()) / mx.sqrt(mx.var(real, ddof=1) + 1e-8)
    picked = [
        w
        for w, m in zip(sum(whitened.tolist(), []), sum(mask.tolist(), []), strict=True)
        if m
    ]
    assert sorted(picked) == pytest.approx(sorted(by_hand.tolist()), abs=1e-5)


def test_k3_is_never_negative_and_matches_its_formula_by_hand():
    """log r = log π_ref − log π = (−0.5, 0.2, −1.0) and (−2.0); k3 = (r − 1) − log r:
    e^−0.5 − 0.5 = 0.10653, e^0.2 − 1.2 = 0.02140, e^−1 = 0.36788, e^−2 + 1 = 1.13534.
    Junk off the mask (log r = +100 there) counts nowhere and overflows nothing."""
    logps = mx.array([[-100.0, -1.0, -2.0, -0.5], [-1.0, -100.0, -100.0, -100.0]])
    ref = mx.array([[0.0, -1.5, -1.8, -1.5], [-3.0, 0.0, 0.0, 0.0]])
    mask = mx.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    rewards, kl = kl_shaped_rewards(logps, ref, mx.array([0.0, 0.0]), mask, 1.0, "k3")
    assert kl.tolist()[0] == pytest.approx([0.0, 0.10653, 0.02140, 0.36788], abs=1e-5)
    assert kl.tolist()[1] == pytest.approx([1.13534, 0.0, 0.0, 0.0], abs=1e-5)
    assert mx.allclose(rewards, -kl).item()  # zero scores: the penalty alone


def test_policy_loss_ratio_one_is_the_policy_gradient_and_clips_beyond():
    """ρ = 1: loss −mean A; ρ = e^0.5 > 1.2 with A > 0: clipped, no gradient."""
    advantages, mask = mx.array([[1.0, -2.0]]), mx.ones((1, 2))
    logps = mx.array([[-1.0, -1.0]])
    loss, metrics = ppo_policy_loss(logps, logps, advantages, mask, 0.2)
    assert loss.item() == pytest.approx(0.5)
    assert metrics["policy/clipfrac_avg"].item() == 0
    assert metrics["val/ratio"].item() == pytest.approx(1.0)
    old = mx.array([[-1.5, -1.0]])
    loss, metrics = ppo_policy_loss(logps, old, advantages, mask, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 2.0) / 2, abs=1e-6)
    assert metrics["policy/clipfrac_avg"].item() == 0.5
    assert metrics["policy/approxkl_avg"].item() == pytest.approx(0.5 * 0.25 / 2)
    grad = mx.grad(lambda lp: ppo_policy_loss(lp, old, advantages, mask, 0.2)[0])
    assert grad(logps).tolist()[0] == pytest.approx([0.0, 1.0])


def test_micro_batches_walk_epochs_and_mini_batches_of_one_rollout():
    config = PPOConfig(
        model="m", data="d", batch_size=2, grad_accumulation=2, num_mini_batches=2
    )
    config = dataclasses.replace(config, ppo_epochs=2)
    # 4 steps of 2 micro-batches per rollout; each epoch covers the 8 rows once.
    found = [locate(k, config) for k in range(10)]
    assert found[:8] == [
        (0, 0, 0), (0, 0, 2), (0, 0, 4), (0, 0, 6),
        (0, 1, 0), (0, 1, 2), (0, 1, 4), (0, 1, 6),
    ]  # fmt: skip
    assert found[8:] == [(1, 0, 0), (1, 0, 2)]


def actor_critic(tiny_model) -> ActorCritic:
    policy, _ = mlx_lm.load(str(tiny_model))
    attach_adapters(policy, LORA)
    lm = shared_reference(policy, str(tiny_model))
    attach_adapters(lm, LORA)
    model = ActorCritic(policy, ValueModel(lm, 64))
    # lora_b and the head start at 0, where no gradient reaches lora_a: move them.
    key = mx.random.key(1)
    moved = [
        (name, 0.1 * mx.random.normal(value.shape, key=key))
        for name, value in tree_flatten(model.trainable_parameters())
        if name.endswith(("lora_b", "head.weight"))
    ]
    model.load_weights(moved, strict=False)
    model.train()
    return model


def gradient_norms(model, loss) -> dict[str, float]:
    """The gradient's norm per group: policy adapters, critic adapters, value head."""
    grads = tree_flatten(nn.value_and_grad(model, loss)(model)[1])
    norms = {"policy": 0.0, "critic": 0.0, "head": 0.0}
    for name, g in grads:
        group = "head" if "head" in name else name.split(".")[0]
        norms[group] += mx.sum(g * g).item()
    return norms


def test_value_loss_trains_the_critic_and_policy_loss_the_policy(tiny_model):
    model = actor_critic(tiny_model)
    names = [n for n, _ in tree_flatten(model.trainable_parameters())]
    assert {n.split(".")[0] for n in names} == {"policy", "critic"}
    assert "critic.head.weight" in names and any("critic.lm." in n for n in names)
    # The critic's backbone is the policy's base arrays, not a copy.
    policy_q = model.policy.model.layers[0].self_attn.q_proj
    critic_q = model.critic.lm.model.layers[0].self_attn.q_proj
    assert critic_q.linear.weight is policy_q.linear.weight
    assert critic_q.lora_a is not policy_q.lora_a

    tokens = mx.array([[1, 5, 9, 13, 17, 21], [2, 6, 10, 14, 18, 22]])
    inputs = FullRows(tokens, mx.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0.0]]))

    def value_loss(model):
        values, mask = model.critic.token_values(inputs)
        return clipped_value_loss(values, values, mx.ones_like(mask), mask, 0.2)[0]

    def policy_loss(model):
        logps, mask = inputs.token_logps(model.policy)
        advantages = mx.array([[1.0] * 5, [-1.0] * 5]) * mask
        return ppo_policy_loss(logps, logps, advantages, mask, 0.2)[0]

    from_value = gradient_norms(model, value_loss)
    assert from_value["critic"] > 0 and from_value["head"] > 0
    assert from_value["policy"] == 0
    from_policy = gradient_norms(model, policy_loss)
    assert from_policy["policy"] > 0
    assert from_policy["critic"] == 0 and from_policy["head"] == 0


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def held_out_rate(model_dir, prompts, adapter_path=None, samples=8) -> float:
    """The share of ``samples`` completions per prompt (seeded) that start with a space."""
    model, tokenizer = mlx_lm.load(str(model_dir), adapter_path=adapter_path)
    eos = set(tokenizer.eos_token_ids)
    mx.random.seed(7)
    encoded = [tokenizer.encode(p) for p in prompts]
    groups = sample_groups(model, encoded, samples, 4, eos, temperature=1.0)
    texts = [
        tokenizer.decode([t for t in c if t not in eos])
        for g in groups
        for c in g.completions
    ]
    return sum(text.startswith(" ") for text in texts) / len(texts)


def toy_config(model, tmp_path, **overrides) -> PPOConfig:
    data = tmp_path / "data"
    write_jsonl(
        data / "train.jsonl",
        [{"prompt": f"Question: item {i}?\nAnswer:"} for i in range(32)],
    )
    write_jsonl(
        data / "valid.jsonl",
        [{"prompt": f"Question: thing {i}?\nAnswer:"} for i in range(16)],
    )
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(tmp_path / "run"),
        steps=48,
        batch_size=8,
        num_mini_batches=2,
        ppo_epochs=2,
        max_completion_tokens=4,
        reward=("test_ppo:starts_with_space",),
        learning_rate=1e-2,
        warmup_steps=1,
        kl_coef=0.05,
        log_every=1,
        save_every=0,
        eval_every=0,
        eval_batches=-1,
        max_length=64,
    )
    return PPOConfig(**{**settings, **overrides})


def test_ppo_raises_a_verifiable_reward_on_held_out_prompts(tiny_model, tmp_path):
    config = toy_config(tiny_model, tmp_path)
    held_out = [f"Question: thing {i}?\nAnswer:" for i in range(16)]
    before = held_out_rate(tiny_model, held_out)
    out = run_ppo(config)
    after = held_out_rate(tiny_model, held_out, adapter_path=str(out))
    assert after >= before + 0.3, (before, after)

    lines = read_metrics(out)
    train = [m for m in lines if "loss/value_avg" in m]
    # Step 1 is the first pass over its rollout: the ratio is 1, nothing clips.
    assert train[0]["val/ratio"] == pytest.approx(1.0, abs=1e-4)
    assert train[0]["policy/clipfrac_avg"] == 0 and train[0]["objective/kl"] == 0
    # Summed over at most 4 tokens; β = 0.05 holds it while the score climbs by ~1.4.
    assert all(-1 < m["objective/kl"] < 10 for m in train)
    first, last = train[:8], train[-8:]
    mean = lambda rows, key: sum(m[key] for m in rows) / len(rows)  # noqa: E731
    assert mean(last, "objective/scores") > mean(first, "objective/scores") + 0.5
    # Step 1: the zero head predicts 0, so the value loss is ½·E[return²] (~0.43);
    # the critic then tracks the returns although their mean moves from −0.7 to +0.7.
    assert mean(last, "loss/value_avg") < 0.85 * train[0]["loss/value_avg"]
    # The policy's whole next-token distribution narrows onto the rewarded answer.
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    assert all(0 < m["policy/entropy_avg"] <= math.log(vocab) for m in train)
    assert mean(last, "policy/entropy_avg") < mean(first, "policy/entropy_avg")
    for m in train:  # TRL's bookkeeping: rlhf reward = score + non-score reward
        assert m["objective/rlhf_reward"] == pytest.approx(
            m["objective/scores"] + m["objective/non_score_reward"], abs=1e-4
        )
    assert "val_objective/scores" in lines[-1]  # the valid split, evaluated at the end

    # The policy's adapters are plain mlx-lm adapters; the critic reloads beside them.
    assert {p.name for p in out.iterdir()} >= {
        "adapters.safetensors", "adapter_config.json", "critic", "samples.jsonl"
    }  # fmt: skip
    fused = fuse_adapters(str(tiny_model), str(out), str(tmp_path / "fused"))
    tokens = mx.array([[1, 2, 3]])
    adapted, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    assert mx.allclose(
        mlx_lm.load(str(fused))[0](tokens), adapted(tokens), atol=1e-4
    ).item()
    critic = load_critic(out / "critic")
    assert not mx.array_equal(critic.head.weight, mx.zeros_like(critic.head.weight))
    assert critic(mx.array([[1, 2, 3]])).shape == (1, 3)


@pytest.fixture(scope="module")
def shorter_rm(tiny_model, tmp_path_factory):
    """A tiny model SFT'd on short and long answers, and a reward model on it that
    prefers short ones (trained by ``mlx-align reward`` on ``shorter_is_better``)."""
    root = tmp_path_factory.mktemp("ppo_rm")
    pairs = shorter_is_better(TRAIN_THINGS, seed=0)
    write_jsonl(root / "pairs" / "train.jsonl", pairs)
    sft_rows = [{"prompt": r["prompt"], "completion": r[k]} for r in pairs for k in ("chosen", "rejected")]  # fmt: skip
    write_jsonl(root / "sft" / "train.jsonl", sft_rows)
    common = dict(eval_every=0, save_every=0, log_every=10, warmup_steps=2)
    sft = run_sft(
        SFTConfig(
            model=str(tiny_model), data=str(root / "sft"), out=str(root / "sft_run"),
            full=True, steps=60, batch_size=8, learning_rate=3e-3, max_length=64, **common,
        )
    )  # fmt: skip
    rm = run_reward(
        RewardConfig(
            model=str(sft), data=str(root / "pairs"), out=str(root / "rm"),
            steps=16, batch_size=8, learning_rate=3e-3, **common,
        )
    )  # fmt: skip
    return root, sft, rm


def rm_score_and_length(sft, rm, prompts, adapter_path=None) -> tuple[float, float]:
    """Mean reward-model score and completion tokens of 4 samples per prompt (seeded)."""
    model, tokenizer = mlx_lm.load(str(sft), adapter_path=adapter_path)
    eos = set(tokenizer.eos_token_ids)
    mx.random.seed(123)
    groups = sample_groups(model, [tokenizer.encode(p) for p in prompts], 4, 16, eos)
    completions = [c for g in groups for c in g.completions]
    texts = [tokenizer.decode([t for t in c if t not in eos]) for c in completions]
    reward_model, reward_tokenizer = load_reward_model(rm)
    scores = score(reward_model, reward_tokenizer, [p for p in prompts for _ in range(4)], texts)  # fmt: skip
    return sum(scores) / len(scores), sum(map(len, completions)) / len(completions)


def test_ppo_on_a_reward_model_raises_its_score_and_shortens_answers(
    shorter_rm, capsys
):
    root, sft, rm = shorter_rm
    train_prompts = sorted({r["prompt"] for r in shorter_is_better(TRAIN_THINGS, 0)})
    held_out = sorted({r["prompt"] for r in shorter_is_better(HELD_OUT_THINGS, 1)})
    write_jsonl(root / "ppo" / "train.jsonl", [{"prompt": p} for p in train_prompts])
    config = PPOConfig(
        model=str(sft), data=str(root / "ppo"), out=str(root / "ppo_run"),
        reward_model=str(rm), steps=32, batch_size=8, num_mini_batches=2,
        ppo_epochs=2, max_completion_tokens=16, learning_rate=1e-2, warmup_steps=1,
        log_every=4, save_every=0, max_length=64,
    )  # fmt: skip
    score_before, length_before = rm_score_and_length(sft, rm, held_out)
    out = run_ppo(config)
    # The reward model's adapters sat on the policy's base arrays (no second base).
    assert "adapters on the policy's base arrays" in capsys.readouterr().out
    score_after, length_after = rm_score_and_length(sft, rm, held_out, str(out))
    assert score_after > score_before + 0.2, (score_before, score_after)
    assert length_after < length_before - 1.5, (length_before, length_after)


def test_resume_at_a_rollout_boundary_ends_with_the_same_weights(tiny_model, tmp_path):
    """8 steps, rollouts of 4 steps, a checkpoint at each; drop step 8 and resume (k3 KL)."""
    config = toy_config(tiny_model, tmp_path, steps=8, save_every=4, kl_estimator="k3")
    out = run_ppo(config)
    assert all(m["objective/kl"] >= 0 for m in read_metrics(out) if "objective/kl" in m)

    def result():
        files = ("adapters.safetensors", "critic/adapters.safetensors", "critic/value_head.safetensors")  # fmt: skip
        weights = {f"{f}:{k}": v for f in files for k, v in mx.load(str(out / f)).items()}  # fmt: skip
        mx.eval(weights)
        return weights

    first = result()
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step_0000004", "step_0000008"]
    saved = mx.load(str(checkpoints[0] / "ppo_weights.safetensors"))
    assert "critic.head.weight" in saved and any(k.startswith("policy.") for k in saved)
    shutil.rmtree(checkpoints[-1])
    run_ppo(dataclasses.replace(config, resume=True))
    resumed = result()
    assert first.keys() == resumed.keys()
    for name, value in first.items():
        assert mx.allclose(value, resumed[name], atol=1e-6).item(), name


def test_a_separate_value_model_is_the_critic(tiny_model, tmp_path, corpus_dir):
    """A smaller model with the policy's tokenizer (same corpus) carries the critic."""
    from mlx_align.model.tiny import PRESETS, init_model

    texts = [json.loads(x)["text"] for x in (corpus_dir / "train.jsonl").read_text().splitlines()]  # fmt: skip
    spec = dataclasses.replace(PRESETS["tiny"], hidden_size=32)
    small = init_model(tmp_path / "small", spec, texts * 10, seed=1)
    config = toy_config(tiny_model, tmp_path, steps=4, value_model=str(small))
    out = run_ppo(config)
    critic_config = json.loads((out / "critic" / "critic_config.json").read_text())
    assert critic_config["base_model"] == str(small)
    assert critic_config["hidden_size"] == 32
    assert load_critic(out / "critic")(mx.array([[1, 2]])).shape == (1, 2)


def test_cli_needs_a_reward(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ppo", "--model", str(tiny_model), "--data", str(tmp_path), "--out", str(tmp_path / "r")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "needs a reward model or a reward function" in capsys.readouterr().err
