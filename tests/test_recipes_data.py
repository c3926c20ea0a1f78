"""recipes/make_data.py: deterministic, held-out problems kept out of every
train split, every line well-formed, and every worked answer re-checked with
Python's own arithmetic."""

import importlib.util
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "make_data.py"


def _load_script():
    # recipes/ is a folder of scripts, not a package: import the file itself.
    spec = importlib.util.spec_from_file_location("make_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


make_data = _load_script()

FIELDS = {
    "pretrain": {"text"},
    "sft": {"prompt", "completion"},
    "chat": {"messages"},
    "preference": {"prompt", "chosen", "rejected"},
    "preference_short": {"prompt", "chosen", "rejected"},
    "kto": {"prompt", "completion", "label"},
    "grpo": {"prompt", "answer"},
}
SPLITS = {
    "pretrain": {"train", "valid"},
    "sft": {"train", "valid"},
    "chat": {"train", "valid"},
    "preference": {"train", "valid", "test"},
    "preference_short": {"train", "valid"},
    "kto": {"train", "valid", "test"},
    "grpo": {"train", "valid", "test"},
}
PROMPT = re.compile(r"Question: ([^\n]+\?)\nAnswer:")
ARITHMETIC = re.compile(r"What is ([0-9()+\-* ]+)\?")
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)\.")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("data")
    return out, make_data.write_all(out, seed=0, scale=1.0)


def read(out: Path, stage: str, split: str) -> list[dict]:
    lines = (out / stage / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def true_value(expression: str) -> int:
    assert re.fullmatch(r"[0-9()+\-* ]+", expression), expression
    return eval(expression, {"__builtins__": {}})  # digits and + - * ( ) only


def final_answer(expression: str, completion: str) -> int:
    """Checks the worked answer's shape; returns its `#### n` value."""
    body, final = completion.strip().split("\n#### ")
    steps = STEP.findall(body)
    n_ops = len(re.findall(r" [-+*] ", expression))
    assert len(steps) == n_ops, (expression, completion)
    if n_ops == 2:  # the second step starts from the first step's result
        assert steps[1][0] == steps[0][3], completion
    assert steps[-1][3] == final, completion
    return int(final)


def steps_are_right(completion: str) -> bool:
    return all(
        make_data.OPS[op](int(a), int(b)) == int(v)
        for a, op, b, v in STEP.findall(completion)
    )


def question_of(prompt: str) -> str:
    match = PROMPT.fullmatch(prompt)
    assert match, prompt
    return match.group(1)


def test_same_seed_gives_identical_bytes(tmp_path):
    make_data.write_all(tmp_path / "a", seed=3, scale=0.25)
    make_data.write_all(tmp_path / "b", seed=3, scale=0.25)
    make_data.write_all(tmp_path / "c", seed=4, scale=0.25)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jsonl")
    )
    assert len(files) == sum(len(s) for s in SPLITS.values())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes(), name
    assert any(
        (tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes()
        for n in files
    )


def test_layout_and_counts(generated):
    out, counts = generated
    assert {p.name for p in out.iterdir()} == set(SPLITS)
    for stage, splits in SPLITS.items():
        assert {p.stem for p in (out / stage).glob("*.jsonl")} == splits
        for split in splits:
            assert counts[f"{stage}/{split}"] == len(read(out, stage, split))
    for stage, sizes in make_data.SIZES.items():
        for split, size in sizes.items():
            assert counts[f"{stage}/{split}"] == size
    for split in SPLITS["kto"]:
        assert counts[f"kto/{split}"] == 2 * counts[f"preference/{split}"]


def test_every_line_has_the_right_fields(generated):
    out, _ = generated
    for stage, splits in SPLITS.items():
        for split in splits:
            for row in read(out, stage, split):
                assert set(row) == FIELDS[stage], (stage, row)
                assert all(v for v in row.values() if not isinstance(v, bool)), row
                assert "</s>" not in json.dumps(row) and "<|" not in json.dumps(row)
                if "prompt" in row:
                    question_of(row["prompt"])
                for key in ("completion", "chosen", "rejected"):
                    if key in row:
                        assert row[key].startswith(" ") and not row[key].endswith("\n")
                if stage == "pretrain":
                    assert isinstance(row["text"], str) and len(row["text"]) < 200
                if stage == "chat":
                    roles = [m["role"] for m in row["messages"]]
                    assert roles == ["user", "assistant"]
                    assert all(
                        isinstance(m["content"], str) and m["content"]
                        for m in row["messages"]
                    )
                if stage == "kto":
                    assert isinstance(row["label"], bool)
                if stage == "grpo":
                    assert ARITHMETIC.fullmatch(question_of(row["prompt"]))
                    assert re.fullmatch(r"\d+", row["answer"])


def test_worked_answers_are_right(generated):
    out, _ = generated
    checked = 0
    for stage in ("sft", "preference", "preference_short", "kto"):
        for split in SPLITS[stage]:
            for row in read(out, stage, split):
                match = ARITHMETIC.fullmatch(question_of(row["prompt"]))
                if not match:
                    continue
                expression, truth = match.group(1), true_value(match.group(1))
                good = row.get("chosen", row.get("completion"))
                if row.get("label", True):
                    assert final_answer(expression, good) == truth and steps_are_right(
                        good
                    ), row
                if stage == "preference":
                    assert final_answer(expression, row["rejected"]) != truth, row
                if stage == "preference_short":
                    assert final_answer(expression, row["rejected"]) == truth, row
                if row.get("label") is False:
                    assert final_answer(expression, row["completion"]) != truth, row
                checked += 1
    for split in SPLITS["grpo"]:
        for row in read(out, "grpo", split):
            expression = ARITHMETIC.fullmatch(question_of(row["prompt"])).group(1)
            assert int(row["answer"]) == true_value(expression) >= 0
            checked += 1
    for split in SPLITS["pretrain"]:
        for row in read(out, "pretrain", split):
            if match := ARITHMETIC.search(row["text"]):
                completion = row["text"].split("\nAnswer:", 1)[1]
                assert final_answer(match.group(1), completion) == true_value(
                    match.group(1)
                )
                assert steps_are_right(completion)
                checked += 1
    assert checked > 5000


def test_held_out_problems_never_in_train(generated):
    out, _ = generated
    problems: dict[str, set[str]] = {"train": set(), "valid": set(), "test": set()}
    for stage, splits in SPLITS.items():
        for split in splits:
            text = (out / stage / f"{split}.jsonl").read_text(encoding="utf-8")
            found = set(ARITHMETIC.findall(text))
            assert found, (stage, split)
            problems[split] |= found
    assert not problems["train"] & problems["valid"]
    assert not problems["train"] & problems["test"]
    assert not problems["valid"] & problems["test"]
    for split, expressions in problems.items():
        assert all(
            make_data.problem_split(f"What is {e}?") == split for e in expressions
        )
    for split in ("valid", "test"):  # an eval set without repeats
        prompts = [row["prompt"] for row in read(out, "grpo", split)]
        assert len(prompts) == len(set(prompts))


def test_preference_pairs_differ_and_facts_are_wrong_in_kind(generated):
    out, _ = generated
    answers = {f.question: f for f in make_data.FACTS}
    for stage in ("preference", "preference_short"):
        for split in SPLITS[stage]:
            for row in read(out, stage, split):
                assert row["chosen"] != row["rejected"]
                fact = answers.get(question_of(row["prompt"]))
                if fact and stage == "preference":
                    assert row["chosen"] == f" {fact.answer}."
                    wrong = row["rejected"].strip(" .")
                    assert wrong != fact.answer
                    assert wrong in {
                        f.answer for f in make_data.FACTS if f.category == fact.category
                    }
                if stage == "preference_short":
                    assert len(row["rejected"]) > len(row["chosen"])


def test_kto_unpairs_preference_and_chat_mirrors_sft(generated):
    out, _ = generated
    for split in SPLITS["kto"]:
        expected = Counter()
        for pair in read(out, "preference", split):
            expected[(pair["prompt"], pair["chosen"], True)] += 1
            expected[(pair["prompt"], pair["rejected"], False)] += 1
        rows = read(out, "kto", split)
        assert (
            Counter((r["prompt"], r["completion"], r["label"]) for r in rows)
            == expected
        )
        assert [r["label"] for r in rows[:10]] != [True, False] * 5  # shuffled
    for split in SPLITS["chat"]:
        for chat, sft in zip(
            read(out, "chat", split), read(out, "sft", split), strict=False
        ):
            user, assistant = (m["content"] for m in chat["messages"])
            assert sft["prompt"] == make_data.format_prompt(user)
            assert sft["completion"] == " " + assistant


def test_make_arithmetic_problem_is_consistent():
    rng = random.Random(0)
    for split in (None, "train", "valid", "test"):
        for _ in range(50):
            question, worked, answer = make_data.make_arithmetic_problem(rng, split)
            expression = ARITHMETIC.fullmatch(question).group(1)
            assert answer == true_value(expression) == final_answer(expression, worked)
            if split:
                assert make_data.problem_split(question) == split


def test_cli(tmp_path):
    run = [sys.executable, str(SCRIPT)]
    help_text = subprocess.run(
        [*run, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "example" in help_text and "--scale" in help_text
    subprocess.run(
        [*run, "--out", str(tmp_path), "--seed", "1", "--scale", "0.05"],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "grpo" / "test.jsonl").read_text().count("\n") == 10
    bad = subprocess.run(
        [*run, "--out", str(tmp_path), "--scale", "0"], capture_output=True
    )
    assert bad.returncode != 0
