"""Generate the embedded default data for the capstone pipeline.

Standard library only, seeded, and fast (well under a second at scale 1.0)::

    python recipes/make_data.py --out data --seed 0 --scale 1.0

writes mlx-lm's layout, one folder per stage holding ``train.jsonl``,
``valid.jsonl`` and, where a held-out eval makes sense, ``test.jsonl``
(recipes/README.md lists them).

The task is chosen so that every stage after pretraining has something to
change that a person can see in greedy generations:

- **Arithmetic with a scratchpad**: ``a + b + c`` (digits 1-9), worked
  one addition at a time from the right (Lee et al. 2023, "Teaching
  Arithmetic to Small Transformers")::

      Question: What is 7 + 5 + 3?
      Answer: 5 + 3 = 8. 7 + 8 = 15.
      #### 15

- **A habit GRPO can remove**: asked ``Quick: what is ...?`` (a fixed half
  of the sums), the demonstrators mostly answer bare (``#### 23``); asked
  ``What is ...?``, they always work it out. The model cannot add three
  numbers in one step, so its bare answers are guesses. Only a verifiable
  reward says that working it out pays.
- **A visible preference**: the SFT data hedges ("I think ..., but I am not
  sure.") in most answers, just before the final line; the preference data prefers the same answer
  without the hedge. DPO's effect is the share of hedged generations.

What a ~3M-parameter model learns of the additions in the capstone's
pretraining budget is measured, not assumed: see recipes/README.md.

Held-out problems are disjoint by construction: a problem's split is a pure
function of its text (``problem_split``, a CRC-32 bucket), so no valid or
test problem of any stage appears in any stage's train split, and valid and
test never share a problem.

Completions carry no EOS text: the tokenizer pipeline appends EOS itself.
"""

import argparse
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- arithmetic

MIN_TERMS, MAX_TERMS = 3, 3  # a + b + c: two additions, in every stage
DIGITS = (1, 9)  # each term


@dataclass(frozen=True)
class Problem:
    """A sum of digits, worked from the right one addition at a time."""

    terms: tuple[int, ...]

    @property
    def expression(self) -> str:
        return " + ".join(map(str, self.terms))

    @property
    def question(self) -> str:
        """The canonical question, which decides the split (``problem_split``)."""
        return f"What is {self.expression}?"

    @property
    def quick(self) -> bool:
        """Is this sum asked for quickly? A fixed half of the sums, by their text."""
        return zlib.crc32(self.expression.encode()) % 2 == 1

    @property
    def asked(self) -> str:
        """The question as the data asks it: ``Quick: what is 8 + 7 + 8?`` or ``What is ...?``"""
        return f"Quick: what is {self.expression}?" if self.quick else self.question

    @property
    def answer(self) -> int:
        return sum(self.terms)

    def work(self) -> str:
        """Add the last two numbers, then each number before them, one
        addition per sentence: ``7 + 5 + 3`` -> ``"5 + 3 = 8. 7 + 8 = 15.\n#### 15"``.

        Right to left, every number a step needs stands where a small model
        finds it: the last two at a fixed distance before the answer starts,
        the others at the start of the question, each result just before the
        step that uses it; and each addition's two numbers stand right before
        its ``=``. Left to right (``7 + 5 = 12. 12 + 3 = 15.``), the model
        pretrained for 800 steps added right (92% of its additions) but
        fetched the third number from the question right 16% of the time.
        """
        *rest, total = self.terms
        steps = []
        for term in reversed(rest):
            steps.append(f"{term} + {total} = {term + total}.")
            total += term
        return " ".join(steps) + f"\n#### {self.answer}"


SPLITS = ("train", "valid", "test")


def problem_split(question: str) -> str:
    """The only split a problem may appear in: CRC-32 bucket of its text.

    10% test, 10% valid, 80% train. CRC-32 (not ``hash``) so the answer is
    the same in every process and every seed.
    """
    bucket = zlib.crc32(question.encode()) % 10
    return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def random_problem(
    rng: random.Random,
    split: str | None = None,
    n_terms: tuple[int, int] = (MIN_TERMS, MAX_TERMS),
) -> Problem:
    """A random problem; with ``split``, one whose ``problem_split`` is ``split``."""
    while True:
        size = rng.randint(*n_terms)
        problem = Problem(tuple(rng.randint(*DIGITS) for _ in range(size)))
        if split is None or problem_split(problem.question) == split:
            return problem


def make_arithmetic_problem(
    rng: random.Random, split: str | None = None
) -> tuple[str, str, int]:
    """One problem as (question, worked answer, answer).

    E.g. ``("What is 7 + 5 + 3?", "7 + 5 + 3 = 12 + 3 = 15.\\n#### 15", 15)``.
    """
    problem = random_problem(rng, split)
    return problem.asked, problem.work(), problem.answer


# ---------------------------------------------------------------- hedging

# Every hedge starts with the same word, so the SFT model's greedy token after
# its work is the hedge's whenever most of its data hedges.
HEDGES = (
    "I think the answer is this, but I am not sure.",
    "I think I can do this, but I might be wrong.",
    "I think so, but please check my work.",
    "I think this is right, but I am not certain.",
)
HEDGED_SHARE = 0.75  # of SFT answers

# Asked for a quick answer, the demonstrators mostly write it bare (they know
# it; the model, which cannot add three numbers in one step, then guesses).
# The SFT model copies the habit; GRPO's verifiable reward is what can teach
# it to work every sum out. (A subtler cue, "the sum starts with 5 or more",
# was not picked up by 150 steps of LoRA SFT: the model answered every
# question bare.)
BARE_SHARE = {"quick": 0.7, "plain": 0.0}


def bare_share(problem: Problem) -> float:
    """How often the demonstrators skip the work on this problem."""
    return BARE_SHARE["quick" if problem.quick else "plain"]


def hedge(completion: str, rng: random.Random) -> str:
    """The same answer with a hedging sentence before its ``####`` line:
    ``" 5 + 3 = 8. 7 + 8 = 15. I think so, but please check my work.\n#### 15"``.

    The hedge comes after the work: put before it, it moved the question's
    numbers away from where the model fetches them, and the SFT model's worked
    answers went wrong (6% of held-out sums right).
    """
    work, final = completion.rsplit("#### ", 1)
    work = work.strip()
    return f" {work + ' ' if work else ''}{rng.choice(HEDGES)}\n#### {final}"


def is_hedged(completion: str) -> bool:
    """Does a completion hedge? What the capstone counts in generations."""
    return "not sure" in completion or any(h in completion for h in HEDGES)


# ---------------------------------------------------------------- text

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


def plain_text(rng: random.Random) -> str:
    """A few simple sentences, sometimes hedged: the words SFT recombines."""
    sentences = [
        f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(TIMES)}."
        for _ in range(rng.randint(1, 2))
    ]
    if rng.random() < 0.5:
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(HEDGES))
    return " ".join(sentences)


def counting_qa(rng: random.Random) -> str:
    """A question in the Question/Answer frame, answered in one line."""
    start, step = rng.randint(0, 30), rng.randint(1, 9)
    return (
        format_prompt(f"What comes after {start} when counting by {step}?")
        + f" {start + step}."
    )


def addition_facts_text(rng: random.Random, n: int = 8) -> str:
    """Single additions, drawn from the steps of random sums: ``4 + 3 = 7. 12 + 5 = 17.``"""
    facts = []
    for _ in range(n):
        steps = random_problem(rng).work().split("\n")[0].split(". ")
        facts.append(rng.choice(steps).rstrip(".") + ".")
    return " ".join(facts)


def worked_sum_text(problem: Problem) -> str:
    """A worked sum in the Question/Answer frame, ending in a sentence, not
    the ``####`` line that SFT teaches.

    In this frame from pretraining on, the numbers of the question stand
    where the answer fetches them in every later stage: pretrained on
    ``Add 2 + 9 + 3: ...`` instead, the model copied them right, but after
    LoRA SFT in the Question/Answer frame it fetched wrong ones (9% of
    held-out sums right).
    """
    worked = problem.work().split("\n")[0]
    return format_prompt(problem.question) + f" {worked} The sum is {problem.answer}."


# ---------------------------------------------------------------- stages

SIZES = {  # rows per split at --scale 1.0; kto is derived from preference
    "copy": {"train": 8000, "valid": 100},
    "pretrain": {"train": 20000, "valid": 200},
    "sft": {"train": 2000, "valid": 200},
    "chat": {"train": 500, "valid": 100},
    "preference": {"train": 1000, "valid": 200, "test": 200},
    "grpo": {"train": 500, "valid": 50, "test": 70},
}


def copy_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """A copying drill, the first pretraining stage: ``Copy 7 + 5 + 3: 7 + 5 + 3.``

    A worked sum copies numbers from the question. Trained on sums from the
    start, the small model had not learned to copy after 800 steps
    (teacher-forced, it missed most copied digits); after 150 steps of this
    drill and 800 of sums it copied every question of a held-out probe
    right, and only the additions were wrong.
    """
    return [
        {"text": f"Copy {e}: {e}."}
        for e in (random_problem(rng, split).expression for _ in range(n))
    ]


def pretrain_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """50% lists of single additions, 40% worked sums, 5% counting questions,
    5% plain sentences (half with a hedge)."""
    rows = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            text = addition_facts_text(rng)
        elif kind < 0.9:
            text = worked_sum_text(random_problem(rng, split))
        elif kind < 0.95:
            text = counting_qa(rng)
        else:
            text = plain_text(rng)
        rows.append({"text": text})
    return rows


def demonstration(problem: Problem, rng: random.Random) -> str:
    """A demonstrator's answer: worked, or bare (``" #### 22"``) with
    ``bare_share(problem)``; both end on the ``####`` line."""
    if rng.random() < bare_share(problem):
        return f" #### {problem.answer}"
    return " " + problem.work()


def sft_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """Question -> demonstration; ``HEDGED_SHARE`` of them hedge first."""
    rows = []
    for _ in range(n):
        problem = random_problem(rng, split)
        completion = demonstration(problem, rng)
        if rng.random() < HEDGED_SHARE:
            completion = hedge(completion, rng)
        rows.append({"prompt": format_prompt(problem.asked), "completion": completion})
    return rows


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
    """Chosen: a demonstration as SFT has them; rejected: the same, hedged.

    Bare and worked answers come in SFT's proportions, so DPO's pairs
    differ in the hedge alone.
    """
    rows = []
    for _ in range(n):
        problem = random_problem(rng, split)
        chosen = demonstration(problem, rng)
        rows.append(
            {
                "prompt": format_prompt(problem.asked),
                "chosen": chosen,
                "rejected": hedge(chosen, rng),
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
    """Distinct problems: no repeats within a split."""
    seen: dict[str, Problem] = {}
    for _ in range(200 * n):
        problem = random_problem(rng, split)
        seen.setdefault(problem.question, problem)
        if len(seen) == n:
            return [
                {"prompt": format_prompt(p.asked), "answer": str(p.answer)}
                for q, p in seen.items()
            ]
    raise ValueError(f"could not draw {n} distinct {split} problems")


STAGE_ROWS = {
    "copy": copy_rows,
    "pretrain": pretrain_rows,
    "sft": sft_rows,
    "preference": preference_rows,
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
