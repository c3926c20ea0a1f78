"""The LLM pairwise judge (``--judge-model``): what it reads equals a plain forward of
each judge text, it undoes its order flip, and online DPO runs with it on shared weights."""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from conftest import write_jsonl

import mlx_align.sampling.judge_forward as judge_forward
import mlx_align.sampling.llm_judge as llm_judge
from mlx_align.cli import main
from mlx_align.config.online import OnlineDPOConfig
from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.model.shared_prompts import supports_shared_prompts
from mlx_align.sampling.judges import make_judge
from mlx_align.sampling.llm_judge import (
    PAIRWISE_PROMPT,
    LLMPairwiseJudge,
    common_prefix,
    read_prompt_template,
    verdicts_from,
)

CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Name a green thing."}],
    "A plain prompt, no chat",
]
PAIRS = [("4", "It is four, I think."), ("grass", "a red apple"), ("yes", "no")]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    return model.freeze(), tokenizer


def plain_margin(model, ids: list[int], answers: list[int]) -> float:
    """log p("1") - log p("0") after the whole text, from one unbatched, uncached forward."""
    logits = model(mx.array(ids)[None])[0, -1].astype(mx.float32)
    logps = logits - mx.logsumexp(logits)
    return (logps[answers[1]] - logps[answers[0]]).item()


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_batched_cached_chunked_margins_equal_a_plain_forward_of_each_text(
    model_and_tokenizer, monkeypatch, streams
):
    """Rows of unequal length, ending in different chunks; the second call reuses the
    prefix; on the CPU the rows shared out over 1, 2 (rows 1 + 2) or 3 streams."""
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(judge_forward, "CHUNK", 16)
    monkeypatch.setattr(llm_judge, "CPU_STREAMS", streams)
    judge = LLMPairwiseJudge(model, tokenizer, seed=0)
    records = [Record("t", i + 1, {"prompt": c}) for i, c in enumerate(CHATS)]
    rows = [judge.encode(judge.render(r.fields["prompt"], p)) for r, p in zip(records, PAIRS, strict=True)]  # fmt: skip
    assert len({len(r) for r in rows}) == 3
    expected = [plain_margin(model, r, judge.answers) for r in rows]
    for call in range(2):
        got = judge.answer_margins(rows if call == 0 else rows[::-1]).tolist()
        want = expected if call == 0 else expected[::-1]
        np.testing.assert_allclose(got, want, atol=1e-4)
    shared = judge.shared_prefix(rows)
    assert shared > 16 and rows[0][:shared] == judge.prefix[:shared]
    assert len(set(expected)) == 3  # the rows really differ
    assert len(judge.streams) == (streams if streams > 1 else 0)


def test_verdicts_undo_the_order_flip_and_tie_on_equal_log_probs():
    # shown order: "1" wins, "0" wins, a tie, "1" wins; flipped: pairs 1 and 3
    margins, flips = [2.0, -1.0, 0.0, 3.0], [False, True, False, True]
    assert verdicts_from(margins, flips).preferred == [1, 1, None, 0]


def test_swapping_a_pairs_slots_swaps_the_verdict_and_same_texts_tie(
    model_and_tokenizer,
):
    """The shown order hangs on the texts, not the slots: a wrong un-flip breaks the swap."""
    model, tokenizer = model_and_tokenizer
    records = [Record("t", i + 1, {"prompt": c}) for i, c in enumerate(CHATS)] * 3
    pairs = [(f"{a} {k}", f"{b} {k}") for k in range(3) for a, b in PAIRS]
    judge = LLMPairwiseJudge(model, tokenizer, seed=7)
    flips = {judge.flipped(r.fields["prompt"], p) for r, p in zip(records, pairs, strict=True)}  # fmt: skip
    assert flips == {True, False}  # both orders are shown
    given = judge(records, pairs).preferred
    swapped = judge(records, [p[::-1] for p in pairs]).preferred
    assert None not in given and swapped == [1 - p for p in given]
    again = LLMPairwiseJudge(model, tokenizer, seed=7)  # e.g. after a resume
    assert again(records, pairs).preferred == given
    same = judge(records[:2], [("x", "x"), pairs[1]]).preferred
    assert same == [None, given[1]]


def test_without_shuffling_the_pair_is_read_as_given(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    records = [Record("t", i + 1, {"prompt": c}) for i, c in enumerate(CHATS)]
    judge = LLMPairwiseJudge(model, tokenizer, shuffle=False)
    margins = [plain_margin(model, judge.encode(judge.render(r.fields["prompt"], p)), judge.answers) for r, p in zip(records, PAIRS, strict=True)]  # fmt: skip
    assert judge(records, PAIRS).preferred == [int(m > 0) for m in margins]


def test_judge_text_is_trl_prompt_in_the_chat_template(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    judge = LLMPairwiseJudge(*model_and_tokenizer)
    text = judge.render(CHATS[0], ("A", "B"))
    rendered = tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)  # fmt: skip
    content = PAIRWISE_PROMPT.format(prompt=rendered, response0="A", response1="B")
    assert content in text and '"output": """B"""' in text
    assert text.endswith(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}],
            add_generation_prompt=True,
            tokenize=False,
        ).split("x")[-1]  # fmt: skip
    )


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == [1, 2]
    assert common_prefix([[5], [6]]) == []


def test_prompt_file_needs_its_three_places(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("Which is better, {response0} or {response1}?")
    with pytest.raises(UserError, match=r"--judge-prompt .*: lacks \{prompt\}"):
        read_prompt_template(str(bad))
    good = tmp_path / "q.txt"
    good.write_text("Q: {prompt}\nA0: {response0}\nA1: {response1}\nBetter:")
    assert read_prompt_template(str(good)).startswith("Q: {prompt}")


def test_the_model_itself_judges_on_the_start_weights_not_a_second_copy(tiny_model):
    config = OnlineDPOConfig(
        model=str(tiny_model), data="d", judge_model=str(tiny_model)
    )
    start = mlx_lm.load(str(tiny_model))
    judge = make_judge(config, start=lambda: start)
    assert judge.model is start[0]
    other = OnlineDPOConfig(model="elsewhere", data="d", judge_model=str(tiny_model))
    assert make_judge(other, start=lambda: start).model is not start[0]


def test_judge_prompt_without_a_judge_model_is_refused(tmp_path, capsys):
    args = ["online-dpo", "--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main([*args, "--reward", "math", "--judge-prompt", "p.txt"])
    assert stop.value.code == 2
    assert "--judge-prompt: is the prompt of --judge-model" in capsys.readouterr().err


def test_online_dpo_with_its_own_model_as_judge(tiny_model, tmp_path):
    """RLAIF end to end: every pair judged (no ties), trained on, and the held-out win rate written."""
    data = tmp_path / "prompts"
    questions = [f"What is {i} + {i}?" for i in range(8)]
    write_jsonl(data / "train.jsonl", [{"prompt": q} for q in questions])
    write_jsonl(data / "valid.jsonl", [{"prompt": q} for q in questions[:3]])
    out = tmp_path / "odpo"
    main(["online-dpo", "--model", str(tiny_model), "--data", str(data), "--out", str(out),
          "--judge-model", str(tiny_model), "--steps", "2", "--batch-size", "4",
          "--max-completion-tokens", "6", "--log-every", "1", "--save-every", "0",
          "--eval-every", "0", "--no-compile"])  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert len(train) == 2 and all(x["judge/ties"] == 0 for x in train)
    assert "objective/scores" not in train[0]  # an LLM judge gives no scores
    assert 0 <= lines[-1]["val_win_rate"] <= 1
    assert (out / "adapters.safetensors").exists()


def family_model(family: str, vocab: int, **extra):
    """A random 2-layer mlx-lm model of ``family`` (hidden 64, GQA 4/2 heads)."""
    import importlib

    arch = importlib.import_module(f"mlx_lm.models.{family}")
    args = arch.ModelArgs(
        model_type=family, hidden_size=64, num_hidden_layers=2, intermediate_size=96,
        num_attention_heads=4, head_dim=16, rms_norm_eps=1e-6,
        vocab_size=vocab, num_key_value_heads=2, **extra,
    )  # fmt: skip
    mx.random.seed(0)
    model = arch.Model(args)
    mx.eval(model.parameters())
    return model


def judged_against_plain(model, tokenizer) -> tuple[LLMPairwiseJudge, list[list[int]]]:
    """Margins of the three PAIRS checked against a plain forward of each text."""
    judge = LLMPairwiseJudge(model, tokenizer)
    records = [Record("t", i + 1, {"prompt": c}) for i, c in enumerate(CHATS)]
    rows = [judge.encode(judge.render(r.fields["prompt"], p)) for r, p in zip(records, PAIRS, strict=True)]  # fmt: skip
    want = [plain_margin(model, r, judge.answers) for r in rows]
    got = judge.answer_margins(rows).tolist()
    np.testing.assert_allclose(got, want, atol=1e-4)
    return judge, rows


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_other_families_read_whole_logits_and_sliding_windows_share_no_prefix(
    model_and_tokenizer, family, monkeypatch
):
    """gemma2 (softcapped logits, no head split) and gemma3 (sliding-window caches) judge alike."""
    _, tokenizer = model_and_tokenizer
    monkeypatch.setattr(judge_forward, "CHUNK", 16)
    extra = {"sliding_window": 8, "sliding_window_pattern": 2} if family == "gemma3_text" else {}  # fmt: skip
    model = family_model(family, len(tokenizer.vocab), **extra)
    judge, _ = judged_against_plain(model, tokenizer)
    assert (judge.prefix == []) == (family == "gemma3_text")


class Positions(nn.Module):
    """Wraps a module and records how many positions per row it was called on."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def __call__(self, x: mx.array) -> mx.array:
        self.seen.append(x.shape[:2])
        return self.inner(x)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_llama_family_runs_its_top_block_at_the_answer_alone(
    model_and_tokenizer, family, monkeypatch
):
    """The top block's MLP sees one position per row, and the margins still equal
    a plain forward (qwen3: query/key norms inside the attention)."""
    _, tokenizer = model_and_tokenizer
    monkeypatch.setattr(judge_forward, "CHUNK", 16)
    monkeypatch.setattr(llm_judge, "CPU_STREAMS", 1)  # one share: one top-block call
    extra = {"max_position_embeddings": 4096, "tie_word_embeddings": False} if family == "qwen3" else {}  # fmt: skip
    model = family_model(family, len(tokenizer.vocab), rope_theta=10000.0, **extra)
    assert supports_shared_prompts(model)  # probed now: the spies see the judge alone
    top, below = model.model.layers[-1], model.model.layers[0]
    top.mlp, below.mlp = Positions(top.mlp), Positions(below.mlp)
    _, rows = judged_against_plain(model, tokenizer)  # plain forwards first
    judged = len(rows)
    prefix, answers = top.mlp.seen[judged:]  # the shared prefix (once per judge), then
    assert prefix[0] == 1 and answers == (len(rows), 1)  # one position per row
    chunks = below.mlp.seen[judged + 1 :]  # below the top: every token, 16 at a time
    width = max(map(len, rows)) - prefix[1]
    assert [c[1] for c in chunks] == [16] * (width // 16) + [width % 16] * (
        width % 16 > 0
    )


def test_a_judge_model_that_is_nowhere_is_named_by_its_flag(tmp_path):
    config = OnlineDPOConfig(model="m", data="d", judge_model=str(tmp_path / "none"))
    with pytest.raises(UserError, match=r"--judge-model .*none: not a local model"):
        make_judge(config)
