import math

import mlx.core as mx
import mlx_lm
import numpy as np

from mlx_align.logprobs import sequence_logps, token_logps


def test_token_logps_by_hand():
    """Logits [0, ln 3] over 2 tokens: p = [1/4, 3/4]; log p(1) = ln 0.75, log p(0) = ln 0.25."""
    logits = mx.array([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    got = token_logps(logits, mx.array([[1, 0]]))
    np.testing.assert_allclose(
        np.array(got), [[math.log(0.75), math.log(0.25)]], rtol=1e-6
    )


def test_sequence_logps_equals_a_per_token_loop_and_ignores_padding(tiny_model):
    model, tokenizer = mlx_lm.load(str(tiny_model))
    ids = tokenizer.encode("Question: What is 2 + 3?\nAnswer: 5")
    start = 6  # score tokens 6.. only
    padded = mx.array(
        [ids + [0] * 7, ids[:9] + [0] * (len(ids) - 2)]
    )  # second row shorter
    mask = np.zeros(padded.shape, np.float32)
    mask[0, start : len(ids)] = 1
    mask[1, start:9] = 1
    per_token, summed, shifted = sequence_logps(model, padded, mx.array(mask))

    logits = model(mx.array([ids]))[0]  # unpadded forward, (T, V)
    expected = sum(
        (logits[t - 1] - mx.logsumexp(logits[t - 1]))[ids[t]].item()
        for t in range(start, len(ids))
    )
    assert (
        summed[0].item() == np.float32(expected)
        or abs(summed[0].item() - expected) < 1e-4
    )
    expected_short = sum(
        (logits[t - 1] - mx.logsumexp(logits[t - 1]))[ids[t]].item()
        for t in range(start, 9)
    )
    assert abs(summed[1].item() - expected_short) < 1e-4
    assert shifted.sum().item() == (len(ids) - start) + (9 - start)
    assert mx.all(per_token[1, 8:] == 0).item()
