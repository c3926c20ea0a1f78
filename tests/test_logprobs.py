import math

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_align.model.logprobs as logprobs
from mlx_align.model.logprobs import (
    distribution_stat,
    entropy_stat,
    sequence_logps,
    sequence_logps_and_stat,
    token_logps,
)


def lora_model(model_dir):
    """The tiny model with rank-4 LoRA on every layer (B still zero), seed 0 set."""
    from mlx_align.model.adapters import attach_adapters

    model, _ = mlx_lm.load(str(model_dir))
    attach_adapters(
        model,
        {
            "fine_tune_type": "lora",
            "num_layers": -1,
            "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
        },
    )
    mx.random.seed(0)
    return model


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


def test_grouped_completion_logps_equals_scoring_full_rows(tiny_model):
    """Prompts of different lengths (left-padded), 2 completions each: same values, same gradients."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_align.model.shared_prompts import (
        grouped_completion_logps,
        supports_shared_prompts,
    )

    model = lora_model(tiny_model)
    model.update(
        {
            "model": {
                "layers": [
                    {
                        "self_attn": {
                            "q_proj": {"lora_b": 0.1 * mx.random.normal((4, 64))}
                        }
                    }
                ]
                * 2
            }
        }
    )
    assert supports_shared_prompts(model)
    prompts, group = [list(range(5, 17)), list(range(30, 37))], 2
    completions = [[40, 41, 42, 2], [43], [50, 51], [52, 53, 54, 55]]
    width, limit = 12, 4
    prompt_ids = mx.array([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = mx.array(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    ).astype(mx.float32)
    comp_ids = mx.array([c + [0] * (limit - len(c)) for c in completions])
    comp_mask = mx.array(
        [[1] * len(c) + [0] * (limit - len(c)) for c in completions]
    ).astype(mx.float32)
    rows, masks = [], []
    for i, c in enumerate(completions):
        p = prompts[i // group]
        rows.append(p + c + [0] * (20 - len(p) - len(c)))
        masks.append([0] * len(p) + [1] * len(c) + [0] * (20 - len(p) - len(c)))
    rows, masks = mx.array(rows), mx.array(masks).astype(mx.float32)

    def full(m):
        return sequence_logps(m, rows, masks)[1]

    def grouped(m):
        return grouped_completion_logps(
            m, prompt_ids, prompt_mask, comp_ids, comp_mask
        ).sum(axis=-1)

    np.testing.assert_allclose(
        np.array(grouped(model)), np.array(full(model)), atol=1e-4
    )
    _, g_full = nn.value_and_grad(model, lambda m: full(m).sum())(model)
    _, g_grouped = nn.value_and_grad(model, lambda m: grouped(m).sum())(model)
    for (name, a), (_, b) in zip(
        tree_flatten(g_full), tree_flatten(g_grouped), strict=True
    ):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-3).item(), name


def test_packed_trees_equal_scoring_full_rows(tiny_model):
    """Trees of different prompts, 1-3 completions each, packed into two rows
    (capacity 24): summed log-probs, token counts and gradients equal full rows;
    an unnamed slot stays empty."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_align.batches.packing import (
        Tree,
        pack_trees,
        packed_completion_logps,
        supports_packing,
    )

    model = lora_model(tiny_model)
    model.update(
        {
            "model": {
                "layers": [
                    {"mlp": {"up_proj": {"lora_b": 0.1 * mx.random.normal((4, 192))}}}
                ]
                * 2
            }
        }
    )
    assert supports_packing(model)
    trees = [
        Tree(list(range(5, 17)), [[40, 41, 42, 2], [43]], [0, 3]),
        Tree(list(range(30, 33)), [[50, 51]], [1]),
        Tree([7], [[52, 53, 54, 55, 56], [60], [61, 62]], [2, 4, 6]),
    ]
    packed = pack_trees(trees, n_slots=8, pad_id=0, row_capacity=24)
    assert packed[0].shape[0] == 2  # two rows
    rows, masks, order = [], [], []
    for tree in trees:
        for completion, slot in zip(tree.completions, tree.slots, strict=True):
            row = tree.prompt + completion
            rows.append(row + [0] * (20 - len(row)))
            masks.append([0] * len(tree.prompt) + [1] * len(completion))
            masks[-1] += [0] * (20 - len(masks[-1]))
            order.append(slot)
    rows, masks = mx.array(rows), mx.array(masks).astype(mx.float32)

    def full(m):
        summed = sequence_logps(m, rows, masks)[1]
        return mx.zeros((8,)).at[mx.array(order)].add(summed)

    def packed_sum(m):
        return packed_completion_logps(m, packed)[0]

    np.testing.assert_allclose(
        np.array(packed_sum(model)), np.array(full(model)), atol=1e-4
    )
    counts = packed_completion_logps(model, packed)[1]
    assert counts.tolist() == [4, 2, 5, 1, 1, 0, 2, 0]
    _, g_full = nn.value_and_grad(model, lambda m: full(m).sum())(model)
    _, g_packed = nn.value_and_grad(model, lambda m: packed_sum(m).sum())(model)
    for (name, a), (_, b) in zip(
        tree_flatten(g_full), tree_flatten(g_packed), strict=True
    ):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-3).item(), name
    # the wrapped RoPE leaves ordinary (generation) calls unchanged
    from mlx_align.batches.packing import enable_packing

    plain, _ = mlx_lm.load(str(tiny_model))
    ids = mx.array([list(range(5, 17))])
    before = plain(ids)
    enable_packing(plain)
    assert mx.array_equal(plain(ids), before).item()


def chunk_logits(monkeypatch, rows: int | None) -> None:
    """Logits in chunks of ``rows`` positions whatever their size, or (None) always whole."""
    from mlx_align.model import logprobs

    monkeypatch.setattr(logprobs, "LOGITS_IN_ONE_PIECE", 0 if rows else 1 << 60)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 0)
    monkeypatch.setattr(logprobs, "MIN_CHUNK_ROWS", rows or 1)


def chunked_and_whole(model, loss_fn, monkeypatch, rows: int):
    """loss_fn(model) and its gradient, with logits in chunks of ``rows``, then whole."""
    import mlx.nn as nn

    results = []
    for chunk_rows in (rows, None):
        chunk_logits(monkeypatch, chunk_rows)
        value, grads = nn.value_and_grad(model, loss_fn)(model)
        mx.eval(value, grads)
        results.append((value, dict(tree_flatten(grads))))
    return results


def test_chunked_head_logps_equal_whole_logits_with_gradients(tiny_model, monkeypatch):
    """Every weight trainable, tied head: the embedding's gradient comes through both uses.

    A chunk of 3 positions (with a remainder) must give the same log-probs
    and the same gradient for every weight as the logits in one piece.
    """
    model, tokenizer = mlx_lm.load(str(tiny_model))
    assert getattr(model, "lm_head", None) is None  # tied: the head is the embedding
    ids = tokenizer.encode("Question: What is 2 + 3?\nAnswer: 5")
    tokens = mx.array([ids, ids[::-1]])
    mask = mx.ones(tokens.shape)
    assert 2 * (len(ids) - 1) % 3 != 0  # the last chunk is shorter

    def loss(m):
        return -sequence_logps(m, tokens, mask)[1].sum()

    (chunked, chunked_grads), (whole, whole_grads) = chunked_and_whole(
        model, loss, monkeypatch, 3
    )
    assert abs(chunked.item() - whole.item()) < 1e-4
    assert set(chunked_grads) == set(whole_grads)
    embedding = "model.embed_tokens.weight"
    assert mx.abs(whole_grads[embedding]).max().item() > 0
    for name, grad in whole_grads.items():
        np.testing.assert_allclose(
            np.array(chunked_grads[name]), np.array(grad), atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("with_entropy", [False, True])
def test_chunked_head_logps_hold_fewer_logits(with_entropy, tiny_model, monkeypatch):
    """8 rows x 512 positions of a 367-token vocabulary: 6 MB of logits per copy.

    In 128 chunks of 32 positions the forward + backward peak stays well
    below the whole-logits peak (the hidden states, 64 floats a position,
    and about a dozen chunks in flight). With each position's entropy read
    beside the log-probs (PPO's metric) too: the stat's chunks are chained
    like the log-probs' (unchained, every chunk's logits waited for it).
    """
    from mlx_align.model import logprobs

    def loss(h):
        if not with_entropy:
            return logprobs.head_logps(model, h, targets).sum()
        logps, entropy = logprobs.head_logps_and_stat(model, h, targets, logprobs.entropy_stat)  # fmt: skip
        return logps.sum(), entropy

    model, _ = mlx_lm.load(str(tiny_model))
    model.freeze()
    vocab = model.model.embed_tokens.weight.shape[0]
    mx.random.seed(0)
    hidden = mx.random.normal((8, 512, 64))
    targets = mx.random.randint(0, vocab, (8, 512))
    mx.eval(hidden, targets)
    peaks = []
    for rows in (32, None):
        chunk_logits(monkeypatch, rows)
        grad_fn = mx.value_and_grad(loss)
        mx.eval(grad_fn(hidden))  # warm up allocations
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(grad_fn(hidden))
        peaks.append(mx.get_peak_memory() - base)
    logits_bytes = 8 * 512 * vocab * 4
    chunked, whole = peaks
    assert whole > 2 * logits_bytes  # logits and their gradient, at least
    assert chunked < whole / 3


def test_chunked_head_logps_compile(tiny_model, monkeypatch):
    """The chunked custom VJP inside ``mx.compile``, as the training step runs it."""
    import mlx.nn as nn

    from mlx_align.config.stages import AdapterSettings
    from mlx_align.model.adapters import attach_adapters
    from mlx_align.train.adapted import adapter_config

    model, tokenizer = mlx_lm.load(str(tiny_model))
    mx.random.seed(0)
    attach_adapters(model, adapter_config(AdapterSettings()))
    ids = tokenizer.encode("The cat sat on the mat, and the dog sat on the log.")
    tokens, mask = mx.array([ids, ids[::-1]]), mx.ones((2, len(ids)))
    value_and_grad = nn.value_and_grad(
        model, lambda m: -sequence_logps(m, tokens, mask)[1].sum()
    )
    results = []
    for rows in (5, None):
        chunk_logits(monkeypatch, rows)
        step = mx.compile(
            lambda: value_and_grad(model), inputs=model.state, outputs=model.state
        )
        value, grads = step()
        mx.eval(value, grads)
        results.append((value.item(), dict(tree_flatten(grads))))
    (chunked, chunked_grads), (whole, whole_grads) = results
    assert abs(chunked - whole) < 1e-4
    assert any(mx.abs(g).max().item() > 0 for g in whole_grads.values())
    for name, grad in whole_grads.items():
        np.testing.assert_allclose(
            np.array(chunked_grads[name]), np.array(grad), atol=1e-5, err_msg=name
        )


def test_linear_logps_equal_mlx_autodiff_of_the_logits(tiny_model, monkeypatch):
    """The head's custom VJP (softmax kept from the forward) == MLX differentiating
    ``token_logps(hidden @ W.T)``: values and every weight's gradient, tied head."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    ids = tokenizer.encode("Question: What is 2 + 3?\nAnswer: 5")
    tokens, mask = mx.array([ids, ids[::-1]]), mx.ones((2, len(ids)))
    calls = []
    custom = logprobs._linear_logps

    def counted(*args):
        calls.append(1)
        return custom(*args)

    def by_autodiff(weight, hidden, targets, entropy):
        return token_logps(hidden @ weight.T, targets), None

    results = []
    for linear_logps in (counted, by_autodiff):
        monkeypatch.setattr(logprobs, "_linear_logps", linear_logps)
        value, grads = nn.value_and_grad(
            model, lambda m: -sequence_logps(m, tokens, mask)[1].sum()
        )(model)
        mx.eval(value, grads)
        results.append((value.item(), dict(tree_flatten(grads))))
    assert calls  # the custom VJP ran
    (value, grads), (expected, expected_grads) = results
    assert value == pytest.approx(expected, abs=1e-4)
    assert mx.abs(expected_grads["model.embed_tokens.weight"]).max().item() > 0
    for name, grad in expected_grads.items():
        np.testing.assert_allclose(
            np.array(grads[name]), np.array(grad), atol=1e-5, err_msg=name
        )


def test_token_entropy_by_hand():
    uniform = mx.zeros((1, 4))
    assert distribution_stat(uniform, entropy_stat).item() == pytest.approx(
        math.log(4), abs=1e-6
    )
    half_quarter_quarter = mx.log(mx.array([[0.5, 0.25, 0.25]])) + 3.0  # shift-free
    assert distribution_stat(
        half_quarter_quarter, entropy_stat
    ).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    certain = mx.array([[0.0, -1e9, -1e9]])
    assert distribution_stat(certain, entropy_stat).item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize("one_piece", [1 << 24, 64])
def test_entropy_beside_the_log_probs_equals_one_from_the_whole_logits(
    tiny_model, monkeypatch, one_piece
):
    """Whole and chunked (LOGITS_IN_ONE_PIECE forced down) alike; no gradient flows through it."""
    monkeypatch.setattr(logprobs, "LOGITS_IN_ONE_PIECE", one_piece)
    monkeypatch.setattr(logprobs, "MIN_CHUNK_ROWS", 3)  # 10 positions: 4 chunks
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 1)
    model = lora_model(tiny_model)
    tokens = mx.array([[1, 5, 9, 13, 17, 21], [2, 6, 10, 0, 0, 0]])
    mask = mx.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=mx.float32)
    per_token, shifted, entropy = sequence_logps_and_stat(
        model, tokens, mask, entropy_stat
    )
    want_logps, _, want_mask = sequence_logps(model, tokens, mask)
    want = distribution_stat(model(tokens[:, :-1]), entropy_stat) * want_mask
    np.testing.assert_allclose(np.array(per_token), np.array(want_logps), atol=1e-5)
    np.testing.assert_allclose(np.array(entropy), np.array(want), atol=1e-4)
    assert mx.array_equal(shifted, want_mask).item()

    def entropy_sum(m):
        return sequence_logps_and_stat(m, tokens, mask, entropy_stat)[2].sum()

    def logps_sum(m):
        return sequence_logps_and_stat(m, tokens, mask, entropy_stat)[0].sum()

    no_grads = dict(tree_flatten(nn.value_and_grad(model, entropy_sum)(model)[1]))
    assert no_grads and all(mx.all(g == 0).item() for g in no_grads.values())
    grads = dict(tree_flatten(nn.value_and_grad(model, logps_sum)(model)[1]))
    assert any(mx.any(g != 0).item() for g in grads.values())  # the test can fail


@pytest.mark.parametrize("layout", ["full", "shared"])
def test_a_differentiable_entropy_carries_its_gradient(layout, tiny_model):
    """The entropy an entropy bonus trains: its values equal the plain one's,
    and its gradient equals MLX's autodiff of −Σ p log p of the model's own
    logits; the plain (logging) entropy has none."""
    from mlx_align.batches.layouts import FullRows, SharedPrompt

    model, tokenizer = mlx_lm.load(str(tiny_model))
    prompt = tokenizer.encode("Question: What is 2 + 3?\nAnswer:")
    completions = [tokenizer.encode(" 5."), tokenizer.encode(" Five!")]
    if layout == "shared":
        width = max(map(len, completions))
        inputs = SharedPrompt.pad([prompt], completions, 1, 0, (len(prompt), width))
    else:
        from mlx_align.data.tokenize import Encoded

        rows = [Encoded(prompt + c, len(prompt)) for c in completions]
        inputs = FullRows.pad(rows, 2, (32,), 0)

    def total(m, differentiable):
        _, mask, entropy = inputs.token_logps_and_entropy(m, differentiable)
        return (entropy * mask).sum()

    plain, grads = nn.value_and_grad(model, lambda m: total(m, True))(model)
    logging_value, none = nn.value_and_grad(model, lambda m: total(m, False))(model)
    assert plain.item() == pytest.approx(logging_value.item(), abs=1e-4)
    assert max(mx.abs(g).max().item() for _, g in tree_flatten(none)) == 0.0

    def by_autodiff(m):
        rows = [prompt + c for c in completions]
        total = 0.0
        for row in rows:
            logits = m(mx.array([row[:-1]]))[0, len(prompt) - 1 :].astype(mx.float32)
            logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            total = total + -(mx.exp(logp) * logp).sum()
        return total

    expected, expected_grads = nn.value_and_grad(model, by_autodiff)(model)
    assert plain.item() == pytest.approx(expected.item(), abs=1e-3)
    expected_grads = dict(tree_flatten(expected_grads))
    for name, grad in tree_flatten(grads):
        np.testing.assert_allclose(
            np.array(grad), np.array(expected_grads[name]), atol=2e-4, err_msg=name
        )
