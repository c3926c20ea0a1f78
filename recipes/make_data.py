"""Generate the embedded default data for the capstone pipeline.

Standard library only, seeded, and fast (well under a second at scale 1.0)::

    python recipes/make_data.py --out data --seed 0 --scale 1.0

writes mlx-lm's layout, one folder per stage holding ``train.jsonl``,
``valid.jsonl`` and, where a held-out eval makes sense, ``test.jsonl``
(recipes/README.md lists them). Every question is either an arithmetic
problem with a worked answer or a question about a small fixed fact table,
in one format throughout, so what pretraining teaches SFT and GRPO can use::

    Question: What is (3 + 4) * 5?
    Answer: 3 + 4 = 7. 7 * 5 = 35.
    #### 35

Held-out arithmetic is disjoint by construction: a problem's split is a pure
function of its text (``problem_split``, a CRC-32 bucket), so no valid or
test problem of any stage appears in any stage's train split, and valid and
test never share a problem. The fact table is the knowledge the model is
meant to learn, so fact questions appear in every split.

Completions carry no EOS text: the tokenizer pipeline appends EOS itself.
"""

import argparse
import json
import operator
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- fact table

CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("England", "London"), ("Greece", "Athens"), ("Peru", "Lima"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"),
)  # fmt: skip
COLOURS = (
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"),
    ("a banana", "yellow"), ("coal", "black"), ("a tomato", "red"),
    ("milk", "white"), ("a carrot", "orange"), ("a lemon", "yellow"),
    ("the sea", "blue"), ("a frog", "green"), ("a strawberry", "red"),
)  # fmt: skip
SOUNDS = (
    ("a dog", "woof"), ("a cat", "meow"), ("a cow", "moo"), ("a duck", "quack"),
    ("a sheep", "baa"), ("a pig", "oink"), ("an owl", "hoot"), ("a lion", "roar"),
    ("a horse", "neigh"), ("a snake", "hiss"),
)  # fmt: skip
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
    ("day", "night"), ("happy", "sad"), ("open", "closed"), ("light", "dark"),
    ("wet", "dry"), ("early", "late"), ("full", "empty"), ("loud", "quiet"),
)  # fmt: skip


@dataclass(frozen=True)
class Fact:
    question: str  # "What is the capital of France?"
    answer: str  # "Paris"
    statement: str  # "The capital of France is Paris."
    category: str  # wrong answers are drawn from the same category


# category: (question template, statement template, (key, answer) pairs)
FACT_TEMPLATES = {
    "capital": ("What is the capital of {}?", "The capital of {} is {}.", CAPITALS),
    "colour": ("What colour is {}?", "{} is {}.", COLOURS),
    "sound": ("What sound does {} make?", "{} says {}.", SOUNDS),
    "opposite": (
        "What is the opposite of {}?",
        "The opposite of {} is {}.",
        OPPOSITES + tuple((b, a) for a, b in OPPOSITES),
    ),
}


def _build_facts() -> tuple[Fact, ...]:
    facts = []
    for category, (question, statement, pairs) in FACT_TEMPLATES.items():
        for key, answer in pairs:
            sentence = statement.format(key, answer)
            sentence = sentence[0].upper() + sentence[1:]
            facts.append(
                Fact(question.format(key), answer.capitalize(), sentence, category)
            )
    return tuple(facts)


FACTS = _build_facts()

# ---------------------------------------------------------------- arithmetic

OPS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


@dataclass(frozen=True)
class Problem:
    """``a op b``, optionally followed by ``op2 c`` applied to that result."""

    a: int
    op: str
    b: int
    op2: str | None = None
    c: int = 0

    @property
    def expression(self) -> str:
        first = f"{self.a} {self.op} {self.b}"
        if self.op2 is None:
            return first
        if self.op2 == "*" and self.op != "*":
            first = f"({first})"
        return f"{first} {self.op2} {self.c}"

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    def work(
        self, slip_step: int | None = None, slip: int = 0
    ) -> tuple[str, list[int]]:
        """Worked answer text and each step's result.

        ``slip`` is added to the result of step ``slip_step`` (0 or 1) and
        carried forward, which is how wrong answers are made.
        """
        value = OPS[self.op](self.a, self.b) + (slip if slip_step == 0 else 0)
        steps, values = [f"{self.a} {self.op} {self.b} = {value}."], [value]
        if self.op2 is not None:
            left = value
            value = OPS[self.op2](left, self.c) + (slip if slip_step == 1 else 0)
            steps.append(f"{left} {self.op2} {self.c} = {value}.")
            values.append(value)
        return " ".join(steps) + f"\n#### {value}", values

    @property
    def answer(self) -> int:
        return self.work()[1][-1]


def _addition(rng: random.Random) -> Problem:
    return Problem(rng.randint(1, 99), "+", rng.randint(1, 99))


def _subtraction(rng: random.Random) -> Problem:
    a = rng.randint(2, 99)
    return Problem(a, "-", rng.randint(1, a))


def _multiplication(rng: random.Random) -> Problem:
    return Problem(rng.randint(2, 20), "*", rng.randint(2, 12))


def _sum_times(rng: random.Random) -> Problem:
    return Problem(rng.randint(1, 20), "+", rng.randint(1, 20), "*", rng.randint(2, 9))


def _difference_times(rng: random.Random) -> Problem:
    a = rng.randint(2, 30)
    return Problem(a, "-", rng.randint(1, a - 1), "*", rng.randint(2, 9))


def _product_plus(rng: random.Random) -> Problem:
    return Problem(rng.randint(2, 12), "*", rng.randint(2, 12), "+", rng.randint(1, 30))


def _product_minus(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return Problem(a, "*", b, "-", rng.randint(1, a * b))


# (maker, weight): answers are always >= 0; two-step problems are ~35%.
PROBLEM_KINDS = (
    (_addition, 25),
    (_subtraction, 20),
    (_multiplication, 20),
    (_sum_times, 10),
    (_difference_times, 10),
    (_product_plus, 8),
    (_product_minus, 7),
)
SPLITS = ("train", "valid", "test")


def problem_split(question: str) -> str:
    """The only split a problem may appear in: CRC-32 bucket of its text.

    10% test, 10% valid, 80% train. CRC-32 (not ``hash``) so the answer is
    the same in every process and every seed.
    """
    bucket = zlib.crc32(question.encode()) % 10
    return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def random_problem(rng: random.Random, split: str | None = None) -> Problem:
    """A random problem; with ``split``, one whose ``problem_split`` is ``split``."""
    makers, weights = zip(*PROBLEM_KINDS, strict=True)
    while True:
        problem = rng.choices(makers, weights)[0](rng)
        if split is None or problem_split(problem.question) == split:
            return problem


def make_arithmetic_problem(
    rng: random.Random, split: str | None = None
) -> tuple[str, str, int]:
    """One problem as (question, worked answer, answer).

    E.g. ``("What is 17 + 25?", "17 + 25 = 42.\\n#### 42", 42)``.
    """
    problem = random_problem(rng, split)
    worked, values = problem.work()
    return problem.question, worked, values[-1]


def wrong_worked_answer(problem: Problem, rng: random.Random) -> str:
    """The worked answer with one step off by 1-10, carried to a wrong final."""
    n_steps = 1 if problem.op2 is None else 2
    while True:
        slip = rng.choice((-1, 1)) * rng.randint(1, 10)
        worked, values = problem.work(rng.randrange(n_steps), slip)
        if min(values) >= 0 and values[-1] != problem.answer:
            return worked


# ---------------------------------------------------------------- items

FILLER = (
    "Let me think about this step by step.",
    "This is a question that many people ask.",
    "I will do my best to answer it carefully.",
    "It is always good to check the answer twice.",
    "There are many ways to think about this.",
    "I hope that this answer is helpful to you.",
    "Thank you for asking such a nice question.",
    "Some people find this hard, but it is fine.",
    "Here is what I think the answer is.",
    "That is all there is to say about it.",
)
SUBJECTS = (
    "The cat", "A dog", "The little bird", "My friend", "The old man", "A girl",
    "The teacher", "The farmer",
)  # fmt: skip
ACTIONS = (
    "sleeps on the mat", "reads a book", "walks to the park", "eats an apple",
    "sings a song", "plays in the garden", "drinks some water",
    "looks at the moon", "opens the door", "writes a letter",
)  # fmt: skip
TIMES = ("every morning", "at night", "after lunch", "on Sunday", "in the rain", "today")  # fmt: skip


def format_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def qa_item(
    rng: random.Random, split: str, arithmetic_share: float
) -> tuple[str, str, str]:
    """(question, correct completion, wrong completion); completions start with a space."""
    if rng.random() < arithmetic_share:
        problem = random_problem(rng, split)
        return (
            problem.question,
            " " + problem.work()[0],
            " " + wrong_worked_answer(problem, rng),
        )
    fact = rng.choice(FACTS)
    wrong = [
        f.answer
        for f in FACTS
        if f.category == fact.category and f.answer != fact.answer
    ]
    return fact.question, f" {fact.answer}.", f" {rng.choice(wrong)}."


def pad_with_filler(completion: str, rng: random.Random) -> str:
    """Same answer with 2-4 rambling sentences around its first line."""
    lines = completion.strip().split("\n")
    before = rng.sample(FILLER, rng.randint(1, 2))
    after = rng.sample([f for f in FILLER if f not in before], rng.randint(1, 2))
    lines[0] = " ".join([*before, lines[0], *after])
    return " " + "\n".join(lines)


def plain_text(rng: random.Random) -> str:
    """A few simple sentences, or a counting sequence."""
    if rng.random() < 0.3:
        start, step = rng.randint(0, 20), rng.randint(1, 5)
        numbers = ", ".join(str(start + step * i) for i in range(rng.randint(5, 8)))
        return f"Counting by {step} from {start}: {numbers}."
    sentences = [
        f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(TIMES)}."
        for _ in range(rng.randint(1, 3))
    ]
    return " ".join(sentences)


# ---------------------------------------------------------------- stages

SIZES = {  # rows per split at --scale 1.0; kto is derived from preference
    "pretrain": {"train": 3000, "valid": 200},
    "sft": {"train": 2000, "valid": 200},
    "chat": {"train": 500, "valid": 100},
    "preference": {"train": 1500, "valid": 200, "test": 200},
    "preference_short": {"train": 600, "valid": 200},
    "grpo": {"train": 1000, "valid": 100, "test": 200},
}


def pretrain_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.7:  # Q&A in the SFT format: 45% arithmetic, 25% facts
            question, completion, _ = qa_item(rng, split, arithmetic_share=0.45 / 0.7)
            text = format_prompt(question) + completion
        elif kind < 0.8:
            text = " ".join(f.statement for f in rng.sample(FACTS, rng.randint(1, 3)))
        else:
            text = plain_text(rng)
        rows.append({"text": text})
    return rows


def sft_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    items = [qa_item(rng, split, arithmetic_share=0.7) for _ in range(n)]
    return [{"prompt": format_prompt(q), "completion": c} for q, c, _ in items]


def chat_rows(sft: list[dict]) -> list[dict]:
    """The SFT rows as user/assistant messages (the chat template adds the rest)."""
    rows = []
    for row in sft:
        question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": row["completion"].strip()},
        ]
        rows.append({"messages": messages})
    return rows


def preference_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """Chosen: the correct worked answer or fact; rejected: a wrong one."""
    items = [qa_item(rng, split, arithmetic_share=0.7) for _ in range(n)]
    return [
        {"prompt": format_prompt(q), "chosen": c, "rejected": w} for q, c, w in items
    ]


def preference_short_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """Both answers correct; the rejected one rambles."""
    rows = []
    for _ in range(n):
        question, completion, _ = qa_item(rng, split, arithmetic_share=0.5)
        rejected = pad_with_filler(completion, rng)
        rows.append(
            {
                "prompt": format_prompt(question),
                "chosen": completion,
                "rejected": rejected,
            }
        )
    return rows


def kto_rows(rng: random.Random, preference: list[dict]) -> list[dict]:
    """Unpaired: each preference pair gives one desirable and one undesirable row."""
    rows = []
    for pair in preference:
        for completion, label in ((pair["chosen"], True), (pair["rejected"], False)):
            rows.append(
                {"prompt": pair["prompt"], "completion": completion, "label": label}
            )
    rng.shuffle(rows)
    return rows


def grpo_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """Distinct problems: an eval set without repeats, a train set with more variety."""
    seen: dict[str, Problem] = {}
    for _ in range(200 * n):
        problem = random_problem(rng, split)
        seen.setdefault(problem.question, problem)
        if len(seen) == n:
            return [
                {"prompt": format_prompt(q), "answer": str(p.answer)}
                for q, p in seen.items()
            ]
    raise ValueError(f"could not draw {n} distinct {split} problems")


STAGE_ROWS = {
    "pretrain": pretrain_rows,
    "sft": sft_rows,
    "preference": preference_rows,
    "preference_short": preference_short_rows,
    "grpo": grpo_rows,
}


def build_all(seed: int = 0, scale: float = 1.0) -> dict[str, dict[str, list[dict]]]:
    """Every stage's rows: ``{stage: {split: [row, ...]}}``.

    Each (stage, split) draws from its own ``random.Random``, so resizing one
    leaves the others unchanged. Chat rows are the first SFT rows; KTO rows
    are the preference pairs unpaired.
    """
    data: dict[str, dict[str, list[dict]]] = {"chat": {}, "kto": {}}
    for stage, make_rows in STAGE_ROWS.items():
        data[stage] = {}
        for split, size in SIZES[stage].items():
            rng = random.Random(f"{seed}/{stage}/{split}")
            data[stage][split] = make_rows(rng, split, max(1, round(size * scale)))
    for split, size in SIZES["chat"].items():
        data["chat"][split] = chat_rows(
            data["sft"][split][: max(1, round(size * scale))]
        )
    for split, pairs in data["preference"].items():
        data["kto"][split] = kto_rows(random.Random(f"{seed}/kto/{split}"), pairs)
    return data


def write_all(out_dir: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write every ``<out_dir>/<stage>/<split>.jsonl``; returns ``{"stage/split": rows}``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    counts = {}
    for stage, splits in build_all(seed, scale).items():
        folder = Path(out_dir) / stage
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            lines = "".join(json.dumps(row) + "\n" for row in rows)
            (folder / f"{split}.jsonl").write_text(
                lines, encoding="utf-8", newline="\n"
            )
            counts[f"{stage}/{split}"] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate the capstone pipeline's default data (JSONL, mlx-lm layout).",
        epilog="example:\n  python recipes/make_data.py --out data --seed 0 --scale 1.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, help="output folder; one subfolder per stage"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed, byte-identical files"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every split's size"
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    for name, count in write_all(args.out, args.seed, args.scale).items():
        print(f"{args.out}/{name}.jsonl: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
