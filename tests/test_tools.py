"""Multi-turn tool use (issue 25, first slice): a scripted policy's calls reach the
tools and their exact results come back as tool turns; the mask covers exactly
the model's tokens; bad calls become tool messages and counts; environments
keep state per trajectory; GRPO trains on the model's tokens only."""

import json

import mlx.core as mx
import pytest
from conftest import FACTS
from mlx_lm.tokenizer_utils import load as load_tokenizer

from mlx_align.sampling.conversations import (
    ToolTemplate,
    conversation_stats,
    converse,
    prompt_tokens,
    start,
)
from mlx_align.sampling.rollout import Group
from mlx_align.sampling.tools import ToolBox, tool_schema


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def divide(a: int, b: int) -> float:
    """Divide a by b.

    Args:
        a: The dividend.
        b: The divisor.
    """
    return a / b


class Counter:
    """An environment: a number that the policy moves, one instance per trajectory."""

    def reset(self, start: int = 0, **row) -> str:
        self.value = start
        return f"The counter is at {start}."

    def increment(self, by: int) -> int:
        """Add to the counter.

        Args:
            by: How much to add.
        """
        self.value += by
        return self.value


def make_counter() -> Counter:
    return Counter()


def counter_value(prompts, completions, environments, **columns) -> list[float]:
    return [float(e.value) for e in environments]


CALL = '<tool_call>{{"name": "{name}", "arguments": {args}}}</tool_call>'


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory):
    from mlx_align.model.tiny import PRESETS, init_model

    texts = [p + c for p, c in FACTS] * 5 + [CALL.format(name="add", args='{"a": 2, "b": 3}')] * 5  # fmt: skip
    out = tmp_path_factory.mktemp("tools") / "model"
    return init_model(out, PRESETS["tiny"], texts * 10, seed=0, chat_template="chatml-tools")  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tools_model):
    return load_tokenizer(tools_model)


def scripted(tokenizer, turns_by_row):
    """A sample_turn that answers each call from the rows' scripts, in order, and
    records the prompts it was given."""
    eos = tokenizer.eos_token_id
    queues = [
        [
            tokenizer.encode(t, add_special_tokens=False)
            + ([eos] if not t.endswith("</tool_call>") else [])
            for t in turns
        ]  # fmt: skip
        for turns in turns_by_row
    ]
    seen = []

    def sample_turn(prompts, group_size, max_tokens):
        seen.append([list(p) for p in prompts])
        rows = [q.pop(0) for q in queues if q][: len(prompts) * group_size]
        return [
            Group(p, rows[i * group_size : (i + 1) * group_size])
            for i, p in enumerate(prompts)
        ]

    return sample_turn, seen


def template_for(tokenizer, functions):
    schemas = [tool_schema(f) for f in functions]
    return ToolTemplate(tokenizer, schemas, set(tokenizer.eos_token_ids))


def test_a_call_gets_the_tools_exact_result_and_the_mask_covers_the_model_tokens(tokenizer):  # fmt: skip
    template = template_for(tokenizer, [add])
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = prompt_tokens(template, messages, environment=False)
    call = CALL.format(name="add", args='{"a": 2, "b": 3}')
    sample_turn, seen = scripted(tokenizer, [[call, "The sum is 5."]])
    trajectory = start(template, messages, ToolBox({"add": add}), {})
    converse(sample_turn, [prompt], [trajectory], 1, budget=200, max_turns=4)
    first = tokenizer.encode(call, add_special_tokens=False)
    last = tokenizer.encode("The sum is 5.", add_special_tokens=False) + [tokenizer.eos_token_id]  # fmt: skip
    assert first[-1] == template.end_id  # the call ends on the stop token
    glue = trajectory.tokens[len(first) : len(trajectory.tokens) - len(last)]
    assert trajectory.tokens == first + glue + last
    assert trajectory.mask == [1] * len(first) + [0] * len(glue) + [1] * len(last)
    assert (
        tokenizer.decode(glue)
        == (
            "<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"  # fmt: skip
        )
    )
    assert seen == [
        [prompt],
        [prompt + first + glue],
    ]  # the second turn sees the result
    assert (trajectory.turns, trajectory.calls, trajectory.done) == (2, 1, True)
    assert trajectory.final_text == "The sum is 5."
    # The conversation's tokens are those of the chat template's own rendering.
    final = [*messages, {"role": "assistant", "content": call}, {"role": "tool", "name": "add", "content": "5"}]  # fmt: skip
    assert prompt + first + glue == template.encode(
        template.render(final, generation=True)
    )


def test_bad_calls_become_tool_messages_and_counts_and_the_run_goes_on(tokenizer):
    template = template_for(tokenizer, [add, divide])
    messages = [{"role": "user", "content": "Go."}]
    prompt = prompt_tokens(template, messages, environment=False)
    script = [
        "<tool_call>{not json</tool_call>",
        CALL.format(name="mul", args='{"a": 2, "b": 3}'),
        CALL.format(name="divide", args='{"a": 1, "b": 0}'),
        "Done.",
    ]
    sample_turn, seen = scripted(tokenizer, [script])
    trajectory = start(template, messages, ToolBox({"add": add, "divide": divide}), {})
    converse(sample_turn, [prompt], [trajectory], 1, budget=400, max_turns=4)
    results = [m["content"] for m in trajectory.messages if m["role"] == "tool"]
    assert results == [
        "error: the tool call did not parse (JSONDecodeError)",
        "error: no tool named 'mul' (tools: add, divide)",
        "error: ZeroDivisionError: division by zero",
    ]
    assert trajectory.failures == {"parse": 1, "unknown": 1, "raised": 1}
    assert (trajectory.turns, trajectory.calls, trajectory.final_text) == (
        4,
        3,
        "Done.",
    )
    assert "division by zero" in tokenizer.decode(seen[-1][0])  # the model saw it
    stats = conversation_stats([trajectory])
    assert stats["tools/failures"] == 3 and stats["tools/failures_raised"] == 1
    assert stats["tools/generated_tokens"] == sum(trajectory.mask)
    assert stats["tools/tool_tokens"] == len(trajectory.mask) - sum(trajectory.mask)


def test_a_call_in_the_last_turn_is_not_run(tokenizer):
    template = template_for(tokenizer, [add])
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = prompt_tokens(template, messages, environment=False)
    sample_turn, _ = scripted(tokenizer, [[CALL.format(name="add", args='{"a": 2, "b": 3}')]])  # fmt: skip
    trajectory = start(template, messages, ToolBox({"add": add}), {})
    converse(sample_turn, [prompt], [trajectory], 1, budget=200, max_turns=1)
    assert (trajectory.turns, trajectory.calls) == (1, 0)
    assert trajectory.mask == [1] * len(trajectory.tokens)


def test_environments_keep_state_per_trajectory(tokenizer):
    template = template_for(tokenizer, [Counter.increment])
    messages = [{"role": "user", "content": "Raise the counter."}]
    prompt = prompt_tokens(template, messages, environment=True)
    up = CALL.format(name="increment", args='{"by": %d}')
    # Two trajectories of one prompt: one increments twice, the other once.
    sample_turn, seen = scripted(tokenizer, [[up % 2, up % 3, "Done."], [up % 10, "Done."]])  # fmt: skip
    trajectories = [start(template, messages, ToolBox({}, Counter()), {"start": 7}) for _ in range(2)]  # fmt: skip
    opening = list(trajectories[0].tokens)
    assert tokenizer.decode(opening) == "<|im_start|>user\nThe counter is at 7.<|im_end|>\n<|im_start|>assistant\n"  # fmt: skip
    assert trajectories[0].mask == [0] * len(opening)  # the observation is not trained
    converse(sample_turn, [prompt], trajectories, 2, budget=400, max_turns=4)
    assert [t.toolbox.environment.value for t in trajectories] == [12, 17]
    assert counter_value(None, None, [t.toolbox.environment for t in trajectories]) == [12.0, 17.0]  # fmt: skip
    assert seen[0] == [prompt + opening]  # alike openings: one prefill for the group
    assert "<tool_response>\n9\n</tool_response>" in tokenizer.decode(seen[1][0])


@pytest.fixture(scope="module")
def tool_data(tmp_path_factory):
    from conftest import write_jsonl

    root = tmp_path_factory.mktemp("tool_data")
    rows = [{"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(8)]  # fmt: skip
    write_jsonl(root / "train.jsonl", rows)
    return root


def tool_config(model, data, tmp_path, **overrides):
    from mlx_align.config.online import GRPOConfig

    settings = dict(
        model=str(model), data=str(data), out=str(tmp_path / "run"), steps=2,
        batch_size=2, group_size=2, max_completion_tokens=160, reward=("math",),
        tool=("test_tools:add",), learning_rate=1e-2, warmup_steps=1, log_every=1,
        save_every=0, eval_every=0, compile=False, max_length=640, lora_rank=4,
    )  # fmt: skip
    return GRPOConfig(**{**settings, **overrides})


def scripted_draw(tokenizer):
    """GRPO's sampler replaced by a policy that calls add, then answers its result."""
    eos = tokenizer.eos_token_id

    def draw(model, settings, prompts, group_size, eos_ids, max_tokens=None, **kwargs):
        groups = []
        for p in prompts:
            text = tokenizer.decode(p)
            if "<tool_response>" in text:
                result = text.rsplit("<tool_response>\n", 1)[1].split("\n")[0]
                reply = tokenizer.encode(f"The answer is {result}.", add_special_tokens=False) + [eos]  # fmt: skip
            else:
                a, b = text.rsplit("What is ", 1)[1].split("?")[0].split(" + ")
                reply = tokenizer.encode(CALL.format(name="add", args=json.dumps({"a": int(a), "b": int(b)})), add_special_tokens=False)  # fmt: skip
            groups.append(Group(p, [list(reply) for _ in range(group_size)]))
        return groups

    return draw


@pytest.mark.parametrize("shared", [True, False])
def test_grpo_batches_train_only_the_model_tokens_and_score_them_as_a_plain_forward(
    tools_model, tokenizer, tool_data, tmp_path, monkeypatch, shared
):
    import mlx_lm

    from mlx_align.data.source import load_split
    from mlx_align.stages import grpo_rollouts

    monkeypatch.setattr(grpo_rollouts, "draw", scripted_draw(tokenizer))
    config = tool_config(tools_model, tool_data, tmp_path)
    model, tok = mlx_lm.load(str(tools_model))
    records = load_split(config.source, "train", required=True)
    rollouts = grpo_rollouts.Rollouts(config, model, tok, records)
    rollouts.shared_prompts = shared
    groups, trajectories = rollouts.converse([0, 1], records[:2])
    inputs = rollouts.inputs(groups)
    logps, mask = inputs.token_logps(model)
    for r, t in enumerate(trajectories):
        prompt = groups[r // 2].prompt
        full = mx.array(prompt + t.tokens)[None]
        logits = model(full[:, :-1]).astype(mx.float32)
        plain = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        targets = plain[0, mx.arange(full.shape[1] - 1), full[0, 1:]]
        start_at = 0 if shared else len(prompt) - 1  # full rows: (n, T - 1) targets
        row_mask = mask[r, start_at : start_at + len(t.tokens)].tolist()
        assert row_mask == t.mask  # exactly the model's tokens, token by token
        ours = logps[r, start_at : start_at + len(t.tokens)]
        theirs = targets[len(prompt) - 1 :] * mx.array(t.mask)
        assert mx.abs(ours - theirs).max().item() <= 1e-4
    assert [(t.calls, t.failures["parse"], t.final_text) for t in trajectories] == [
        (1, 0, "The answer is 1."), (1, 0, "The answer is 1."),
        (1, 0, "The answer is 3."), (1, 0, "The answer is 3."),
    ]  # fmt: skip


def test_grpo_runs_with_tools_and_an_environment_and_logs_the_turns(
    tools_model, tokenizer, tool_data, tmp_path, monkeypatch
):
    from mlx_align.stages import grpo_rollouts
    from mlx_align.stages.grpo import run_grpo

    monkeypatch.setattr(grpo_rollouts, "draw", scripted_draw(tokenizer))
    config = tool_config(
        tools_model, tool_data, tmp_path, environment="test_tools:make_counter",
        reward=("math", "test_tools:counter_value"),
    )  # fmt: skip
    run_grpo(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert [x["step"] for x in lines] == [1, 2]
    for line in lines:
        assert line["tools/calls"] == 1.0 and line["tools/failures"] == 0.0
        assert line["tools/turns"] == 2.0 and line["tools/tool_tokens"] > 0
        assert line["rewards/math/mean"] == 1.0  # the tool's sum is the answer
        assert line["rewards/counter_value/mean"] == 0.0  # the counter was never moved
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]  # fmt: skip
    turns = samples[0]["completion"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["content"] == str(int(turns[-1]["content"].split()[-1][:-1]))


def undocumented(a: int) -> int:
    return a


def no_reset() -> object:
    return object()


def test_grpo_with_tools_runs_on_the_real_sampler(tools_model, tool_data, tmp_path):
    """The compiled sampler stops at the call's end token as at EOS; whatever the
    untrained model samples, the run goes through and logs its turns."""
    from mlx_align.stages.grpo import run_grpo

    run_grpo(tool_config(tools_model, tool_data, tmp_path, steps=1, compile=True, max_completion_tokens=24))  # fmt: skip
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert line["tools/turns"] >= 1.0 and line["tools/generated_tokens"] > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            {"tool": ("test_tools:nope",)},
            "--tool: tool 'test_tools:nope': test_tools has no callable 'nope'",
        ),  # fmt: skip
        ({"tool": ("test_tools:undocumented",)}, "--tool: undocumented: "),
        (
            {"environment": "test_tools:add"},
            "--environment: test_tools:add() failed: TypeError: ",
        ),
        (
            {"environment": "test_tools:no_reset"},
            "--environment: test_tools:no_reset() has no reset(**row) method",
        ),  # fmt: skip
    ],
)
def test_bad_tools_are_refused_before_anything_loads(flags, message):
    from mlx_align.config.build import build_config
    from mlx_align.config.online import GRPOConfig
    from mlx_align.core.errors import UserError

    with pytest.raises(UserError) as error:
        build_config(GRPOConfig, {"model": "m", "data": "d", **flags}, None)
    assert str(error.value).startswith(message)


def test_a_continued_row_samples_what_a_fresh_prefill_of_its_history_samples(tools_model):  # fmt: skip
    """continue_rows feeds only the new tokens after a row's kept keys and values:
    greedy, it samples what prefilling the whole history again samples, and its
    new history equals that prefill's keys."""
    import mlx_lm
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_align.sampling.rollout import continue_rows, sample_groups

    model, tok = mlx_lm.load(str(tools_model))
    eos = set(tok.eos_token_ids)
    prompt = tok.encode("Question: What is 2 + 3?\nAnswer:", add_special_tokens=False)
    (group,) = sample_groups(model, [prompt], 2, 6, eos, temperature=0.0, compiled=True, keep_history=True)  # fmt: skip
    sampled, history = group.completions[0], group.histories[0]
    assert (
        history.keys[0].shape[2] == len(prompt) + len(sampled) - 1
    )  # the last is unfed
    glue = tok.encode(" The tool says 5. So", add_special_tokens=False)
    (new,), (after,) = continue_rows(model, [history], [sampled[-1:] + glue], 6, eos, temperature=0.0)  # fmt: skip
    again = prompt + sampled + glue
    (fresh,) = sample_groups(model, [again], 1, 6, eos, temperature=0.0, compiled=True)
    assert new == fresh.completions[0]
    cache = make_prompt_cache(model)
    model(mx.array(again + new[:-1])[None], cache=cache)
    for layer, keys in zip(cache, after.keys, strict=True):
        assert keys.shape == layer.keys[..., : layer.offset, :].shape
        assert mx.abs(keys - layer.keys[..., : layer.offset, :]).max().item() < 1e-4


def test_conversations_continued_from_their_histories_equal_prefilled_ones(tools_model):
    """The same greedy conversations, each turn continued from the rows' keys and
    values or prefilled again from the start: the same tokens, masks and turns.
    (The stop token is one the untrained model emits, so its "calls" come.)"""
    import mlx_lm

    from mlx_align.sampling.rollout import continue_rows, sample_groups

    model, tok = mlx_lm.load(str(tools_model))
    eos = set(tok.eos_token_ids)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    base = template_for(tok, [add])
    prompt = prompt_tokens(base, messages, environment=False)
    greedy = sample_groups(model, [prompt], 1, 8, eos, temperature=0.0)[0].completions[
        0
    ]
    stop = greedy[2]

    class Template(ToolTemplate):
        end_id = stop

    template = Template(tok, base.schemas, eos)
    stops = eos | {stop}

    def sample_turn(prompts, group_size, max_tokens):
        return sample_groups(model, prompts, group_size, max_tokens, stops, temperature=0.0, keep_history=True)  # fmt: skip

    def continue_turn(histories, feeds, max_tokens):
        return continue_rows(
            model, histories, feeds, max_tokens, stops, temperature=0.0
        )

    runs = []
    for continued in (continue_turn, None):
        trajectories = [start(template, messages, ToolBox({"add": add}), {}) for _ in range(2)]  # fmt: skip
        converse(sample_turn, [prompt], trajectories, 2, budget=400, max_turns=4, continue_turn=continued)  # fmt: skip
        runs.append([(t.tokens, t.mask, t.turns, t.calls) for t in trajectories])
    assert runs[0] == runs[1]
    assert [turns for _, _, turns, _ in runs[0]] == [4, 4]  # three continued turns each


def test_rows_fed_unequal_chunks_continue_as_their_own_histories(tools_model):
    """Rows of different history lengths fed different numbers of tokens in one
    chunk: a shorter row leaves a hole it neither attends to nor counts in its
    positions, so each samples (greedy) what a fresh prefill of its own whole
    history samples, and keeps exactly that history's keys."""
    import mlx_lm
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_align.sampling.rollout import continue_rows, sample_groups

    model, tok = mlx_lm.load(str(tools_model))
    eos = set(tok.eos_token_ids)
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    prompts = [encode("Question: What is 2 + 3?\nAnswer:"), encode("Hi")]
    groups = sample_groups(model, prompts, 1, 5, eos, temperature=0.0, keep_history=True)  # fmt: skip
    rows = [g.completions[0] for g in groups]
    histories = [g.histories[0] for g in groups]
    feeds = [rows[0][-1:] + encode(" The tool says 5, so"), rows[1][-1:] + encode(" ok")]  # fmt: skip
    assert len(feeds[0]) != len(feeds[1]) and histories[0].length != histories[1].length
    new, after = continue_rows(model, histories, feeds, 6, eos, temperature=0.0)
    for r in range(2):
        again = prompts[r] + rows[r] + feeds[r][1:]
        (fresh,) = sample_groups(model, [again], 1, 6, eos, temperature=0.0)
        assert new[r] == fresh.completions[0]
        cache = make_prompt_cache(model)
        model(mx.array(again + new[r][:-1])[None], cache=cache)
        for layer, keys in zip(cache, after[r].keys, strict=True):
            kept = layer.keys[..., : layer.offset, :]
            assert keys.shape == kept.shape
            assert mx.abs(keys - kept).max().item() < 1e-4


def test_a_rows_tools_column_is_what_its_prompt_shows_and_may_call(tokenizer):
    """TRL's tool-calling format: a row's ``tools`` (JSON schemas, or their JSON
    text) are the tools its prompt shows and the only ones it may call."""
    from mlx_align.config.online import GRPOConfig
    from mlx_align.core.errors import DataError
    from mlx_align.data.jsonl import Record
    from mlx_align.stages.tool_rollouts import ToolUse

    config = GRPOConfig(
        model="m", data="d", tool=("test_tools:add", "test_tools:divide")
    )
    only_add = json.dumps([tool_schema(add)])
    records = [
        Record("d.jsonl", 1, {"prompt": "What is 2 + 3?", "tools": only_add}),
        Record("d.jsonl", 2, {"prompt": "What is 6 / 3?"}),
    ]
    use = ToolUse(config, tokenizer, records, room=2000)
    shown = [tokenizer.decode(p) for p in use.prompts]
    assert '"name": "add"' in shown[0] and '"name": "divide"' not in shown[0]
    assert '"name": "add"' in shown[1] and '"name": "divide"' in shown[1]
    box = use.toolbox(use.templates[0])
    outcome = box.call({"name": "divide", "arguments": {"a": 6, "b": 3}})
    assert (outcome.failure, outcome.content) == ("unknown", "error: no tool named 'divide' (tools: add)")  # fmt: skip
    assert use.toolbox(use.templates[1]).call({"name": "divide", "arguments": {"a": 6, "b": 3}}).content == "2.0"  # fmt: skip
    bad = Record("d.jsonl", 3, {"prompt": "Hi", "tools": json.dumps([{"type": "function", "function": {"name": "mul"}}])})  # fmt: skip
    with pytest.raises(DataError, match="d.jsonl:3: field 'tools' names 'mul', which no --tool"):  # fmt: skip
        ToolUse(config, tokenizer, [bad], room=2000)


def open_rate(model_dir, data, tmp_path) -> float:
    """The share of 8 sampled trajectories per held-out prompt that open their box."""
    import mlx_lm

    from mlx_align.data.source import load_split
    from mlx_align.stages.grpo_rollouts import Rollouts

    config = box_config(model_dir, data, tmp_path / "rate", group_size=8)
    model, tok = mlx_lm.load(str(model_dir))
    records = load_split(config.source, "valid", required=True)
    rollouts = Rollouts(config, model, tok, records)
    mx.random.seed(1)
    _, trajectories = rollouts.converse(list(range(len(records))), records)
    return sum(t.toolbox.environment.opened for t in trajectories) / len(trajectories)


def box_config(model, data, out, **overrides):
    from mlx_align.config.online import GRPOConfig

    settings = dict(
        model=str(model), data=str(data), out=str(out), steps=20, batch_size=2,
        group_size=4, max_completion_tokens=64, temperature=0.7, reward=("tool_helpers:opened",),
        environment="tool_helpers:make_box", learning_rate=5e-3, warmup_steps=1,
        log_every=1, save_every=0, eval_every=0, max_length=400, lora_rank=8,
        loss="grpo",
    )  # fmt: skip
    return GRPOConfig(**{**settings, **overrides})


def test_grpo_raises_the_held_out_share_of_trajectories_that_use_the_tool(box_model, box_data, tmp_path):  # fmt: skip
    """From an SFT model whose demonstrations call reveal() half the time
    (``tool_helpers.build_box_model``), GRPO whose reward only the tool can earn
    (it reads the environment): on held-out prompts the share of trajectories
    that open their box rises well above the SFT model's."""
    from mlx_align.model.fuse import fuse_adapters
    from mlx_align.stages.grpo import run_grpo

    start, data = box_model, box_data
    run_grpo(box_config(start, data, tmp_path / "grpo"))
    trained = fuse_adapters(str(start), str(tmp_path / "grpo"), str(tmp_path / "trained"), False)  # fmt: skip
    before, after = open_rate(start, data, tmp_path), open_rate(trained, data, tmp_path)
    assert after >= before + 0.25, (before, after)  # measured: 11.7% -> 64.8%


def test_ppo_with_an_environment_trains_on_conversations(box_model, box_data, tmp_path):
    """PPO's completions are conversations too: the tools' metrics are logged, the
    samples show the turns, and the held-out evaluation samples conversations."""
    from mlx_align.config.online import PPOConfig
    from mlx_align.stages.ppo import run_ppo

    out = tmp_path / "ppo"
    run_ppo(PPOConfig(
        model=str(box_model), data=str(box_data), out=str(out), steps=4,
        batch_size=4, num_mini_batches=1, ppo_epochs=2, learning_rate=5e-3,
        reward=("tool_helpers:opened",), environment="tool_helpers:make_box",
        max_completion_tokens=64, temperature=0.7, max_length=400, log_every=1,
        save_every=0, eval_every=4, eval_batches=1, lora_rank=8,
    ))  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss/value_avg" in x]
    assert len(train) == 4 and all("tools/calls" in x and "tools/tool_tokens" in x for x in train)  # fmt: skip
    assert sum(x["tools/calls"] for x in train) > 0
    assert any("val_tools/calls" in x for x in lines)  # the evaluation's conversations
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["completion"][0]["role"] == "assistant" for s in samples)
