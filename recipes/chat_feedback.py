"""A scripted user gives the SFT model feedback through `mlx-align chat`'s HTTP API.

    python recipes/chat_feedback.py chat runs/capstone --questions 64
    python recipes/chat_feedback.py report runs/capstone

``chat`` starts ``mlx-align chat`` on the SFT model (``sft-fused``) with
``feedback/`` as its folder, and plays a user who prefers answers without a
hedge and fixes wrong sums, through the same API the page uses:

1. ask a held-in question (``data/grpo/train.jsonl``, never a test problem)
   over ``/v1/chat/completions``;
2. 👍 an answer that is right and plain, 👎 any other (``kind: rating``);
3. a wrong sum: edit it to the worked answer, no hedge (``kind: edit``);
4. a right but hedged answer: ask for another; pick it if it is right and
   plain (``kind: pick``), else edit the hedge out.

It writes ``feedback/session.json`` with the counts. ``make
capstone-feedback`` then trains DPO on ``feedback/dpo.jsonl`` as it is, and
``report`` adds a section to REPORT.md: hedging and accuracy on the held-out
questions, SFT against DPO on the feedback, and what the feedback took.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from make_data import HEDGES, Problem, is_hedged
from report import generations, percent, read_jsonl

from mlx_align.apps.serve import post_json
from mlx_align.rewards.math import math_reward

SECTION = "## Chat feedback (make capstone-feedback)"
START_TIMEOUT_S = 120.0


def problem_of(question: str) -> Problem:
    """``Quick: what is 1 + 5 + 6?`` -> ``Problem((1, 5, 6))``."""
    return Problem(tuple(int(t) for t in re.findall(r"\d+", question)))


def start_chat(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    command = [str(Path(sys.executable).parent / "mlx-align"), "chat"]
    command += ["--model", str(run / "sft-fused"), "--feedback", str(run / "feedback")]
    command += ["--port", "0", "--max-tokens", "64", "--temperature", "0.8"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.1)
    process.kill()
    sys.exit(f"mlx-align chat did not start:\n{log.read_text()}")


class ScriptedUser:
    """The user's side of the chat: questions in, judgements out, counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts = {"questions": 0, "answers": 0, "good": 0, "bad": 0}
        self.counts |= {"edits_wrong_sum": 0, "edits_hedge": 0, "picks": 0}

    def ask(self, question: str) -> tuple[str, str]:
        body = {"messages": [{"role": "user", "content": question}]}
        reply = post_json(f"{self.url}/v1/chat/completions", body, timeout=120)
        self.counts["answers"] += 1
        return reply["id"], reply["choices"][0]["message"]["content"] or ""

    def judge(self, **body) -> None:
        post_json(f"{self.url}/api/feedback", body, timeout=30)

    def converse(self, question: str) -> None:
        problem = problem_of(question)
        self.counts["questions"] += 1
        answer_id, text = self.ask(question)
        if not text.strip():  # nothing to judge (the server refuses it too)
            return
        right, hedged = is_right(text, problem), is_hedged(text)
        good = right and not hedged
        self.judge(kind="rating", answer_id=answer_id, label=good)
        self.counts["good" if good else "bad"] += 1
        if not right:
            self.judge(kind="edit", answer_id=answer_id, text=problem.work())
            self.counts["edits_wrong_sum"] += 1
        elif hedged:
            other_id, other = self.ask(question)  # "another"
            if is_right(other, problem) and not is_hedged(other):
                self.judge(kind="pick", chosen_id=other_id, rejected_id=answer_id)
                self.counts["picks"] += 1
            elif unhedged(text) not in ("", text.strip()):
                self.judge(kind="edit", answer_id=answer_id, text=unhedged(text))
                self.counts["edits_hedge"] += 1


def is_right(text: str, problem: Problem) -> bool:
    return math_reward([""], [text], answer=[str(problem.answer)])[0] == 1.0


def unhedged(text: str) -> str:
    for hedge in HEDGES:
        text = text.replace(" " + hedge, "").replace(hedge, "")
    return re.sub(r"I think[^.\n]*not sure\.", "", text).strip()


def chat(run: Path, questions: int) -> dict:
    rows = read_jsonl(run / "data" / "grpo" / "train.jsonl")[:questions]
    asked = [r["prompt"].removeprefix("Question: ").split("\n")[0] for r in rows]
    process, url = start_chat(run, run / "feedback-chat.log")
    start = time.perf_counter()
    try:
        user = ScriptedUser(url)
        for question in asked:
            user.converse(question)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"{url}/api/stats", timeout=30
        ) as response:
            stats = json.loads(response.read())
    finally:
        process.terminate()
        process.wait(timeout=30)
    session = {
        **user.counts,
        "saved_ratings": stats["ratings"],
        "saved_pairs": stats["pairs"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (run / "feedback" / "session.json").write_text(json.dumps(session, indent=1) + "\n")
    return session


def section(run: Path) -> list[str]:
    session_file = run / "feedback" / "session.json"
    sft, tuned = generations(run, "sft"), generations(run, "feedback")
    if not (session_file.exists() and sft and tuned):
        return []
    s = json.loads(session_file.read_text())
    judgements = (
        s["good"] + s["bad"] + s["edits_wrong_sum"] + s["edits_hedge"] + s["picks"]
    )
    lines = [
        SECTION,
        "",
        f"A scripted user (`recipes/chat_feedback.py`) asked the SFT model "
        f"{s['questions']} held-in questions through `mlx-align chat`'s HTTP API "
        f"({s['answers']} answers sampled at temperature 0.8, {s['seconds']:.0f} s) "
        f"and made {judgements} judgements: {s['good']} 👍 and {s['bad']} 👎; "
        f"{s['edits_wrong_sum']} edits fixing a wrong sum, {s['edits_hedge']} "
        f"removing a hedge; {s['picks']} picks of a plain second sample over a "
        f"hedged one. DPO (+ RPO term, as the capstone's) trained on the "
        f"{s['saved_pairs']} pairs in `feedback/dpo.jsonl` as the server wrote them.",
        "",
        "| model (held-out questions, greedy) | hedged answers | bare answers | format | math accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, g in (("SFT", sft), ("DPO on the chat feedback", tuned)):
        cells = (g.hedged_rate, g.bare_rate, g.format_rate, g.accuracy)
        lines.append(f"| {name} | " + " | ".join(map(percent, cells)) + " |")
    return [*lines, ""]


def add_to_report(run: Path) -> str:
    """REPORT.md with the section replaced (or added at the end)."""
    report = run / "REPORT.md"
    text = report.read_text() if report.exists() else "# Capstone report\n"
    if SECTION in text:  # up to the next section, or the end
        start = text.index(SECTION)
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + (text[following + 1 :] if following >= 0 else "")
    lines = section(run)
    text = text.rstrip("\n") + "\n\n" + "\n".join(lines) if lines else text
    report.write_text(text)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("chat", "report"))
    parser.add_argument("run", type=Path, help="the capstone's run folder")
    parser.add_argument("--questions", type=int, default=64, help="questions asked")
    args = parser.parse_args()
    if args.action == "chat":
        print(json.dumps(chat(args.run, args.questions), indent=1))
    else:
        print(add_to_report(args.run) or "(no feedback run yet)")


if __name__ == "__main__":
    main()
