"""Chat messages, checked line by line against TRL's conversational formats.

A message is ``{"role": ..., "content": str}`` with role system, user,
assistant or tool. A conversation is a prompt then a completion: a system
message only first; the prompt ends with the user's (or a tool's) turn, the
one the completion answers; the completion is assistant messages (tool
results between them), ending on a non-empty assistant reply, the text a
stage trains on.
"""

from __future__ import annotations

from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import Record

ROLES = ("system", "user", "assistant", "tool")
PROMPT_ENDS = ("user", "tool")
COMPLETION_ROLES = ("assistant", "tool")

Labelled = list[tuple[str, dict]]  # (where, e.g. "prompt[2]", message)


def require_messages(record: Record, key: str) -> list[dict]:
    """A non-empty list of messages with known roles and string contents."""
    if key not in record.fields:
        raise DataError(record.path, record.line, f"missing field '{key}'")
    value = record.fields[key]
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise DataError(
            record.path,
            record.line,
            f"field '{key}' must be a non-empty list of messages, got {got}",
        )
    for i, message in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            kind = type(message).__name__
            raise DataError(
                record.path,
                record.line,
                f"{where} must be an object with 'role' and 'content', got {kind}",
            )
        for name in ("role", "content"):
            if name not in message:
                raise DataError(record.path, record.line, f"{where} has no '{name}'")
            if not isinstance(message[name], str):
                kind = type(message[name]).__name__
                raise DataError(
                    record.path,
                    record.line,
                    f"{where}: '{name}' must be a string, got {kind}",
                )
        if message["role"] not in ROLES:
            raise DataError(
                record.path,
                record.line,
                f"{where}: role {message['role']!r} is not one of {', '.join(ROLES)}",
            )
    return value


def labelled(key: str, messages: list[dict], first: int = 0) -> Labelled:
    return [(f"{key}[{first + i}]", m) for i, m in enumerate(messages)]


def check_prompt(record: Record, prompt: Labelled) -> None:
    """A system message only first; the last turn is the user's (or a tool's)."""
    for position, (where, message) in enumerate(prompt):
        if message["role"] == "system" and position > 0:
            raise DataError(
                record.path,
                record.line,
                f"{where}: a system message may only come first",
            )
    if prompt and prompt[-1][1]["role"] not in PROMPT_ENDS:
        where, message = prompt[-1]
        raise DataError(
            record.path,
            record.line,
            f"{where}: a prompt must end with a user or tool message, "
            f"got {message['role']!r}",
        )


def check_conversation(record: Record, prompt: Labelled, completion: Labelled) -> None:
    """``check_prompt``, then: the completion is assistant turns (tool results
    between them), starting and ending with the assistant, whose last reply
    is not empty."""
    check_prompt(record, prompt)
    for where, message in completion:
        if message["role"] not in COMPLETION_ROLES:
            raise DataError(
                record.path,
                record.line,
                f"{where}: a completion holds assistant (or tool) messages, "
                f"got {message['role']!r}",
            )
    for where, message in (completion[0], completion[-1]):
        if message["role"] != "assistant":
            raise DataError(
                record.path,
                record.line,
                f"{where}: a completion must start and end with an assistant "
                f"message, got {message['role']!r}",
            )
    where, last = completion[-1]
    if not last["content"].strip():
        raise DataError(
            record.path, record.line, f"{where}: the assistant reply is empty"
        )
