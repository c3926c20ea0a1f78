"""The qa-tools template and the road to it from a trained qa model: rendered
without tools it is qa's text; a sampled call grows the conversation by exactly
the model's tokens, as SFT data in TRL's tool_calls form renders it; set-template
adds the call tokens and changes no old token's id or logit; SFT shows a row's
tools; eval-math --tool judges the last turn after the tool's real result."""

import json

import mlx.core as mx
import mlx_lm
import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from mlx_lm.tokenizer_utils import load as load_tokenizer
from tool_helpers import add

from mlx_align.cli import cli
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import encode_sft_record
from mlx_align.model.retemplate import set_chat_template
from mlx_align.model.tiny import PRESETS, init_model
from mlx_align.sampling.conversations import (
    ToolTemplate,
    converse,
    prompt_tokens,
    start,
)
from mlx_align.sampling.rollout import Group
from mlx_align.sampling.tools import ToolBox, tool_schema

START, END = "<|tool_call_start|>", "<|tool_call_end|>"
TEXTS = ["Question: What is 2 + 9 + 3?\nAnswer: 9 + 3 = 12. 2 + 12 = 14.\n#### 14"] * 20  # fmt: skip


def call(a: int, b: int) -> str:
    return f" {START}[add(a={a}, b={b})]{END}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same corpus and seed: a qa model, and a qa-tools one built directly."""
    root = tmp_path_factory.mktemp("qa_tools")
    qa = init_model(root / "qa", PRESETS["tiny"], TEXTS, seed=0, chat_template="qa")
    tools = init_model(root / "qa-tools", PRESETS["tiny"], TEXTS, seed=0, chat_template="qa-tools")  # fmt: skip
    return qa, tools


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 9 + 3?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Quick: what is 1 + 9 + 2?"},
        {"role": "assistant", "content": "9 + 2 = 11. 1 + 11 = 12.\n#### 12"},
        {"role": "user", "content": "And 4 + 2 + 1?"},
        {"role": "assistant", "content": "#### 7"},
    ],
]


@pytest.mark.parametrize("generation", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_qa_tools_without_tools_renders_what_qa_renders(models, messages, generation):
    qa, tools = (load_tokenizer(m) for m in models)
    kwargs = {"tokenize": False, "add_generation_prompt": generation}
    plain = qa.apply_chat_template(messages, **kwargs)
    assert tools.apply_chat_template(messages, **kwargs) == plain
    shown = tools.apply_chat_template(messages, tools=[tool_schema(add)], **kwargs)
    assert shown == "Tools: add(a, b)\n" + plain


def scripted(tokenizer, turns):
    """A sample_turn that answers with ``turns`` in order (EOS after a non-call)."""
    queue = [
        tokenizer.encode(t, add_special_tokens=False)
        + ([] if t.endswith(END) else [tokenizer.eos_token_id])
        for t in turns
    ]
    return lambda prompts, group_size, max_tokens: [Group(prompts[0], [queue.pop(0)])]


def test_a_sampled_call_grows_the_conversation_as_tool_calls_data_renders_it(models):
    tokenizer = load_tokenizer(models[1])
    assert tokenizer.has_tool_calling and tokenizer.tool_call_end == END
    template = ToolTemplate(tokenizer, [tool_schema(add)], set(tokenizer.eos_token_ids))
    messages = [{"role": "user", "content": "What is 2 + 9 + 3?"}]
    sample_turn = scripted(tokenizer, [call(9, 3), call(2, 12), "\n#### 14"])
    trajectory = start(template, messages, ToolBox({"add": add}), {})
    prompt = prompt_tokens(template, messages, environment=False)
    converse(sample_turn, [prompt], [trajectory], 1, budget=200, max_turns=3)
    assert (trajectory.calls, trajectory.turns, trajectory.final_text) == (2, 3, "\n#### 14")  # fmt: skip

    def calls(a, b, result):  # TRL's form, as recipes/tool_data.py writes SFT data
        function = {"name": "add", "arguments": {"a": a, "b": b}}
        return [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": function}],
            },  # fmt: skip
            {"role": "tool", "name": "add", "content": result},
        ]

    row = {
        "prompt": messages,
        "completion": [
            *calls(9, 3, "12"),
            *calls(2, 12, "14"),
            {"role": "assistant", "content": "\n#### 14"},
        ],  # fmt: skip
        "tools": [tool_schema(add)],
    }
    encoded = encode_sft_record(tokenizer, Record("sft.jsonl", 1, row))
    assert encoded.tokens[: encoded.completion_start] == prompt
    assert encoded.tokens[encoded.completion_start :] == trajectory.tokens
    model_tokens = [t for t, m in zip(trajectory.tokens, trajectory.mask, strict=True) if m]  # fmt: skip
    assert tokenizer.decode(model_tokens) == call(9, 3) + call(2, 12) + "\n#### 14<|eos|>"  # fmt: skip
    assert tokenizer.decode(trajectory.tokens) == call(9, 3) + " = 12." + call(2, 12) + " = 14.\n#### 14<|eos|>"  # fmt: skip


def test_sft_shows_a_rows_tools_and_refuses_a_bad_tools_column(models):
    tokenizer = load_tokenizer(models[1])
    row = {"prompt": [{"role": "user", "content": "What is 1 + 2?"}], "completion": "#### 3"}  # fmt: skip
    plain = encode_sft_record(tokenizer, Record("a.jsonl", 1, row))
    shown = encode_sft_record(tokenizer, Record("a.jsonl", 2, {**row, "tools": json.dumps([tool_schema(add)])}))  # fmt: skip
    prompt = tokenizer.decode(shown.tokens[: shown.completion_start])
    assert prompt == "Tools: add(a, b)\nQuestion: What is 1 + 2?\nAnswer:"
    assert shown.tokens[shown.completion_start :] == plain.tokens[plain.completion_start :]  # fmt: skip
    with pytest.raises(DataError, match="a.jsonl:3: field 'tools'"):
        encode_sft_record(tokenizer, Record("a.jsonl", 3, {**row, "tools": [3]}))


def test_set_template_adds_the_call_tokens_and_keeps_every_old_token(models, tmp_path):
    qa = models[0]
    result = CliRunner().invoke(cli, ["set-template", "--model", str(qa), "--chat-template", "qa-tools", "--save-path", str(tmp_path / "m")])  # fmt: skip
    assert result.exit_code == 0, result.output
    old_model, old_tokenizer = mlx_lm.load(str(qa))
    model, tokenizer = mlx_lm.load(str(tmp_path / "m"))
    size = json.loads((qa / "config.json").read_text())["vocab_size"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"] == size + 2  # fmt: skip
    assert tokenizer.convert_tokens_to_ids([START, END]) == [size, size + 1]
    assert tokenizer.has_tool_calling and tokenizer.tool_call_start == START
    text = TEXTS[0]
    assert tokenizer.encode(text) == old_tokenizer.encode(text)
    tokens = mx.array([old_tokenizer.encode(text)])
    old, new = old_model(tokens), model(tokens)
    assert new.shape[-1] == size + 2
    assert mx.array_equal(new[..., :size], old)
    rows = model.model.embed_tokens.weight[size:]
    assert not mx.array_equal(rows[0], rows[1])  # each new token its own row
    assert tokenizer.encode(call(2, 3), add_special_tokens=False)[1] == size
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[tool_schema(add)], tokenize=False
    )
    assert rendered == "Tools: add(a, b)\nQuestion: hi\nAnswer:"


def test_set_template_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        set_chat_template(tmp_path, tmp_path / "out", "qa-tools")


@pytest.fixture(scope="module")
def calculator_model(models, tmp_path_factory):
    """The qa-tools model after LoRA SFT on two sums that call add() and copy its result."""
    from mlx_align.config.stages import SFTConfig
    from mlx_align.model.fuse import fuse_adapters
    from mlx_align.stages.sft import run_sft

    root = tmp_path_factory.mktemp("calculator")
    rows = []
    for a, b in ((2, 3), (4, 4)):
        turns = [
            {"role": "assistant", "content": call(a, b)},
            {"role": "tool", "name": "add", "content": str(a + b)},
            {"role": "assistant", "content": f"#### {a + b}"},
        ]
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        rows.append({"prompt": prompt, "completion": turns, "tools": [tool_schema(add)]})  # fmt: skip
    write_jsonl(root / "sft" / "train.jsonl", rows * 8)
    run_sft(SFTConfig(
        model=str(models[1]), data=str(root / "sft"), out=str(root / "run"), steps=60,
        batch_size=4, learning_rate=1e-2, lora_rank=8, eval_every=0, save_every=0, log_every=60,
    ))  # fmt: skip
    write_jsonl(root / "eval" / "test.jsonl", [{"prompt": r["prompt"], "answer": str(a + b)} for r, (a, b) in zip(rows, ((2, 3), (4, 4)), strict=True)])  # fmt: skip
    return fuse_adapters(str(models[1]), str(root / "run"), str(root / "fused"), False), root / "eval"  # fmt: skip


def test_eval_math_with_a_tool_judges_the_last_turn_after_the_tools_result(calculator_model, tmp_path):  # fmt: skip
    model, data = calculator_model
    base = ["eval-math", "--model", str(model), "--data", str(data), "--max-tokens", "40"]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(cli, [*base, "--tool", "tool_helpers:add", "--max-turns", "2", "--out", str(tmp_path / "tools.jsonl")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "math accuracy: 1.0000 (2/2)" in result.output
    assert "tool calls: 2 (1.00 per problem), parsed 100.0%" in result.output
    rows = [json.loads(line) for line in (tmp_path / "tools.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["turns"][1] for r in rows] == [
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "tool", "name": "add", "content": "8"},
    ]
    assert [r["completion"] for r in rows] == [" #### 5", " #### 8"]
    # Without the tool: one plain greedy completion each, no turns, no calls.
    result = runner.invoke(cli, [*base, "--out", str(tmp_path / "plain.jsonl")])
    assert result.exit_code == 0, result.output
    assert "tool calls" not in result.output
    plain = (tmp_path / "plain.jsonl").read_text().splitlines()
    assert len(plain) == 2 and not any("turns" in json.loads(r) for r in plain)
