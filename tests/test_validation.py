"""Every bad input is refused up front: one line, exit code 2, no traceback.

Settings are checked in ``config.build.build_config`` (ranges, clashes, reward
names) before any model or data loads; the data loaders refuse what they
cannot train on with ``path:line: what``. A property test feeds random bytes
and random JSON to every loader: only ``DataError`` may come out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing

import mlx_lm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_align.batches.kto import encode_kto
from mlx_align.batches.preference import encode_pairs
from mlx_align.cli import main
from mlx_align.config import stages as config_module
from mlx_align.config.build import build_config
from mlx_align.config.online import GRPOConfig
from mlx_align.config.stages import (
    DPOConfig,
    EvalMathConfig,
    InitModelConfig,
    KTOConfig,
    ORPOConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
)
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.jsonl import Record, read_jsonl
from mlx_align.data.prompts import check_prompt_records, encode_prompts
from mlx_align.data.sft import encode_examples, encode_pretrain_record
from mlx_align.data.tokenize import encode_prompt, encode_sft_record
from mlx_align.rewards.registry import reward_columns

STAGES = {
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "dpo": DPOConfig,
    "orpo": ORPOConfig,
    "kto": KTOConfig,
    "reward": RewardConfig,
    "grpo": GRPOConfig,
    "init-model": InitModelConfig,
    "eval-math": EvalMathConfig,
}
MISSING = "/nonexistent/mlx-align-test"  # neither model nor data: never loaded


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines, less the BLAS notice every run prints."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [
        line for line in err.splitlines() if not line.startswith("mlx-align: BLAS")
    ]
    return exit_info.value.code, lines


def stage_argv(stage: str, *flags: str) -> list[str]:
    """A stage's command line with required paths that do not exist."""
    if stage == "init-model":
        return [stage, "--corpus", MISSING, "--out", MISSING, *flags]
    return [stage, "--model", MISSING, "--data", MISSING, "--out", MISSING, *flags]


# ---------------------------------------------------------------- settings


def test_every_numeric_setting_of_every_stage_has_a_rule():
    """A stage that redeclares a setting (GRPO's batch size, its beta) must
    declare the rule again: no number reaches a stage unchecked."""
    for cls in STAGES.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                assert "check" in f.metadata, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_default_passes_its_rules(stage):
    required = {"model": "m", "data": "d", "corpus": "c"}
    assert build_config(STAGES[stage], required, None)


RANGES = [  # (stage, flags, the error line after "error: ")
    ("sft", ["--steps", "0"], "--steps: must be >= 1, got 0"),
    ("sft", ["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    ("sft", ["--grad-accumulation", "0"], "--grad-accumulation: must be >= 1, got 0"),
    ("sft", ["--learning-rate", "0"], "--learning-rate: must be > 0, got 0"),
    (
        "sft",
        ["--learning-rate", "nan"],
        "--learning-rate: must be a finite number, got nan",
    ),
    ("sft", ["--warmup-steps", "-1"], "--warmup-steps: must be >= 0, got -1"),
    ("sft", ["--min-lr-ratio", "1.5"], "--min-lr-ratio: must be in [0, 1], got 1.5"),
    ("sft", ["--weight-decay", "-0.1"], "--weight-decay: must be >= 0, got -0.1"),
    ("sft", ["--max-grad-norm", "-1"], "--max-grad-norm: must be >= 0, got -1"),
    ("sft", ["--max-length", "1"], "--max-length: must be >= 2, got 1"),
    ("sft", ["--log-every", "0"], "--log-every: must be >= 1, got 0"),
    ("sft", ["--eval-every", "-1"], "--eval-every: must be >= 0, got -1"),
    ("sft", ["--save-every", "-5"], "--save-every: must be >= 0, got -5"),
    (
        "sft",
        ["--eval-batches", "0"],
        "--eval-batches: must be -1 (the whole split) or >= 1, got 0",
    ),
    ("sft", ["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
    ("sft", ["--lora-rank", "0"], "--lora-rank: must be >= 1, got 0"),
    ("sft", ["--lora-alpha", "0"], "--lora-alpha: must be > 0, got 0"),
    ("sft", ["--lora-dropout", "1"], "--lora-dropout: must be in [0, 1), got 1"),
    ("sft", ["--lora-layers", "0"], "--lora-layers: must be -1 (all) or >= 1, got 0"),
    ("sft", ["--quantize", "3"], "--quantize: must be one of 0, 4, 8, got 3"),
    ("pretrain", ["--max-length", "0"], "--max-length: must be >= 2, got 0"),
    ("dpo", ["--beta", "-1"], "--beta: must be > 0, got -1"),
    ("dpo", ["--beta", "0"], "--beta: must be > 0, got 0"),
    (
        "dpo",
        ["--loss", "robust", "--label-smoothing", "0.5"],
        "--label-smoothing: must be in [0, 0.5), got 0.5",
    ),
    ("dpo", ["--sft-weight", "-1"], "--sft-weight: must be >= 0, got -1"),
    ("dpo", ["--max-batch-tokens", "-2"], "--max-batch-tokens: must be >= -1, got -2"),
    ("orpo", ["--beta", "0"], "--beta: must be > 0, got 0"),
    ("kto", ["--beta", "-0.1"], "--beta: must be > 0, got -0.1"),
    ("kto", ["--desirable-weight", "0"], "--desirable-weight: must be > 0, got 0"),
    (
        "kto",
        ["--undesirable-weight", "-1"],
        "--undesirable-weight: must be > 0, got -1",
    ),
    (
        "reward",
        ["--center-rewards-coefficient", "-0.01"],
        "--center-rewards-coefficient: must be >= 0, got -0.01",
    ),
    ("grpo", ["--beta", "-0.1"], "--beta: must be >= 0, got -0.1"),
    ("grpo", ["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    ("grpo", ["--group-size", "1"], "--group-size: must be >= 2, got 1"),
    (
        "grpo",
        ["--max-completion-tokens", "0"],
        "--max-completion-tokens: must be >= 1, got 0",
    ),
    ("grpo", ["--temperature", "0"], "--temperature: must be > 0, got 0"),
    ("grpo", ["--top-p", "0"], "--top-p: must be in (0, 1], got 0"),
    ("grpo", ["--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
    ("grpo", ["--epsilon", "1"], "--epsilon: must be in [0, 1), got 1"),
    ("grpo", ["--epsilon-high", "-0.1"], "--epsilon-high: must be >= 0, got -0.1"),
    ("grpo", ["--iterations", "0"], "--iterations: must be >= 1, got 0"),
    ("grpo", ["--max-length", "1"], "--max-length: must be >= 2, got 1"),
    (
        "init-model",
        ["--vocab-size", "100"],
        "--vocab-size: must be 0 (the preset's) or >= 261, got 100",
    ),
    ("init-model", ["--hidden-size", "-8"], "--hidden-size: must be >= 0, got -8"),
    ("init-model", ["--num-layers", "-1"], "--num-layers: must be >= 0, got -1"),
    ("eval-math", ["--max-tokens", "0"], "--max-tokens: must be >= 1, got 0"),
    ("eval-math", ["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    ("eval-math", ["--limit", "-1"], "--limit: must be >= 0, got -1"),
]

CLASHES = [
    (
        "sft",
        ["--full", "--quantize", "4"],
        "--quantize: QLoRA trains adapters on a frozen quantized base; it cannot "
        "be combined with --full (drop one of them)",
    ),
    (
        "sft",
        ["--full", "--dora"],
        "--dora: DoRA is an adapter; it cannot be combined with --full",
    ),
    (
        "dpo",
        ["--label-smoothing", "0.1"],
        "--label-smoothing: the 'sigmoid' loss does not use it (losses that do: "
        "exo_pair, robust, aot, aot_unpaired)",
    ),
    (
        "dpo",
        ["--loss", "ipo", "--label-smoothing", "0.1"],
        "--label-smoothing: the 'ipo' loss does not use it (losses that do: "
        "exo_pair, robust, aot, aot_unpaired)",
    ),
    (
        "dpo",
        ["--ref-model", MISSING],
        f"--ref-model: '{MISSING}' is --model itself; leave --ref-model out (the "
        "reference is then --model's weights, without adapters)",
    ),
    (
        "kto",
        ["--ref-model", MISSING],
        f"--ref-model: '{MISSING}' is --model itself; leave --ref-model out (the "
        "reference is then --model's weights, without adapters)",
    ),
    (
        "grpo",
        ["--epsilon", "0.2", "--epsilon-high", "0.1"],
        "--epsilon-high: must be 0 (same as --epsilon) or >= --epsilon (0.2), got 0.1",
    ),
    (
        "grpo",
        ["--reward", "math", "--reward", "format", "--reward-weights", "1.0"],
        "--reward-weights: 1 weight for 2 reward functions (math, format): give "
        "one per --reward",
    ),
    (
        "grpo",
        ["--reward-weights", "1,x"],
        "--reward-weights: 'x' is not a finite number",
    ),
    (
        "grpo",
        ["--reward", "nosuch"],
        "--reward: unknown reward 'nosuch': not a builtin (math, format) nor an "
        "import path 'module:function'",
    ),
    (
        "grpo",
        ["--reward", "mlx_align.rewards.math:no_such_function"],
        "--reward: reward 'mlx_align.rewards.math:no_such_function': "
        "mlx_align.rewards.math has no callable 'no_such_function'",
    ),
    (
        "grpo",
        ["--max-completion-tokens", "64", "--max-length", "64"],
        "--max-completion-tokens: must be below --max-length (64), which also "
        "holds the prompt, got 64",
    ),
    (
        "init-model",
        ["--hidden-size", "100"],
        "--hidden-size: must be a multiple of 8 (2 x the tiny preset's 4 attention "
        "heads), got 100",
    ),
]


@pytest.mark.parametrize(
    "stage, flags, expected",
    RANGES + CLASHES,
    ids=[f"{s} {' '.join(f)}" for s, f, _ in RANGES + CLASHES],
)
def test_bad_flag_is_one_line_before_anything_loads(stage, flags, expected, capsys):
    """The model and data paths do not exist: an error about the flag, and
    nothing else (not 'no train data', not the stage's start line), shows that
    it was refused before the stage touched either."""
    code, lines = run_cli(stage_argv(stage, *flags), capsys)
    assert (code, lines) == (2, [f"error: {expected}"])


def test_config_file_values_are_checked_and_named(tmp_path, capsys):
    config = tmp_path / "dpo.yaml"
    config.write_text("beta: -1\nsteps: 3\n")
    code, lines = run_cli(
        ["dpo", "--config", str(config), *stage_argv("dpo")[1:]], capsys
    )
    assert (code, lines) == (2, [f"error: {config}: beta: must be > 0, got -1"])
    # A flag overrides the file's bad value, and then nothing is wrong with it.
    values = {"model": "m", "data": "d", "beta": 0.5}
    assert build_config(DPOConfig, values, str(config)).beta == 0.5


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("steps: ten\n", "{path}: steps: expected an integer, got str 'ten'"),
        ("steps: 2.5\n", "{path}: steps: expected an integer, got float 2.5"),
        (
            "learning_rate: fast\n",
            "{path}: learning_rate: expected a number, got str 'fast'",
        ),
        (
            "compile: maybe\n",
            "{path}: compile: expected true or false, got str 'maybe'",
        ),
        ("out: [a]\n", "{path}: out: expected a string, got list ['a']"),
        ("steps:\n", "{path}: steps: no value given"),
        ("lora_dropout: 1.0\n", "{path}: lora_dropout: must be in [0, 1), got 1"),
        (
            "max_grad_norm: .inf\n",
            "{path}: max_grad_norm: must be a finite number, got inf",
        ),
        # A clash names the flags, wherever the values came from.
        (
            "full: true\nquantize: 4\n",
            "--quantize: QLoRA trains adapters on a frozen quantized base; it "
            "cannot be combined with --full (drop one of them)",
        ),
    ],
)
def test_config_file_types_and_ranges(yaml_text, expected, tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError) as error:
        build_config(SFTConfig, {"model": "m", "data": "d"}, str(path))
    assert str(error.value) == expected.format(path=path)


def test_config_file_yaml_gotchas_are_read_as_meant(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string; a float setting takes it as the number."""
    path = tmp_path / "grpo.yaml"
    path.write_text("learning_rate: 1e-4\nreward: [math, format]\nreward_weights: 1\n")
    with pytest.raises(UserError, match="1 weight for 2 reward functions"):
        build_config(GRPOConfig, {"model": "m", "data": "d"}, str(path))
    path.write_text("learning_rate: 1e-4\nreward: format\nbeta: 0\n")
    config = build_config(GRPOConfig, {"model": "m", "data": "d"}, str(path))
    assert (config.learning_rate, config.reward, config.beta) == (
        1e-4,
        ("format",),
        0.0,
    )


def test_valid_edge_values_pass():
    """The ends of each range that are allowed, and a --resume with nothing to resume."""
    base = {"model": "m", "data": "d"}
    grpo = build_config(
        GRPOConfig,
        {
            **base,
            "beta": 0.0,
            "epsilon": 0.0,
            "epsilon_high": 0.0,
            "top_p": 1.0,
            "group_size": 2,
        },
        None,
    )
    assert grpo.beta == 0.0
    assert build_config(GRPOConfig, {**base, "epsilon_high": 0.2}, None)  # = epsilon
    dpo = build_config(
        DPOConfig, {**base, "loss": "robust", "label_smoothing": 0.49}, None
    )
    assert dpo.label_smoothing == 0.49
    sft = build_config(
        SFTConfig,
        {**base, "eval_batches": -1, "lora_layers": -1, "quantize": 8, "resume": True},
        None,
    )
    assert sft.resume and sft.quantize == 8
    assert build_config(SFTConfig, {**base, "full": True, "quantize": 0}, None).full
    assert build_config(InitModelConfig, {"corpus": "c", "hidden_size": 96}, None)


def test_min_vocab_size_counts_the_special_tokens():
    from mlx_align.model.tiny import SPECIAL_TOKENS

    assert config_module.MIN_VOCAB_SIZE == 256 + len(SPECIAL_TOKENS)


def test_measured_bugs_bad_loss_and_scale_rewards_fail_before_loading(tmp_path, capsys):
    """`--loss foo` once ran the whole reference pass first, and a bad
    `--scale-rewards` failed after the first rollout: both are refused now with
    neither the model nor the data existing, from a flag or a config file."""
    code, lines = run_cli(stage_argv("dpo", "--loss", "foo"), capsys)
    assert code == 2 and any("Invalid value for '--loss'" in line for line in lines)
    code, lines = run_cli(stage_argv("grpo", "--scale-rewards", "bogus"), capsys)
    assert code == 2 and any(
        "Invalid value for '--scale-rewards'" in line for line in lines
    )
    config = tmp_path / "grpo.yaml"
    config.write_text("scale_rewards: bogus\n")
    code, lines = run_cli(
        ["grpo", "--config", str(config), *stage_argv("grpo")[1:]], capsys
    )
    assert (code, lines) == (
        2,
        [f"error: {config}: scale_rewards: 'bogus' is not one of group, batch, none"],
    )


# ---------------------------------------------------------------- data, through the CLI


def pref_row(**overrides) -> dict:
    return {
        "prompt": "Q: sky?\nA:",
        "chosen": " Blue.",
        "rejected": " Red.",
        **overrides,
    }


DATA_CASES = {
    "not_utf8": (
        (json.dumps(pref_row()) + "\n").encode()
        + b'{"prompt": "Q:", "chosen": " \xff", "rejected": " no"}\n',
        ":2: not UTF-8 (byte 0xff at column 30)",
    ),
    "role_wizard": (
        (
            json.dumps(
                pref_row(
                    prompt=[{"role": "wizard", "content": "What colour is the sky?"}]
                )
            )
            + "\n"
        ).encode(),
        ":1: prompt[0]: role 'wizard' is not one of system, user, assistant, tool",
    ),
    "empty_chosen": (
        (
            json.dumps(pref_row()) + "\n" + json.dumps(pref_row(chosen="")) + "\n"
        ).encode(),
        ":2: field 'chosen' is empty",
    ),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_dpo_data_is_one_line_with_path_and_line(
    case, tiny_model, tmp_path, capsys
):
    content, expected = DATA_CASES[case]
    (tmp_path / "train.jsonl").write_bytes(content)
    argv = ["dpo", "--model", str(tiny_model), "--data", str(tmp_path)]
    code, lines = run_cli(
        [*argv, "--out", str(tmp_path / "out"), "--steps", "1"], capsys
    )
    assert code == 2
    assert lines[-1] == f"error: {tmp_path / 'train.jsonl'}{expected}"
    assert not [line for line in lines[:-1] if line.startswith("error")]
    assert not (tmp_path / "out" / "adapters.safetensors").exists()


# ---------------------------------------------------------------- data, the loaders


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return mlx_lm.load(str(tiny_model))[1]


def records_of(tmp_path, rows: list[dict]) -> list[Record]:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_jsonl(path)


def test_read_jsonl_edge_cases(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}')  # BOM, CRLF
    assert [(r.line, r.fields["text"]) for r in read_jsonl(path)] == [
        (1, "a"),
        (3, "b"),
    ]
    surrogate = b'{"text": "a"}\n{"text": "\\ud800"}\n'
    deep = b'{"text": "\\ud83d\\ude00"}\n\n{"a": ' + b"[" * 100_000 + b"\n"
    cases = {
        surrogate: ":2: invalid JSON (a \\u escape is a lone UTF-16 surrogate)",
        deep: ":3: invalid JSON (nested too deeply)",  # line 1: an emoji, fine
        b'{"n": ' + b"9" * 5000 + b"}": ":1: invalid JSON (a number too long to read)",
        b'{"text": "\xc3"}\n': ":1: not UTF-8 (byte 0xc3 at column 11)",
        b'{"text": "\xc3\xa9\xfe"}\n': ":1: not UTF-8 (byte 0xfe at column 12)",
    }
    for content, expected in cases.items():
        path.write_bytes(content)
        with pytest.raises(DataError) as error:
            read_jsonl(path)
        assert str(error.value).startswith(f"{path}{expected}"), str(error.value)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        read_jsonl(tmp_path)  # a directory


CHAT_CASES = [
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
            ]
        },
        "messages[1]: the assistant reply is empty",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": "x"},
            ]
        },
        "messages[1]: the last message must be the assistant's, got 'user'",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "be nice"},
                {"role": "assistant", "content": "ok"},
            ]
        },
        "messages[1]: a system message may only come first",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": ["hi"]},
                {"role": "assistant", "content": "ok"},
            ]
        },
        "messages[0]: 'content' must be a string, got list",
    ),
    (
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "ok"}]},
        "messages[0] has no 'role'",
    ),
    (
        {
            "prompt": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "a"},
            ],
            "completion": [{"role": "assistant", "content": "b"}],
        },
        "prompt[1]: a prompt must end with a user or tool message, got 'assistant'",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "completion": [{"role": "user", "content": "b"}],
        },
        "completion[0]: a completion holds assistant (or tool) messages, got 'user'",
    ),
    (
        {"prompt": [{"role": "user", "content": "hi"}], "completion": []},
        "field 'completion' must be a non-empty list of messages, got an empty list",
    ),
    ({"prompt": "Q:", "completion": ""}, "field 'completion' is empty"),
    ({"prompt": "", "completion": " A."}, "field 'prompt' is empty"),
    ({"text": "   "}, "field 'text' is only whitespace"),
]


@pytest.mark.parametrize("row, expected", CHAT_CASES, ids=[e for _, e in CHAT_CASES])
def test_sft_records_that_train_wrongly_are_refused(row, expected, tokenizer, tmp_path):
    records = records_of(tmp_path, [{"text": "fine"}, row])
    with pytest.raises(DataError) as error:
        encode_examples(tokenizer, records, 64)
    assert str(error.value) == f"{tmp_path / 'd.jsonl'}:2: {expected}"


def test_conversational_formats_that_are_fine(tokenizer, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "sky?"},
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {
            "prompt": [{"role": "user", "content": "2 + 3?"}],
            "completion": [
                {"role": "assistant", "content": "calc(2 + 3)"},
                {"role": "tool", "content": "5"},
                {"role": "assistant", "content": "5"},
            ],
        },
    ]
    assert len(encode_examples(tokenizer, records_of(tmp_path, rows), 128)) == 2


def test_pairs_with_chosen_equal_to_rejected_are_skipped_aloud(tokenizer, tmp_path):
    rows = [pref_row(), pref_row(rejected=" Blue."), pref_row(chosen=" Green.")]
    records = records_of(tmp_path, rows)
    said: list[str] = []
    pairs = encode_pairs(tokenizer, records, 64, report=said.append)
    assert len(pairs) == 2
    path = tmp_path / "d.jsonl"
    assert said == [
        f"{path}: 1 of 3 pairs skipped: chosen equals rejected (no preference to learn)"
    ]
    examples = encode_kto(tokenizer, records, 64, report=said.append)
    assert len(examples) == 4 and said[-1] == said[0]
    same = records_of(tmp_path, [pref_row(rejected=" Blue.")] * 2)
    for encode in (encode_pairs, encode_kto):
        with pytest.raises(DataError) as error:
            encode(tokenizer, same, 64, report=said.append)
        assert str(error.value) == (
            f"{path}: chosen equals rejected in all 2 pairs: nothing to prefer"
        )


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), "1", True, 10**400])
def test_a_margin_must_be_a_finite_number(margin, tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(pref_row(margin=margin)) + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:1: field 'margin'"):
        encode_pairs(tokenizer, read_jsonl(path), 64)


def test_prompt_records_need_the_columns_their_rewards_read(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    good = {"prompt": "2 + 3 =", "answer": "5"}
    math = reward_columns(["math", "format", "math"])
    assert math == [("answer", "solution")] and reward_columns(["format"]) == []
    solutions = [{"prompt": "1 + 1 =", "solution": "2"}] * 2
    check_prompt_records(records_of(tmp_path, solutions), math)
    check_prompt_records(records_of(tmp_path, [good, {"prompt": "no answer"}]), [])
    cases = [
        (
            {"prompt": "1 + 1 =", "solution": "2"},
            "field 'solution' where earlier records have 'answer': use one of "
            "'answer' or 'solution' throughout",
        ),
        ({"prompt": "no answer"}, "missing field 'answer' or 'solution'"),
        (
            {"prompt": "1 + 1 =", "answer": 2},
            "field 'answer' must be a string, got int 2",
        ),
        ({"prompt": "1 + 1 =", "answer": ""}, "field 'answer' is empty"),
        ({"prompt": "", "answer": "2"}, "field 'prompt' is empty"),
        ({"answer": "2"}, "missing field 'prompt'"),
        (
            {"prompt": 7, "answer": "2"},
            "field 'prompt' must be a string or a list of messages, got int",
        ),
        (
            {"prompt": [{"role": "assistant", "content": "hi"}], "answer": "2"},
            "prompt[0]: a prompt must end with a user or tool message, got 'assistant'",
        ),
    ]
    for row, expected in cases:
        records = records_of(tmp_path, [good, row])
        with pytest.raises(DataError) as error:
            check_prompt_records(records, math)
        assert str(error.value) == f"{path}:2: {expected}"
    said: list[str] = []
    long = records_of(tmp_path, [good, {"prompt": "word " * 50}])
    prompts = encode_prompts(tokenizer, long, max_tokens=8, report=said.append)
    assert len(prompts[1]) == 8 and prompts[1] == encode_prompt(tokenizer, long[1])[-8:]
    assert said == [f"{path}: 1 of 2 prompts truncated from the left to fit 8 tokens"]


# ---------------------------------------------------------------- property test

ROLES = ["system", "user", "user", "assistant", "assistant", "tool", "wizard", ""]


def containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=6), children, max_size=3
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    containers,
    max_leaves=6,
)
texts = st.sampled_from(["", " ", "Q:", " A.", "Question: 2 + 3?\nAnswer:", " 5"]) | (
    st.text(max_size=12)
)
FORMATS = {  # the fields of each stage's records
    "text": ["text"],
    "prompt_completion": ["prompt", "completion"],
    "chat_prompt_completion": ["prompt", "completion"],
    "messages": ["messages"],
    "pairs": ["prompt", "chosen", "rejected", "margin"],
    "chat_pairs": ["prompt", "chosen", "rejected"],
    "kto": ["prompt", "completion", "label"],
    "prompts": ["prompt", "answer"],
}


def sometimes(draw, usual, odd, odds: int = 5):
    """A value from ``usual``, or one time in ``odds`` from ``odd``."""
    return draw(odd if draw(st.integers(1, odds)) == 1 else usual)


@st.composite
def message(draw) -> object:
    valid = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts})
    broken = st.dictionaries(  # a key missing, a wrong type, an extra key
        st.sampled_from(["role", "content", "name"]),
        st.sampled_from(ROLES) | json_values,
        max_size=3,
    )
    return sometimes(draw, valid, broken | json_values, odds=8)


@st.composite
def record(draw, kind: str) -> dict:
    """A record of ``kind``: each field usually of the right type, sometimes
    missing, of a wrong type or empty; roles sometimes out of order or unknown."""
    chat = kind.startswith("chat") or kind == "messages"
    usual = st.lists(message(), min_size=1, max_size=4) if chat else texts
    row = {}
    for key in FORMATS[kind]:
        if draw(st.integers(1, 8)) == 1:
            continue  # missing
        if key == "label":
            row[key] = sometimes(draw, st.booleans(), json_values)
        elif key == "margin":
            row[key] = sometimes(draw, st.floats(-5, 5), st.floats() | json_values)
        elif key in ("chosen", "rejected") and kind == "chat_pairs":
            row[key] = sometimes(draw, usual, texts | json_values, odds=3)
        else:
            row[key] = sometimes(draw, usual, json_values | st.lists(message()))
    if draw(st.booleans()):
        row[draw(st.text(max_size=6))] = draw(json_values)
    return row


records = st.sampled_from(sorted(FORMATS)).flatmap(
    lambda kind: st.lists(record(kind), min_size=1, max_size=3)
)


def assert_located(error: DataError, path: str, lines: int) -> None:
    """``path:line: what`` (``path: what`` for the whole file), a line that exists."""
    match = re.match(rf"^{re.escape(path)}(?::(\d+))?: \S", str(error))
    assert match, str(error)
    assert match.group(1) is None or 1 <= int(match.group(1)) <= lines


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "train.jsonl"


FUZZ = settings(
    max_examples=int(os.environ.get("MLX_ALIGN_FUZZ_EXAMPLES", 150)),
    deadline=None,
    database=None,  # no .hypothesis/ in the tree; a failure prints its reproducer
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(
    content=st.binary(max_size=120)
    | st.lists(
        st.sampled_from(
            [b"{", b"}", b'"', b"\n", b"\xff", b"\xc3", b"[", b":", b"1", b'"text"']
        ),
        max_size=30,
    ).map(b"".join)
)
def test_read_jsonl_raises_only_located_data_errors(content, fuzz_file):
    fuzz_file.write_bytes(content)
    try:
        read_jsonl(fuzz_file)
    except DataError as error:
        assert_located(error, str(fuzz_file), content.count(b"\n") + 1)


@FUZZ
@given(rows=records)
def test_every_loader_raises_only_located_data_errors(rows, tokenizer, fuzz_file):
    fuzz_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = read_jsonl(fuzz_file)
    sink: list[str] = []
    loaders = [
        lambda: encode_examples(tokenizer, loaded, 48, report=sink.append),
        lambda: encode_examples(
            tokenizer, loaded, 48, encoder=encode_pretrain_record, report=sink.append
        ),
        lambda: encode_pairs(tokenizer, loaded, 48, report=sink.append),
        lambda: encode_kto(tokenizer, loaded, 48, report=sink.append),
        lambda: [encode_sft_record(tokenizer, r) for r in loaded],
        lambda: check_prompt_records(loaded, [("answer", "solution")]),
        lambda: encode_prompts(tokenizer, loaded, max_tokens=16, report=sink.append),
    ]
    for load in loaders:
        try:
            load()
        except DataError as error:
            assert_located(error, str(fuzz_file), len(rows))
