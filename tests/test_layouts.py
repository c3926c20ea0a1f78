"""The named layouts: MLX trees that keep their type through mx.compile and
value_and_grad, and whose log-probs agree, in slot order, whatever the layout."""

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

from mlx_align.batches.layouts import FullRows, SharedPrompt, choose_layout
from mlx_align.batches.types import PairBatch, columns_by_index
from mlx_align.data.tokenize import Encoded


def test_compile_and_value_and_grad_keep_the_batch_types():
    seen = []

    def loss(model, batch: PairBatch):
        seen.append((type(batch).__name__, type(batch.inputs).__name__))
        tokens, mask = batch.inputs
        return (model(tokens * mask).squeeze(-1) * batch.valid).sum()

    model = nn.Linear(3, 1)
    batch = PairBatch(FullRows(mx.ones((2, 3)), mx.ones((2, 3))), mx.array([0, -1]))
    grad_fn = nn.value_and_grad(model, loss)
    state = [model.state]
    compiled = mx.compile(lambda b: grad_fn(model, b)[0], inputs=state, outputs=state)
    eager = grad_fn(model, batch)[0]
    assert compiled(batch).item() == pytest.approx(eager.item())
    assert set(seen) == {("PairBatch", "FullRows")}  # traced with the named types
    assert batch.n_examples.item() == 1


def test_columns_by_index_reads_first_columns_then_second_with_filler_zero():
    table = mx.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    got = columns_by_index(table, mx.array([2, 0, -1]))
    assert got.tolist() == [3.0, 1.0, 0.0, 30.0, 10.0, 0.0]


def test_a_group_scores_alike_in_full_rows_and_with_the_prompt_shared(tiny_model):
    """Two prompts x three completions: per-token log-probs in row order, sums in
    slot order (completion k of every prompt, then k + 1), the same either way."""
    model, tokenizer = mlx_lm.load(str(tiny_model))
    assert choose_layout(False, model) == "shared"
    prompts = [tokenizer.encode("Question: What is 2 + 3?\nAnswer:"), [5, 6]]
    completions = [[7, 8, 9], [10], [11, 12], [13, 14, 15, 16], [17], [18, 19]]
    group = len(completions) // len(prompts)
    shared = SharedPrompt.pad(prompts, completions, 2, 0, widths=(32, 8))
    rows = [
        Encoded(prompts[r // group] + c, len(prompts[r // group]))
        for r, c in enumerate(completions)
    ]
    full = FullRows.pad(rows, len(rows), [48], 0)
    shared_tokens, shared_mask = shared.token_logps(model)
    full_tokens, full_mask = full.token_logps(model)
    by_row = lambda per_token, mask: [  # noqa: E731
        [v for v, m in zip(r, k, strict=True) if m]
        for r, k in zip(per_token.tolist(), mask.tolist(), strict=True)
    ]
    for a, b in zip(
        by_row(shared_tokens, shared_mask), by_row(full_tokens, full_mask), strict=True
    ):
        assert a == pytest.approx(b, abs=1e-4)
    summed, lengths = shared.logps(model)
    full_summed, full_lengths = full.logps(model)  # row order
    slots = [0, 3, 1, 4, 2, 5]  # row of slot s: completion s // 2 of prompt s % 2
    assert lengths.tolist() == [full_lengths.tolist()[r] for r in slots]
    assert summed.tolist() == pytest.approx(
        [full_summed.tolist()[r] for r in slots], abs=1e-4
    )
    assert shared.padded_tokens == 2 * 32 + 6 * 8 and shared.widths == (32, 8)
