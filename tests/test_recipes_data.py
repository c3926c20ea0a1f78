"""recipes/make_data.py: deterministic, held-out problems kept out of every
train split, every line well-formed, every worked answer re-checked with
Python's own arithmetic, and the hedge where the capstone expects it."""

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
    "copy": {"text"},
    "pretrain": {"text"},
    "sft": {"prompt", "completion"},
    "chat": {"messages"},
    "preference": {"prompt", "chosen", "rejected"},
    "kto": {"prompt", "completion", "label"},
    "grpo": {"prompt", "answer"},
}
SPLITS = {
    "copy": {"train", "valid"},
    "pretrain": {"train", "valid"},
    "sft": {"train", "valid"},
    "chat": {"train", "valid"},
    "preference": {"train", "valid", "test"},
    "kto": {"train", "valid", "test"},
    "grpo": {"train", "valid", "test"},
}
PROMPT = re.compile(r"Question: ([^\n]+\?)\nAnswer:")
ARITHMETIC = re.compile(r"(?:Quick: what|What) is ([1-9]\d?(?: \+ [1-9])+)\?")
STEP = re.compile(r"(\d+) \+ (\d+) = (\d+)\.")
WORKED_SUM = re.compile(r"Copy ([1-9]\d?(?: \+ [1-9])+): ")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("data")
    return out, make_data.write_all(out, seed=0, scale=1.0)


def read(out: Path, stage: str, split: str) -> list[dict]:
    lines = (out / stage / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def true_value(expression: str) -> int:
    return sum(int(term) for term in expression.split(" + "))


def final_answer(expression: str, completion: str) -> int:
    """Checks the worked answer's shape and sums; returns its `#### n` value.

    ``5 + 3 = 8. 7 + 8 = 15.``: the last two numbers first, then each one
    before them added to the result so far.
    """
    answer = " ".join(completion.replace(HEDGE_OF(completion), "").split(" "))
    answer = answer.replace(" \n", "\n").strip()
    if answer.startswith("#### "):  # a bare answer
        return int(answer.removeprefix("#### "))
    body, final = answer.split("\n#### ")
    *rest, total = [int(t) for t in expression.split(" + ")]
    steps = [tuple(map(int, step)) for step in STEP.findall(body)]
    assert " ".join(f"{a} + {b} = {c}." for a, b, c in steps) == body, completion
    assert [a for a, _, _ in steps] == rest[::-1], completion
    for a, b, c in steps:
        assert b == total and c == a + b, completion
        total = c
    assert str(total) == final, completion
    return int(final)


def HEDGE_OF(completion: str) -> str:  # noqa: N802 - reads as a constant lookup
    return next((h for h in make_data.HEDGES if h in completion), "")


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
                if stage == "copy":
                    expression = WORKED_SUM.match(row["text"]).group(1)
                    assert row["text"].endswith(f": {expression}.")
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
    for stage in ("sft", "preference", "kto"):
        for split in SPLITS[stage]:
            for row in read(out, stage, split):
                expression = ARITHMETIC.fullmatch(question_of(row["prompt"])).group(1)
                truth = true_value(expression)
                for key in ("completion", "chosen", "rejected"):
                    if key in row:
                        assert final_answer(expression, row[key]) == truth, row
                        checked += 1
    for split in SPLITS["grpo"]:
        for row in read(out, "grpo", split):
            expression = ARITHMETIC.fullmatch(question_of(row["prompt"])).group(1)
            assert int(row["answer"]) == true_value(expression)
            checked += 1
    for split in SPLITS["pretrain"]:
        for row in read(out, "pretrain", split):
            if match := re.fullmatch(
                r"Question: What is ([0-9+ ]+)\?\nAnswer: (.*) The sum is (\d+)\.",
                row["text"],
            ):
                expression, worked, total = match.groups()
                assert final_answer(
                    expression, f"{worked}\n#### {total}"
                ) == true_value(expression)
                checked += 1
            elif facts := re.findall(r"(\d+) \+ (\d+) = (\d+)\.", row["text"]):
                assert all(int(a) + int(b) == int(c) for a, b, c in facts), row
                checked += 1
    assert checked > 20000


def test_hedges_sit_where_the_capstone_expects_them(generated):
    """SFT answers mostly hedge; a preference pair is one answer, plain
    (chosen) and hedged (rejected); `is_hedged` tells them apart."""
    out, _ = generated
    sft = read(out, "sft", "train")
    share = sum(make_data.is_hedged(r["completion"]) for r in sft) / len(sft)
    assert share == pytest.approx(make_data.HEDGED_SHARE, abs=0.05)
    assert all(h.startswith("I think") for h in make_data.HEDGES)
    for split in SPLITS["preference"]:
        for row in read(out, "preference", split):
            assert not make_data.is_hedged(row["chosen"])
            assert make_data.is_hedged(row["rejected"])
            hedge = HEDGE_OF(row["rejected"])
            work, final = row["chosen"].strip().rsplit("#### ", 1)
            before = f"{work.strip()} " if work.strip() else ""
            assert row["rejected"] == f" {before}{hedge}\n#### {final}"
    texts = [r["text"] for r in read(out, "pretrain", "train")]
    assert not any("#### " in t for t in texts)
    assert any(make_data.is_hedged(t) for t in texts)  # pretraining knows the words
    assert not any("\n####" in t or "\nAnswer: I think" in t for t in texts)


def test_held_out_problems_never_in_train(generated):
    out, _ = generated
    problems: dict[str, set[str]] = {"train": set(), "valid": set(), "test": set()}
    for stage, splits in SPLITS.items():
        for split in splits:
            text = (out / stage / f"{split}.jsonl").read_text(encoding="utf-8")
            found = set(ARITHMETIC.findall(text)) | set(WORKED_SUM.findall(text))
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


def test_bare_answers_follow_the_demonstrators_habit(generated):
    """The habit GRPO can remove: SFT and preference answers are bare in the
    share ``bare_share`` gives each kind of problem, mostly bare for some and
    mostly worked for the others."""
    out, _ = generated
    bare: dict[float, list[bool]] = {}
    for stage, key in (("sft", "completion"), ("preference", "chosen")):
        for row in read(out, stage, "train"):
            expression = ARITHMETIC.fullmatch(question_of(row["prompt"])).group(1)
            problem = make_data.Problem(tuple(map(int, expression.split(" + "))))
            answer = row[key].replace(HEDGE_OF(row[key]), "").strip()
            bare.setdefault(make_data.bare_share(problem), []).append(
                answer.startswith("####")
            )
    assert sorted(bare) == sorted(make_data.BARE_SHARE.values())
    assert min(bare) < 0.5 < max(bare)
    for share, flags in bare.items():
        assert sum(flags) / len(flags) == pytest.approx(share, abs=0.05), share


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
            assert (
                make_data.MIN_TERMS <= expression.count("+") + 1 <= make_data.MAX_TERMS
            )
            assert answer == true_value(expression) == final_answer(expression, worked)
            if split:
                assert make_data.problem_split(f"What is {expression}?") == split


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
    expected = round(make_data.SIZES["grpo"]["test"] * 0.05)
    assert (tmp_path / "grpo" / "test.jsonl").read_text().count("\n") == expected
    bad = subprocess.run(
        [*run, "--out", str(tmp_path), "--scale", "0"], capture_output=True
    )
    assert bad.returncode != 0


def test_the_served_question_is_held_out():
    """`make capstone` asks the served model a question no train split holds."""
    makefile = (SCRIPT.parents[1] / "Makefile").read_text()
    question = re.search(r"^QUESTION\s*:=\s*(.+)$", makefile, re.M).group(1).strip()
    assert ARITHMETIC.fullmatch(question)
    assert make_data.problem_split(question) == "test"
