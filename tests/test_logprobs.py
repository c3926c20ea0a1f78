import math

import mlx.core as mx
import mlx_lm
import numpy as np

from mlx_align.logprobs import sequence_logps, token_logps


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

    from mlx_align.logprobs import grouped_completion_logps, supports_shared_prompts

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

    from mlx_align.logprobs import packed_completion_logps, supports_packing
    from mlx_align.packing import Tree, pack_trees

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
    from mlx_align.logprobs import enable_packing

    plain, _ = mlx_lm.load(str(tiny_model))
    ids = mx.array([list(range(5, 17))])
    before = plain(ids)
    enable_packing(plain)
    assert mx.array_equal(plain(ids), before).item()
