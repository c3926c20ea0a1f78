import mlx_lm
import numpy as np
import pytest

from mlx_align.batches.planning import BatchPlan, bucket_lengths, pad_examples
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import (
    Encoded,
    encode_prompt_completion,
    encode_sft_record,
    encode_text,
    truncate,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return mlx_lm.load(str(tiny_model))[1]


def test_completion_mask_covers_exactly_the_completion_tokens(tokenizer):
    prompt, completion = "Question: What colour is the sky?\nAnswer:", " Blue."
    example = encode_prompt_completion(tokenizer, prompt, completion)
    # By hand: the completion is the tokens of " Blue." plus one EOS.
    completion_ids = tokenizer.encode(completion) + [tokenizer.eos_token_id]
    prompt_ids = tokenizer.encode(prompt)
    assert (
        example.tokens == prompt_ids + completion_ids
    )  # the pair tokenises at the seam here
    tokens, mask = pad_examples(
        [example], rows=2, buckets=[32, 64], pad_id=tokenizer.pad_token_id
    )
    mask = np.array(mask)
    assert tokens.shape == (2, 32)
    assert mask[0].sum() == len(completion_ids)
    assert mask[0, len(prompt_ids) : len(prompt_ids) + len(completion_ids)].all()
    assert (
        mask[0, : len(prompt_ids)].sum() == 0
        and mask[0, len(example.tokens) :].sum() == 0
    )
    assert mask[1].sum() == 0  # the filler row trains nothing


def test_eos_is_appended_once(tokenizer):
    eos = tokenizer.eos_token
    once = encode_prompt_completion(tokenizer, "Q:", " A.")
    already = encode_prompt_completion(tokenizer, "Q:", " A." + eos)
    assert once.tokens == already.tokens
    assert (
        once.tokens[-1] == tokenizer.eos_token_id
        and once.tokens[-2] != tokenizer.eos_token_id
    )


def test_text_trains_every_token_but_the_first(tokenizer):
    example = encode_text(tokenizer, "The cat sat.")
    _, mask = pad_examples([example], rows=1, buckets=[32], pad_id=0)
    assert np.array(mask).sum() == len(example.tokens) - 1


def test_chat_messages_mask_only_the_last_assistant_turn(tokenizer):
    record = Record(
        "x.jsonl",
        1,
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Moo."},
            ]
        },
    )
    example = encode_sft_record(tokenizer, record)
    trained = tokenizer.decode(example.tokens[example.completion_start :])
    assert trained == "Moo.<|im_end|>\n"


def test_truncation_drops_prompt_from_the_left_then_completion_from_the_right():
    example = Encoded(
        list(range(10)), completion_start=6
    )  # 6 prompt, 4 completion tokens
    assert truncate(example, 10) is example
    fitted = truncate(example, 7)
    assert fitted.tokens == [3, 4, 5, 6, 7, 8, 9] and fitted.completion_start == 3
    tight = truncate(example, 3)  # one prompt token kept as context, completion cut
    assert tight.tokens == [5, 6, 7] and tight.completion_start == 1
    assert truncate(Encoded([1, 2], 2), 1) is None  # nothing trainable fits


def test_bucket_ladder_is_short_and_ends_at_max_length():
    ladder = bucket_lengths(512)
    assert ladder == [32, 48, 64, 80, 96, 112, 128, 160, 192, 240, 288, 352, 432, 512]
    assert bucket_lengths(100) == [32, 48, 64, 80, 96, 100]
    waste = [
        (b - a - 1) / b for a, b in zip(ladder, ladder[1:], strict=False) if a >= 64
    ]
    assert (
        max(waste) < 0.25
    )  # past 64 tokens, a row one token over a bucket wastes < 25%


def test_batch_plan_is_deterministic_and_random_access():
    plan = BatchPlan.by_length([5, 1, 4, 2, 3, 9, 7], per_rank=2, seed=3)
    assert plan.batches[0] == [1, 3]  # shortest first, before shuffling
    run = [plan.batch(k) for k in range(10)]
    again = BatchPlan.by_length([5, 1, 4, 2, 3, 9, 7], per_rank=2, seed=3)
    it = again.iterate(start=4)
    assert [next(it) for _ in range(6)] == run[4:]
    epoch = sorted(map(tuple, run[:4]))
    assert epoch == sorted(
        map(tuple, plan.batches)
    )  # each epoch visits every batch once


def test_piece_ladder_steps_by_8_then_follows_the_ladder():
    from mlx_align.batches.planning import piece_bucket_lengths

    assert piece_bucket_lengths(128) == [
        8,
        16,
        24,
        32,
        40,
        48,
        56,
        64,
        80,
        96,
        112,
        128,
    ]
    assert piece_bucket_lengths(40) == [8, 16, 24, 32, 40]
    assert piece_bucket_lengths(20) == [8, 16, 20]


def test_pad_id_is_the_pad_token_else_eos():
    """One source for the padding id (GRPO once fell back to 0, not EOS)."""
    from types import SimpleNamespace

    from mlx_align.data.tokenize import pad_id_of

    assert pad_id_of(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
