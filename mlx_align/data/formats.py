"""The shapes TRL users' datasets come in, turned into the fields the stages read.

Applied to every row as its ``Record`` is made (``source.load_split``), in
this order:

1. ``--field-map NEW=OLD,...``: the package's field NEW is the dataset's
   column OLD (``prompt=question`` reads ``question`` as ``prompt``).
2. The formats that carry no ``prompt`` field get one:

   * **implicit prompt** preference (``chosen`` / ``rejected``, no
     ``prompt``): the prompt is what both share at the start, found as TRL's
     ``extract_prompt`` does (``extract_implicit_prompt``); ``chosen`` and
     ``rejected`` keep only what follows it.
   * **question + answer** (GSM8K and the like; also ``question`` +
     ``chosen`` / ``rejected``): ``question`` is the prompt. An ``answer``
     that ends with ``#### n`` becomes ``n``, the ground truth the math
     reward reads; its full text is the ``completion`` SFT trains on.
   * ``messages`` (a conversation) with no ``prompt``: the prompt of GRPO and
     the other sampling stages is the conversation up to its last user (or
     tool) turn; SFT still trains on ``messages`` itself.

A field that is there stays as it is: these only fill in ``prompt`` (and the
fields that go with it) where it is missing, so local JSONL in the package's
own format reads exactly as before. Nothing here raises but ``DataError``
at the row.
"""

from __future__ import annotations

from collections.abc import Callable

from mlx_align.core.errors import DataError

# Field names in --field-map: NEW=OLD pairs, separated by commas.
FIELD_MAP_HELP = (
    "NEW=OLD pairs separated by commas, e.g. prompt=question,answer=solution"
)

# (fields, path, row) -> fields: what a reader does to each row before it is a Record.
Convert = Callable[[dict, str, int], dict]


def parse_field_map(text: str) -> dict[str, str]:
    """``"prompt=question,answer=solution"`` -> ``{"prompt": "question", "answer": "solution"}``.

    Raises ValueError on an item that is not ``NEW=OLD`` or a NEW named twice.
    """
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        new, sep, old = (s.strip() for s in item.partition("="))
        if not (sep and new and old):
            raise ValueError(f"{item!r} is not NEW=OLD")
        if new in mapping:
            raise ValueError(f"{new!r} is given twice")
        mapping[new] = old
    return mapping


def is_field_map(text: str) -> bool:
    try:
        parse_field_map(text)
    except ValueError:
        return False
    return True


def rename_fields(fields: dict, mapping: dict[str, str], path: str, line: int) -> dict:
    """The row with each NEW taken from OLD (all at once, so swaps work); OLD is
    gone, and a NEW the row already had is replaced."""
    if not mapping:
        return fields
    for new, old in mapping.items():
        if old not in fields:
            present = ", ".join(map(str, fields)) or "none"
            raise DataError(
                path,
                line,
                f"no field '{old}' for --field-map {new}={old} (fields: {present})"[
                    :300
                ],
            )
    olds = set(mapping.values())
    renamed = {k: v for k, v in fields.items() if k not in olds}
    renamed.update({new: fields[old] for new, old in mapping.items()})
    return renamed


def extract_implicit_prompt(chosen, rejected):
    """(prompt, chosen, rejected) of a pair whose prompt is inside both, as TRL's
    ``extract_prompt`` (``trl/data_utils.py``) splits it.

    The boundary is the first position (character, or message of a
    conversation) where the two differ; for text, when the character before
    it is a space the boundary moves back one, so the space starts the
    completions ("The sky is" + " blue." / " green."). When one is a prefix of
    the other, TRL's loop ends on the shorter one's last position, which
    becomes the completions' start: copied. Returns None where TRL would fail
    or give nonsense: nothing in common at the start, or an empty side.
    """
    n = min(len(chosen), len(rejected))
    if n == 0:
        return None
    idx = n - 1  # TRL's loop variable after a loop that found no difference
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i
            if i > 0 and chosen[i - 1] == " ":  # a message never equals " "
                idx -= 1
            break
    if idx <= 0:
        return None
    return chosen[:idx], chosen[idx:], rejected[idx:]


def implicit_prompt(fields: dict, path: str, line: int) -> dict:
    chosen, rejected = fields["chosen"], fields["rejected"]
    both_text = isinstance(chosen, str) and isinstance(rejected, str)
    both_chat = isinstance(chosen, list) and isinstance(rejected, list)
    if not (both_text or both_chat):
        raise DataError(
            path,
            line,
            "no 'prompt': 'chosen' and 'rejected' must both be strings or both "
            "lists of messages, to share their prompt, got "
            f"{type(chosen).__name__} and {type(rejected).__name__}",
        )
    split = extract_implicit_prompt(chosen, rejected)
    if split is None:
        raise DataError(
            path,
            line,
            "no 'prompt', and 'chosen' and 'rejected' do not start alike: "
            "nothing to take as their prompt",
        )
    prompt, chosen, rejected = split
    return {**fields, "prompt": prompt, "chosen": chosen, "rejected": rejected}


GSM8K_MARK = "####"


def question_answer(fields: dict) -> dict:
    """``question`` is the prompt; an ``answer`` with ``#### n`` -> ``n`` (the
    reward's ground truth) and its full text -> ``completion`` (SFT's target)."""
    shaped = {**fields, "prompt": fields["question"]}
    answer = fields.get("answer")
    if isinstance(answer, str) and "chosen" not in fields:
        shaped.setdefault("completion", answer)
        if GSM8K_MARK in answer:
            shaped["answer"] = answer.rsplit(GSM8K_MARK, 1)[1].strip()
    return shaped


PROMPT_ENDS = ("user", "tool")


def conversation_prompt(messages: list) -> list | None:
    """The turns of a conversation up to its last user (or tool) turn; None when
    it is not a list of role-tagged messages or has no such turn."""
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        return None
    ends = [i for i, m in enumerate(messages) if m["role"] in PROMPT_ENDS]
    return messages[: ends[-1] + 1] if ends else None


def shape_fields(fields: dict, path: str, line: int) -> dict:
    """Fill in ``prompt`` for the formats that have none (the module docstring)."""
    if "prompt" in fields:
        return fields
    paired = "chosen" in fields and "rejected" in fields
    if "question" in fields and ("answer" in fields or paired):
        return question_answer(fields)
    if paired:
        return implicit_prompt(fields, path, line)
    messages = fields.get("messages")
    if isinstance(messages, list) and (prompt := conversation_prompt(messages)):
        return {**fields, "prompt": prompt}
    return fields


def drop_nulls(value):
    """Keys whose value is null removed, at any depth: a parquet row holds every
    column of its file (null where a row has none) and a message struct every
    key of any message, where JSON would leave the key out."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def converter(field_map: str = "", nulls: bool = False) -> Convert:
    """What a row goes through before it is a Record: nulls dropped (parquet),
    ``--field-map`` applied, then ``shape_fields``."""
    mapping = parse_field_map(field_map)

    def convert(fields: dict, path: str, line: int) -> dict:
        fields = rename_fields(fields, mapping, path, line)
        if nulls:
            fields = drop_nulls(fields)
        return shape_fields(fields, path, line)

    return convert
