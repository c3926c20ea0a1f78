"""Online DPO: pairs sampled from the policy, ordered by a judge, a DPO step;
the judge's held-out win rate of the policy against its start rises."""

import json

import mlx.core as mx
import mlx_lm
import pytest
from conftest import write_jsonl
from test_reward import HELD_OUT_THINGS, TRAIN_THINGS, shorter_is_better

from mlx_align.cli import main
from mlx_align.config.online import OnlineDPOConfig
from mlx_align.config.stages import RewardConfig, SFTConfig
from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.sampling.judges import FunctionJudge, Verdicts, by_score
from mlx_align.sampling.rollout import Group
from mlx_align.stages.online_dpo import OnlinePairs, run_online_dpo
from mlx_align.stages.reward import run_reward
from mlx_align.stages.sft import run_sft

QUICK = dict(eval_every=0, save_every=0, log_every=5, warmup_steps=2)


def shorter(prompts, completions):
    """A pairwise judge with TRL's signature: the shorter text wins; -1 on a tie."""
    return [-1 if len(a) == len(b) else int(len(b) < len(a)) for a, b in completions]


def one_answer(prompts, completions):
    return [0]  # one verdict, whatever the number of pairs


def test_by_score_prefers_the_higher_score_and_ties_equal_ones():
    verdicts = by_score([(1.0, 2.0), (3.0, -1.0), (0.5, 0.5)])
    assert verdicts.preferred == [1, 0, None]


def test_function_judge_follows_trl_contract_and_refuses_bad_answers():
    judge = FunctionJudge("test_online_dpo:shorter")
    records = [Record("t", 1, {"prompt": "p"})] * 3
    verdicts = judge(records, [("aa", "a"), ("a", "aa"), ("b", "c")])
    assert verdicts == Verdicts([1, 0, None], None)
    bad = FunctionJudge("test_online_dpo:one_answer")
    with pytest.raises(
        UserError, match="--judge: must return 0, 1 or -1 for each of 3"
    ):
        bad(records, [("a", "b")] * 3)


def test_pairs_are_batched_chosen_first_and_ties_are_filler(tiny_model):
    """Prompt 0: completion 1 preferred (order flipped); prompt 1: a tie (index -1)."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    config = OnlineDPOConfig(
        model="m", data="d", max_completion_tokens=8, reward_model="rm"
    )
    records = [Record("t", i + 1, {"prompt": f"Question {i}?"}) for i in range(2)]
    pairs = OnlinePairs(config, model, tokenizer, records, judge=None)
    pairs.reference = model
    groups = [Group([5, 6], [[7, 8, 9], [10]]), Group([5, 11, 12], [[13], [14, 15]])]
    batch = pairs.batch([0, 1], groups, Verdicts([1, None], [(0.0, 2.0), (1.0, 1.0)]))
    assert batch.index.tolist() == [0, -1] and batch.n_examples.item() == 1
    completions = batch.inputs.completions.tolist()  # shared prompt: pairs in rows
    assert completions[0][:1] == [10] and completions[1][:3] == [7, 8, 9]
    stats = dict(zip(pairs.stat_names, batch.stats.tolist(), strict=True))
    assert stats["judge/ties"] == 0.5
    assert stats["objective/scores"] == pytest.approx(1.0)  # (0 + 2 + 1 + 1) / 4
    assert stats["objective/scores_margin"] == pytest.approx(2.0)  # the judged pair
    summed = batch.inputs.logps(model)[0]  # slot order: chosen of both, then rejected
    assert mx.allclose(batch.reference, summed).item()


def test_two_judges_at_once_are_refused_before_anything_loads(tmp_path, capsys):
    args = ["online-dpo", "--model", str(tmp_path / "none"), "--data", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        main(
            [*args, "--reward", "math", "--judge", "m:f", "--out", str(tmp_path / "o")]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "name exactly one judge, got --judge, --reward" in err


@pytest.fixture(scope="module")
def start_and_judge(tiny_model, tmp_path_factory):
    """A start that mostly answers long, and a reward model that prefers short answers."""
    root = tmp_path_factory.mktemp("online")
    train, valid = (
        shorter_is_better(TRAIN_THINGS, 0),
        shorter_is_better(HELD_OUT_THINGS, 1),
    )
    write_jsonl(root / "pairs" / "train.jsonl", train)
    write_jsonl(root / "pairs" / "valid.jsonl", valid)
    long_mostly = [r["rejected"] for r in train] + [r["chosen"] for r in train[::4]]
    prompts = [r["prompt"] for r in train] + [r["prompt"] for r in train[::4]]
    sft_rows = [{"prompt": p, "completion": c} for p, c in zip(prompts, long_mostly, strict=True)]  # fmt: skip
    write_jsonl(root / "sft" / "train.jsonl", sft_rows)
    write_jsonl(root / "prompts" / "train.jsonl", [{"prompt": r["prompt"]} for r in train[::2]])  # fmt: skip
    write_jsonl(root / "prompts" / "valid.jsonl", [{"prompt": r["prompt"]} for r in valid[::2]])  # fmt: skip
    start = run_sft(
        SFTConfig(
            model=str(tiny_model),
            data=str(root / "sft"),
            out=str(root / "sft-run"),
            steps=60,
            batch_size=8,
            learning_rate=1e-2,
            full=True,
            **QUICK,
        )  # fmt: skip
    )
    judge = run_reward(
        RewardConfig(
            model=str(start),
            data=str(root / "pairs"),
            out=str(root / "rm"),
            steps=30,
            batch_size=8,
            learning_rate=3e-3,
            **QUICK,
        )  # fmt: skip
    )
    return start, judge, root / "prompts"


def test_online_dpo_judged_by_a_reward_model_wins_against_its_start(
    start_and_judge, tmp_path
):
    start, judge, prompts = start_and_judge
    out = tmp_path / "odpo"
    config = OnlineDPOConfig(
        model=str(start), data=str(prompts), out=str(out), reward_model=str(judge),
        steps=30, batch_size=4, learning_rate=5e-3, max_completion_tokens=12,
        **{**QUICK, "eval_every": 15}, save_best="val_win_rate",
    )  # fmt: skip
    run_online_dpo(config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert train[-1]["objective/scores"] > train[0]["objective/scores"] + 1.0
    assert lines[-1]["val_win_rate"] >= 0.7  # the goal
    # Measured at each evaluation, so --save-best keeps the best (ties: the first).
    rates = {x["step"]: x["val_win_rate"] for x in lines if "val_win_rate" in x}
    assert list(rates) == [15, 30]
    best = json.loads((out / "best" / "best.json").read_text())
    assert (best["metric"], best["greater"]) == ("val_win_rate", True)
    assert best["value"] == max(rates.values())
    assert best["step"] == min(s for s, r in rates.items() if r == best["value"])
    # The judged pairs, with the reward model's scores, every 5th micro-batch.
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["rollout"] for s in samples] == [k for k in range(0, 30, 5) for _ in range(8)]  # fmt: skip
    assert all(isinstance(s["reward"], float) and s["completion"] for s in samples)
    for x in train:  # TRL's relation between the logged metrics
        kl = (x["rewards/chosen"] + x["rewards/rejected"]) / (2 * 0.1)
        assert x["objective/kl"] == pytest.approx(kl, rel=1e-3, abs=1e-4)
        rlhf = x["objective/scores"] - 0.1 * x["objective/kl"]
        assert x["objective/rlhf_reward"] == pytest.approx(rlhf, rel=1e-3, abs=1e-4)
