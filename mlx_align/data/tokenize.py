"""Turning records into token ids plus the index where the trained completion starts.

Conventions follow TRL 1.16 so the same weights and data give the same
log-probs in both: EOS is appended to a plain-text completion (never doubled)
and scored; no BOS beyond what the tokenizer adds; prompt and completion are
joined with no separator; the completion starts where the tokenised prompt
stops being a prefix of the tokenised prompt+completion. Chat data goes
through the model's chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlx_align.core.errors import DataError
from mlx_align.data.chat import (  # require_messages: also imported from here
    check_conversation,
    check_prompt,
    labelled,
    require_messages,
)
from mlx_align.data.jsonl import Record, require_text


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


def render_chat(
    tokenizer, messages: list[dict], record: Record | None, **kwargs
) -> str:
    """The model's chat template applied to ``messages``; a template that fails
    on the data (or a model without one) is a DataError at the record's line."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as e:  # jinja2's TemplateError, transformers' ValueError, ...
        if record is None:
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            record.path, record.line, f"the chat template failed: {message}"
        ) from None


def record_tools(record: Record | None) -> list[dict] | None:
    """A record's ``tools`` column (TRL's: JSON schemas, or their JSON text), which
    the chat template shows; None without one."""
    tools = record.fields.get("tools") if record is not None else None
    if tools is None:
        return None
    try:
        tools = json.loads(tools) if isinstance(tools, str) else tools
        schemas = [json.loads(t) if isinstance(t, str) else t for t in tools]
        if not all(isinstance(t, dict) for t in schemas):
            raise ValueError("not a list of JSON schemas")
    except (TypeError, ValueError) as error:
        raise DataError(record.path, record.line, f"field 'tools': {error}") from None
    return schemas


def encode_chat(
    tokenizer,
    prompt_messages: list[dict],
    completion_messages: list[dict],
    record: Record | None = None,
) -> Encoded:
    """Chat data through the model's template, with the record's ``tools``; the
    completion is the final turn(s)."""
    tools = record_tools(record)
    prompt_text = render_chat(
        tokenizer, prompt_messages, record, add_generation_prompt=True, tools=tools
    )
    full_text = render_chat(
        tokenizer, prompt_messages + completion_messages, record, tools=tools
    )
    prompt_ids = list(tokenizer.encode(prompt_text, add_special_tokens=False))
    full = list(tokenizer.encode(full_text, add_special_tokens=False))
    return Encoded(full, common_prefix_length(prompt_ids, full))


def encode_conversation(
    tokenizer, record: Record, prompt_key: str, key: str
) -> Encoded:
    """``record[prompt_key]`` messages + ``record[key]`` (messages, or a string:
    one assistant reply), checked as a conversation (``chat.py``) and encoded."""
    prompt = require_messages(record, prompt_key)
    if isinstance(record.fields.get(key), str):
        completion = [{"role": "assistant", "content": require_text(record, key)}]
    else:
        completion = require_messages(record, key)
    check_conversation(record, labelled(prompt_key, prompt), labelled(key, completion))
    return encode_chat(tokenizer, prompt, completion, record)


def is_chat_field(record: Record, key: str) -> bool:
    return isinstance(record.fields.get(key), list)


def encode_sft_record(tokenizer, record: Record) -> Encoded:
    """SFT accepts ``text``, ``prompt`` + ``completion`` (strings or messages), or ``messages``."""
    fields = record.fields
    if "messages" in fields:
        messages = require_messages(record, "messages")
        last = len(messages) - 1
        if messages[last]["role"] != "assistant":
            raise DataError(
                record.path,
                record.line,
                f"messages[{last}]: the last message must be the assistant's, "
                f"got {messages[last]['role']!r}",
            )
        check_conversation(
            record,
            labelled("messages", messages[:last]),
            labelled("messages", messages[last:], first=last),
        )
        return encode_chat(tokenizer, messages[:last], messages[last:], record)
    if "prompt" in fields or "completion" in fields:
        if is_chat_field(record, "prompt") or is_chat_field(record, "completion"):
            return encode_conversation(tokenizer, record, "prompt", "completion")
        return encode_prompt_completion(
            tokenizer,
            require_text(record, "prompt"),
            require_text(record, "completion"),
        )
    if "text" in fields:
        return encode_text(tokenizer, require_text(record, "text"))
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


def require_prompt(record: Record) -> str | list[dict]:
    """A prompt to generate from: a non-empty string, or chat messages ending
    with the user's (or a tool's) turn; anything else is a DataError."""
    if is_chat_field(record, "prompt"):
        messages = require_messages(record, "prompt")
        check_prompt(record, labelled("prompt", messages))
        return messages
    if "prompt" in record.fields and not isinstance(record.fields["prompt"], str):
        kind = type(record.fields["prompt"]).__name__
        raise DataError(
            record.path,
            record.line,
            f"field 'prompt' must be a string or a list of messages, got {kind}",
        )
    return require_text(record, "prompt")


def encode_prompt(tokenizer, record: Record) -> list[int]:
    """A ``prompt`` string as is, or chat messages through the template with the
    generation prompt (``require_prompt`` checks it)."""
    prompt = require_prompt(record)
    if isinstance(prompt, str):
        return encode_plain(tokenizer, prompt)
    text = render_chat(tokenizer, prompt, record, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))
