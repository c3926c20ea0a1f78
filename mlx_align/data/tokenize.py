"""Turning records into token ids plus the index where the trained completion starts.

Conventions follow TRL 1.16 so the same weights and data give the same
log-probs in both: EOS is appended to a plain-text completion (never doubled)
and scored; no BOS beyond what the tokenizer adds; prompt and completion are
joined with no separator; the completion starts where the tokenised prompt
stops being a prefix of the tokenised prompt+completion. Chat data goes
through the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError
from .jsonl import Record, require_str


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example; ``tokens[completion_start:]`` are the trained targets."""

    tokens: list[int]
    completion_start: int

    @property
    def n_completion(self) -> int:
        return len(self.tokens) - max(self.completion_start, 1)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pad_id_of(tokenizer) -> int:
    """The padding id of every batch: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def encode_plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=True))


def with_eos(tokenizer, tokens: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return tokens if tokens and tokens[-1] == eos else [*tokens, eos]


def encode_text(tokenizer, text: str) -> Encoded:
    """Language-model data: every token after the first is a target."""
    return Encoded(with_eos(tokenizer, encode_plain(tokenizer, text)), 0)


def encode_prompt_completion(tokenizer, prompt: str, completion: str) -> Encoded:
    """Plain strings joined with no separator; EOS appended to the completion."""
    prompt_ids = encode_plain(tokenizer, prompt)
    full = with_eos(tokenizer, encode_plain(tokenizer, prompt + completion))
    return Encoded(full, common_prefix_length(prompt_ids, full))


def encode_chat(
    tokenizer, prompt_messages: list[dict], completion_messages: list[dict]
) -> Encoded:
    """Chat data through the model's template; the completion is the final turn(s)."""
    template = tokenizer.apply_chat_template
    prompt_text = template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full_text = template(prompt_messages + completion_messages, tokenize=False)
    prompt_ids = list(tokenizer.encode(prompt_text, add_special_tokens=False))
    full = list(tokenizer.encode(full_text, add_special_tokens=False))
    return Encoded(full, common_prefix_length(prompt_ids, full))


def require_messages(record: Record, key: str) -> list[dict]:
    """A list of ``{"role": str, "content": str}`` messages, checked line by line."""
    value = record.fields.get(key)
    if value is None:
        raise DataError(record.path, record.line, f"missing field '{key}'")
    if not isinstance(value, list) or not value:
        raise DataError(
            record.path,
            record.line,
            f"field '{key}' must be a non-empty list of messages",
        )
    for i, message in enumerate(value):
        ok = isinstance(message, dict) and all(
            isinstance(message.get(k), str) for k in ("role", "content")
        )
        if not ok:
            raise DataError(
                record.path,
                record.line,
                f"{key}[{i}] must have string 'role' and 'content'",
            )
    return value


def is_chat_field(record: Record, key: str) -> bool:
    return isinstance(record.fields.get(key), list)


def encode_sft_record(tokenizer, record: Record) -> Encoded:
    """SFT accepts ``text``, ``prompt`` + ``completion`` (strings or messages), or ``messages``."""
    fields = record.fields
    if "messages" in fields:
        messages = require_messages(record, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(
                record.path, record.line, "the last message must be the assistant's"
            )
        return encode_chat(tokenizer, messages[:-1], messages[-1:])
    if "prompt" in fields or "completion" in fields:
        if is_chat_field(record, "prompt") or is_chat_field(record, "completion"):
            prompt = require_messages(record, "prompt")
            return encode_chat(
                tokenizer, prompt, require_messages(record, "completion")
            )
        return encode_prompt_completion(
            tokenizer, require_str(record, "prompt"), require_str(record, "completion")
        )
    if "text" in fields:
        return encode_text(tokenizer, require_str(record, "text"))
    raise DataError(
        record.path,
        record.line,
        "expected 'text', 'prompt' + 'completion', or 'messages'",
    )


def truncate(example: Encoded, max_length: int) -> Encoded | None:
    """Fit an example into ``max_length`` tokens.

    Policy: drop prompt tokens from the left first (the completion is what is
    trained), then completion tokens from the right. An example left with no
    trained token returns None, and the caller counts it.
    """
    tokens, start = example.tokens, example.completion_start
    excess = len(tokens) - max_length
    if excess <= 0:
        return example
    from_prompt = min(excess, max(start - 1, 0))  # keep one prompt token as context
    tokens, start = tokens[from_prompt:], start - from_prompt
    tokens = tokens[:max_length]
    result = Encoded(tokens, start)
    return result if result.n_completion > 0 else None


def encode_prompt(tokenizer, record: Record) -> list[int]:
    """A ``prompt`` string as is, or chat messages through the template with the generation prompt."""
    if is_chat_field(record, "prompt"):
        messages = require_messages(record, "prompt")
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer.encode(text, add_special_tokens=False))
    prompt = record.fields.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(
            record.path,
            record.line,
            "field 'prompt' must be a string or a list of messages",
        )
    return encode_plain(tokenizer, prompt)
