"""KTO: unpaired data and paired splits, KL rows, the loss by hand, and training end to end."""

import json
import math

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from conftest import write_jsonl

from mlx_align.batches.kto import KTOBatches, KTOExample, encode_kto
from mlx_align.batches.planning import pad_examples
from mlx_align.batches.preference import encode_completion
from mlx_align.config.stages import KTOConfig
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.jsonl import read_jsonl
from mlx_align.data.tokenize import Encoded, encode_prompt_completion
from mlx_align.model.logprobs import sequence_logps
from mlx_align.stages.kto import kto_batch_loss, run_kto

QUESTIONS = [
    "What colour is the sky?",
    "What is 2 + 3?",
    "What does a cow say?",
    "What is the capital of France?",
    "What colour is grass?",
    "What does a dog say?",
    "What is 1 + 1?",
    "Where is the mat?",
]
HELD_OUT = ["What colour is an apple?", "What is 4 + 5?", "What does a cat say?"]
GOOD, BAD = " Good.", " Bad."


def prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(autouse=True)
def reference_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return mlx_lm.load(str(tiny_model))[1]


@pytest.fixture(scope="module")
def kto_dir(tmp_path_factory):
    """Unpaired train rows (desirable " Good.", undesirable " Bad."); paired valid rows."""
    root = tmp_path_factory.mktemp("kto")
    rows = [
        {"prompt": prompt(q), "completion": c, "label": c == GOOD}
        for q in QUESTIONS
        for c in (GOOD, BAD)
    ]
    write_jsonl(root / "train.jsonl", rows)
    pairs = [{"prompt": prompt(q), "chosen": GOOD, "rejected": BAD} for q in HELD_OUT]
    write_jsonl(root / "valid.jsonl", pairs)
    return root


def kto_config(model, data, out, **overrides) -> KTOConfig:
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        steps=20,
        batch_size=4,
        beta=1.0,
        learning_rate=5e-3,
        warmup_steps=2,
        eval_every=0,
        log_every=1,
        save_every=0,
        compile=False,
    )
    return KTOConfig(**{**settings, **overrides})


def read_metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_paired_record_splits_into_one_desirable_and_one_undesirable(
    tokenizer, tmp_path
):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Q: sky?\nA:", "chosen": " Blue.", "rejected": " Red."},
            {"prompt": "Q: cow?\nA:", "completion": " Moo.", "label": False},
        ],
    )
    records = read_jsonl(path)
    examples = encode_kto(tokenizer, records, max_length=64)
    assert [e.label for e in examples] == [True, False, False]
    assert examples[0].example == encode_completion(tokenizer, records[0], "chosen")
    assert examples[1].example == encode_completion(tokenizer, records[0], "rejected")
    assert examples[2].example == encode_completion(tokenizer, records[1], "completion")


@pytest.mark.parametrize("label", [1, "true", None])
def test_a_label_that_is_not_a_bool_names_its_line(label, tokenizer, tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "A", "completion": " b", "label": True},
            {"prompt": "A", "completion": " b", "label": label},
        ],
    )
    with pytest.raises(
        DataError, match=f"^{path}:2: field 'label' must be true or false"
    ):
        encode_kto(tokenizer, read_jsonl(path), max_length=64)


def test_kl_rows_pair_each_prompt_with_the_next_completion_of_its_batch():
    """Batches of 3 over 7 examples (by length): [0 1 2] [3 4 5] [6].
    KL row of i = prompt_i + completion_(i+1 mod 3) within the batch; example 6,
    alone, borrows the first completion of the previous batch (3)."""
    examples = [  # prompt tokens (100 + i,), completion (i, i) then "EOS" 0
        KTOExample(Encoded([100 + i, i, i, 0], 1), label=i % 2 == 0) for i in range(7)
    ]
    batches = KTOBatches(examples, batch_size=3, max_length=32, pad_id=0, seed=0)
    assert batches.plan.batches == [[0, 1, 2], [3, 4, 5], [6]]
    (tokens, mask), labels, index, _ = batches.pad([3, 4, 5])
    assert tokens.shape == (6, 32)
    kl_rows = tokens[3:, :4].tolist()
    assert kl_rows == [[103, 4, 4, 0], [104, 5, 5, 0], [105, 3, 3, 0]]
    assert mask[3:, :4].tolist() == [[0, 1, 1, 1]] * 3  # the completion is scored
    assert labels.tolist() == [False, True, False] and index.tolist() == [3, 4, 5]

    (tokens, mask), labels, index, _ = batches.pad([6])  # filler: index -1, no mask
    assert tokens[:, :4].tolist()[3] == [106, 3, 3, 0]
    assert index.tolist() == [6, -1, -1]
    assert mask[[1, 2, 4, 5]].sum().item() == 0


def test_loss_by_hand_with_kl_from_the_mismatched_rows():
    """Reference = policy − 0 on matched rows (r = 0) and policy − d_i on KL rows,
    d = [1, 2, 3] for three real examples (a filler's d = 100 must not count):
    z₀ = mean(d) = 2. β = 0.5, labels [D, U, D]:
        desirable:   1 − σ(β(0 − 2)) = 1 − σ(−1) = 0.731059
        undesirable: 1 − σ(β(2 − 0)) = 1 − σ(1)  = 0.268941
        loss = (2·0.731059 + 0.268941) / 3 = 0.577020; kl metric = 2;
        logps/chosen = mean policy log-prob of examples 0 and 2.
    The model is a bigram table (logits = embedding of the last token), so the
    compiled variant builds in seconds; eager and mx.compile'd agree."""
    mx.random.seed(0)
    model = nn.Embedding(16, 16)  # (B, T) ids -> (B, T, 16) logits
    examples = [
        KTOExample(Encoded([1, 2 + i, 5 + i, 6 + i, 0], 2), label)
        for i, label in enumerate([True, False, True])
    ]
    batches = KTOBatches(examples, batch_size=4, max_length=32, pad_id=0, seed=0)
    batch = batches.pad([0, 1, 2])
    assert batch.labels.tolist() == [True, False, True, False]
    policy = sequence_logps(model, *batch.inputs)[1]  # (8,)
    ref = policy - mx.array([0, 0, 0, 0, 1, 2, 3, 100], dtype=mx.float32)
    batch = batch._replace(reference=ref)
    assert batch.n_examples.item() == 3

    def loss(batch):
        return kto_batch_loss(model, batch, beta=0.5)

    expected = (2 * (1 - sigmoid(-1)) + (1 - sigmoid(1))) / 3
    for fn in (loss, mx.compile(loss, inputs=model.state)):
        value, n_tokens, metrics = fn(batch)
        assert value.item() == pytest.approx(expected, abs=1e-5)
        assert metrics["kl"].item() == pytest.approx(2.0, abs=1e-5)
        assert metrics["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-5)
        desirable_logps = (policy[0] + policy[2]).item() / 2
        assert metrics["logps/chosen"].item() == pytest.approx(desirable_logps)
        assert metrics["logps/rejected"].item() == pytest.approx(policy[1].item())
        assert n_tokens.item() == 9  # 3 completion tokens in each matched row


def held_out_margin(model_path, adapter_path, tokenizer) -> float:
    """Mean over held-out prompts of (log π − log π_ref)(Good) − (log π − log π_ref)(Bad)."""
    rows = [
        encode_prompt_completion(tokenizer, prompt(q), c)
        for c in (GOOD, BAD)
        for q in HELD_OUT
    ]
    tokens, mask = pad_examples(rows, len(rows), [64], pad_id=0)
    base = mlx_lm.load(str(model_path))[0]
    policy = mlx_lm.load(str(model_path), adapter_path=str(adapter_path))[0]
    ratio = (
        sequence_logps(policy, tokens, mask)[1] - sequence_logps(base, tokens, mask)[1]
    )
    good, bad = mx.split(ratio, 2)
    return (good - bad).mean().item()


def test_compiled_kto_raises_desirable_over_undesirable(
    tiny_model, kto_dir, tokenizer, tmp_path
):
    """At step 0 LoRA is the identity: policy == reference, so z₀ = 0, r = 0 and every
    example's loss is 1 − σ(0) = 0.5. Training moves held-out Good above Bad."""
    out = tmp_path / "run"
    run_kto(kto_config(tiny_model, kto_dir, out, compile=True, eval_every=10))
    lines = read_metrics(out)
    train_lines = [m for m in lines if "loss" in m]
    first = train_lines[0]
    assert first["loss"] == pytest.approx(0.5, abs=1e-5)
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert train_lines[-1]["loss"] < 0.3
    val = [m for m in lines if "val_loss" in m]
    assert val[-1]["val_rewards/chosen"] > val[-1]["val_rewards/rejected"]
    assert held_out_margin(tiny_model, out, tokenizer) > 2.0  # 0 at step 0


@pytest.mark.parametrize(
    "precompute, separate_ref", [(False, False), (True, True), (False, True)]
)
def test_reference_variants_match_the_precomputed_reference(
    precompute, separate_ref, tiny_model, kto_dir, tmp_path
):
    """Per-step reference (shared base arrays, or a loaded --ref-model) and a
    precomputed --ref-model (the same weights here) give the default run's numbers."""
    run_kto(kto_config(tiny_model, kto_dir, tmp_path / "default", steps=4))
    ref_model = str(tiny_model) if separate_ref else ""
    variant = kto_config(
        tiny_model,
        kto_dir,
        tmp_path / "variant",
        steps=4,
        precompute=precompute,
        ref_model=ref_model,
    )
    run_kto(variant)
    compared = (
        "loss",
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "val_loss",
        "val_kl",
    )
    default, other = (
        read_metrics(tmp_path / "default"),
        read_metrics(tmp_path / "variant"),
    )
    for a, b in zip(default, other, strict=True):
        for name in set(compared) & a.keys():
            assert a[name] == pytest.approx(b[name], abs=1e-4), name


def test_batch_size_one_is_refused(tiny_model, kto_dir, tmp_path):
    with pytest.raises(UserError, match="--batch-size: KTO needs at least 2"):
        run_kto(kto_config(tiny_model, kto_dir, tmp_path / "r", batch_size=1))
