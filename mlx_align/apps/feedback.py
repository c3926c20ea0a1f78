"""Judgements from the chat page, kept as TRL-format training rows on disk.

``FeedbackLog`` appends each judgement as one JSON line and fsyncs it before
the request that made it is answered, so a server killed at any moment loses
at most the line being written. A line cut short by such a kill (no final
newline) is dropped when the log is opened again, so every line of the
files parses.

The rows are TRL's conversational formats, read as they are by
``mlx-align kto`` and ``mlx-align dpo``:

* ``kto.jsonl``: ``{"prompt": [messages], "completion": [one assistant
  message], "label": true | false}`` (a 👍 or a 👎);
* ``dpo.jsonl``: ``{"prompt": [messages], "chosen": [...], "rejected": [...]}``
  (an edit: the user's text over the model's; or a pick between two samples).

``AnswerBook`` remembers the answers the server generated, by the id it
issued, so a judgement can only name an answer that was really given.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mlx_align.core.errors import DataError

KTO_FILE, DPO_FILE = "kto.jsonl", "dpo.jsonl"
ROLES = ("system", "user", "assistant")
REMEMBERED_ANSWERS = 10_000  # the oldest are forgotten beyond this
# Trimmed from both ends of answers and edits (chat templates add their own
# separators); the page trims the same characters, Python's strip() more.
SPACES = " \t\r\n"


class FeedbackError(Exception):
    """A judgement the server refuses: ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


@dataclass(frozen=True)
class Answer:
    """One generated reply: the conversation it answered and its text."""

    answer_id: str
    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...), ends with user
    text: str

    def prompt_messages(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.prompt]


def plain_prompt(messages: object) -> tuple[tuple[str, str], ...] | None:
    """The conversation as (role, content) pairs when it can be a training
    prompt (string contents, system first if at all, a user turn last), else None."""
    if not isinstance(messages, list) or not messages:
        return None
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            return None
        if role == "system" and i > 0:
            return None
        pairs.append((role, content))
    return tuple(pairs) if pairs[-1][0] == "user" else None


def reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def require_text(answer: Answer) -> None:
    if not answer.text:
        raise FeedbackError(422, "the answer is empty: nothing to train on")


class AnswerBook:
    """The answers this server generated, by id, most recent ``limit`` of them."""

    def __init__(self, limit: int = REMEMBERED_ANSWERS) -> None:
        self.limit = limit
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, answer: Answer) -> None:
        with self._lock:
            self._answers[answer.answer_id] = answer
            while len(self._answers) > self.limit:
                self._answers.popitem(last=False)

    def get(self, answer_id: object) -> Answer:
        with self._lock:
            answer = (
                self._answers.get(answer_id) if isinstance(answer_id, str) else None
            )
        if answer is None:
            raise FeedbackError(
                404, f"no answer with id {str(answer_id)[:80]!r} was generated here"
            )
        return answer


class JsonlAppender:
    """One append-only JSON-lines file: each row written whole and fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        drop_torn_tail(path)
        self.existing = read_rows(path)  # what earlier sessions saved
        self.count = len(self.existing)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fsync_directory(path.parent)  # the file's name survives a crash too

    def append(self, row: dict) -> None:
        """Write the line with O_APPEND, then fsync; the caller holds the lock."""
        data = memoryview((json.dumps(row, ensure_ascii=False) + "\n").encode())
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
        self.count += 1

    def close(self) -> None:
        os.close(self._fd)


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a write a kill interrupted)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    print(
        f"mlx-align chat: {path}: dropped an unfinished last line "
        f"({len(data) - keep} bytes) left by an interrupted write",
        file=sys.stderr,
    )
    with open(path, "r+b") as f:
        f.truncate(keep)
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise DataError(str(path), number, f"invalid JSON ({e})") from None
    return rows


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FeedbackLog:
    """``DIR/kto.jsonl`` and ``DIR/dpo.jsonl``, and the judgements already made.

    Each answer takes one rating and one edit, and each pair of answers one
    pick, while the server runs (a second is refused with 409), so a double
    click cannot weigh a judgement twice.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.kto = JsonlAppender(directory / KTO_FILE)
        self.dpo = JsonlAppender(directory / DPO_FILE)
        labels = [row.get("label") for row in self.kto.existing]
        self.good = sum(label is True for label in labels)
        self.kto.existing = self.dpo.existing = []  # counted; not kept
        self._judged: set[tuple] = set()
        self._lock = threading.Lock()

    def _once(self, key: tuple) -> None:
        if key in self._judged:
            raise FeedbackError(409, f"this {key[0]} was already saved")
        self._judged.add(key)

    def rate(self, answer: Answer, good: bool) -> dict:
        require_text(answer)
        row = {
            "prompt": answer.prompt_messages(),
            "completion": reply(answer.text),
            "label": good,
        }
        with self._lock:
            self._once(("rating", answer.answer_id))
            self.kto.append(row)
            self.good += good
        return row

    def edit(self, answer: Answer, text: str) -> dict:
        require_text(answer)
        text = text.strip(SPACES)
        if not text:
            raise FeedbackError(422, "the edited answer is empty")
        if text == answer.text:
            raise FeedbackError(422, "the edited answer is the same as the model's")
        return self._pair(("edit", answer.answer_id), answer, text, answer.text)

    def pick(self, chosen: Answer, rejected: Answer) -> dict:
        require_text(chosen)
        require_text(rejected)
        if chosen.answer_id == rejected.answer_id:
            raise FeedbackError(422, "a pick needs two different answers")
        if chosen.prompt != rejected.prompt:
            raise FeedbackError(422, "the two answers reply to different conversations")
        key = ("pick", frozenset((chosen.answer_id, rejected.answer_id)))
        return self._pair(key, chosen, chosen.text, rejected.text)

    def _pair(self, key: tuple, answer: Answer, chosen: str, rejected: str) -> dict:
        row = {
            "prompt": answer.prompt_messages(),
            "chosen": reply(chosen),
            "rejected": reply(rejected),
        }
        with self._lock:
            self._once(key)
            self.dpo.append(row)
        return row

    def stats(self) -> dict:
        with self._lock:
            return {
                "ratings": self.kto.count,
                "good": self.good,
                "bad": self.kto.count - self.good,
                "pairs": self.dpo.count,
            }

    def close(self) -> None:
        self.kto.close()
        self.dpo.close()
