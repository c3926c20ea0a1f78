"""An LLM as pairwise judge (RLAIF): a language model reads both completions and names the better one.

The prompt is TRL's ``DEFAULT_PAIRWISE_SYSTEM_PROMPT`` (mlx-lm-lora's
``LLMPairwiseJudge`` uses the same text), sent as one user message through
the judge's chat template. That prompt says only the first character of the
answer counts, so the judge reads exactly that: the log-probs of "0" and "1"
as the first answer token, in one forward pass, instead of generating text
and parsing it. It never answers off-format, and the log-odds come free.

Speed, where TRL and mlx-lm-lora generate up to 16 tokens per pair, one pair
after another:

- the pairs of a call run as ONE right-padded batch (a causal model's logits
  at real positions never see the padding to their right);
- the token prefix every judge text shares (the chat template's start and
  the prompt's first paragraph) runs once per judge and stays cached: its
  keys and values are reused, broadcast over the batch, by every later call;
- for mlx-lm's llama family, the top block runs at the answer position
  alone (below it every token is needed; in it only the keys and values of
  the others), and logits are formed there only: a 4-block judge call takes
  ~35% less time on the CPU;
- on the CPU backend the rows are shared out over one stream per core, with
  OpenBLAS on one thread meanwhile: MLX's CPU kernels other than BLAS (the
  attention's ``exp`` above all) run on their stream's one thread, so one
  stream leaves the other cores idle (another ~35% on 2 cores).

The two completions are shown in a seeded random order per pair (TRL's
``shuffle_order``), so a judge that favours a position does not favour one
sample slot. The order is a seeded hash of the prompt and the two texts
(not of their slots), so the same pair is shown alike in any call, on any
rank and after a resume, and swapping a pair's slots swaps the verdict.
Two identical completions are a tie, not judged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, make_prompt_cache

from mlx_align.core.blas import blas_threads
from mlx_align.core.errors import UserError
from mlx_align.data.jsonl import Record
from mlx_align.model.caches import all_plain_kv
from mlx_align.model.logprobs import output_layer
from mlx_align.sampling.judge_forward import (
    Share,
    answer_hidden,
    answer_logits,
    splits_top_layer,
)
from mlx_align.sampling.verdicts import Verdicts

# TRL's trl/trainer/judges.py DEFAULT_PAIRWISE_SYSTEM_PROMPT, word for word.
PAIRWISE_PROMPT = '''I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": """{prompt}""",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "0",
        "output": """{response0}"""
    }},
    {{
        "model_identifier": "1",
        "output": """{response1}"""
    }}
}}

## Task

Evaluate the models on the basis of the quality and relevance of their results, and select the model that generated the best result. Reply with the identifier of the best model. Our evaluation will only take into account the first character of your answer, so make sure it contains only one of the identifiers and nothing else (no quotation marks, no spaces, no new lines, ...).
'''
# On the CPU backend, the most streams a call's rows are shared out over:
# the cores this process may run on.
CPU_STREAMS = (
    len(os.sched_getaffinity(0))
    if hasattr(os, "sched_getaffinity")
    else os.cpu_count() or 1
)
PLACES = ("{prompt}", "{response0}", "{response1}")


def read_prompt_template(path: str) -> str:
    """A judge prompt file: text with {prompt}, {response0} and {response1} (braces doubled elsewhere)."""
    if not path:
        return PAIRWISE_PROMPT
    try:
        template = Path(path).read_text()
    except OSError as error:
        raise UserError(
            f"--judge-prompt {path}", error.strerror or str(error)
        ) from None
    missing = [p for p in PLACES if p not in template]
    if missing:
        raise UserError(f"--judge-prompt {path}", f"lacks {', '.join(missing)}")
    return template


def answer_token(tokenizer, digit: str) -> int:
    """The one token id of an answer digit ("0" or "1")."""
    ids = tokenizer.encode(digit, add_special_tokens=False)
    if len(ids) != 1:
        raise UserError("--judge-model", f'its tokenizer splits "{digit}" into {ids}')
    return ids[0]


class LLMPairwiseJudge:
    """Judge: which of two completions a language model names as better.

    ``model`` is frozen while it judges (e.g. the start: the policy's base
    with the adapters off, sharing its arrays). Returns no scores; ties only
    when the two answer log-probs are equal.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: str = PAIRWISE_PROMPT,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.answers = [answer_token(tokenizer, d) for d in "01"]
        self.seed, self.shuffle = seed, shuffle
        self.prefix: list[int] = []  # the cached token prefix ...
        self.prefix_cache: list | None = (
            None  # ... its keys/values per layer (None: not yet)
        )
        self.streams: list = []  # CPU streams, made on first need

    def __call__(self, records: Sequence[Record], pairs) -> Verdicts:
        judged = [i for i, (a, b) in enumerate(pairs) if a != b]
        flips = [self.flipped(records[i].fields["prompt"], pairs[i]) for i in judged]
        texts = [
            self.render(records[i].fields["prompt"], pairs[i][::-1] if f else pairs[i])
            for i, f in zip(judged, flips, strict=True)
        ]
        rows = [self.encode(t) for t in texts]
        margins = self.answer_margins(rows).tolist() if rows else []
        verdicts = verdicts_from(margins, flips)
        preferred: list[int | None] = [None] * len(pairs)  # identical texts: a tie
        for i, p in zip(judged, verdicts.preferred, strict=True):
            preferred[i] = p
        return Verdicts(preferred, None)

    def flipped(self, prompt: str | list, pair: Sequence[str]) -> bool:
        """Whether the pair is shown second completion first: a seeded hash of the
        prompt and the two texts in sorted order, so either slot order shows alike."""
        if not self.shuffle:
            return False
        low, high = sorted(pair)
        key = json.dumps([self.seed, prompt, low, high]).encode()
        heads = hashlib.blake2b(key, digest_size=1).digest()[0] & 1
        return pair[0] != (low if heads else high)

    def render(self, prompt: str | list, pair: Sequence[str]) -> str:
        """The judge's chat text for one pair (the prompt rendered as the policy saw it)."""
        if not isinstance(prompt, str):
            prompt = self.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=False
            )
        content = self.template.format(
            prompt=prompt, response0=pair[0], response1=pair[1]
        )
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=False,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids as ``mlx_lm.generate`` encodes a prompt (BOS unless the text has it)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add = bos is None or not text.startswith(bos)
        return self.tokenizer.encode(text, add_special_tokens=add)

    def answer_margins(self, rows: list[list[int]]) -> mx.array:
        """log p("1") - log p("0") as the first answer token, per row: one batched pass.

        The rows' own tokens run a chunk at a time through the cache
        (``judge_forward.py``), so a chunk attends only to the keys before it
        (a causal mask computes, and on the CPU exponentiates, every score of
        a square block, half of them masked).
        On the CPU the rows are shared out over one stream per core, OpenBLAS
        on one thread meanwhile: MLX's CPU kernels other than BLAS (the
        attention's ``exp`` above all) run on their stream's thread alone.
        """
        shared = self.shared_prefix(rows)
        shares = [
            self.share(part, shared, stream)
            for part, stream in zip(*self.shared_out(rows), strict=True)
        ]
        blas = blas_threads(1) if len(shares) > 1 else nullcontext()
        with blas:
            if splits_top_layer(self.model, shares[0].cache):
                hidden = answer_hidden(self.model.model, shares)
                logits = output_layer(self.model)[1](hidden)
            else:
                logits = answer_logits(self.model, shares)
            logps = logits.astype(mx.float32)
            logps = logps - mx.logsumexp(logps, axis=-1, keepdims=True)
            margin = logps[:, self.answers[1]] - logps[:, self.answers[0]]
            mx.eval(margin)
        return margin

    def shared_out(self, rows: list[list[int]]) -> tuple[list, list]:
        """The rows in contiguous parts, and a stream for each: one part on the
        default stream, or on the CPU up to ``CPU_STREAMS`` parts."""
        device = mx.default_device()
        if device != mx.cpu or CPU_STREAMS < 2 or len(rows) < 2:
            return [rows], [mx.default_stream(device)]
        n = min(CPU_STREAMS, len(rows))
        while len(self.streams) < n:  # made once: each CPU stream is a thread
            self.streams.append(mx.new_stream(mx.cpu))
        bounds = [len(rows) * i // n for i in range(n + 1)]
        parts = [rows[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        return parts, self.streams[:n]

    def share(self, rows: list[list[int]], shared: int, stream) -> Share:
        """Some rows past the ``shared`` prefix, right-padded, with their caches."""
        suffixes = [r[shared:] for r in rows]
        width = max(map(len, suffixes))
        tokens = mx.array([s + [0] * (width - len(s)) for s in suffixes])
        last = mx.array([len(s) - 1 for s in suffixes])
        return Share(tokens, last, self.batch_cache(shared, len(rows)), stream)

    def shared_prefix(self, rows: list[list[int]]) -> int:
        """How many leading tokens every row shares with the cached prefix (caching it the first time).

        At least one token of each row is left to run with the batch.
        """
        if self.prefix_cache is None:
            self.prefix = common_prefix(rows)[: min(map(len, rows)) - 1]
            self.prefix_cache = self.run_prefix(self.prefix)
            if not self.prefix_cache:  # this model's cache can't be shared
                self.prefix = []
        shared = common_prefix([self.prefix, *rows])
        return min(len(shared), min(map(len, rows)) - 1)

    def run_prefix(self, prefix: list[int]) -> list:
        """Each layer's keys and values for the prefix (none: this model's cache can't be shared)."""
        cache = make_prompt_cache(self.model)
        if not prefix or not all_plain_kv(cache):
            return []  # sliding windows, recurrent state: no shared prefix
        self.model(mx.array(prefix)[None], cache=cache)
        kept = [
            (c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache
        ]
        mx.eval(kept)
        return kept

    def batch_cache(self, shared: int, batch: int) -> list:
        """Fresh per-layer caches holding the first ``shared`` prefix tokens, for each row."""
        if shared == 0:
            return make_prompt_cache(self.model)
        caches = []
        for keys, values in self.prefix_cache:
            cache = KVCache()
            shape = (batch, *keys.shape[1:2], shared, keys.shape[-1])
            cache.keys = mx.broadcast_to(keys[..., :shared, :], shape)
            cache.values = mx.broadcast_to(
                values[..., :shared, :], (*shape[:-1], values.shape[-1])
            )
            cache.offset = shared
            caches.append(cache)
        return caches


def verdicts_from(margins: Sequence[float], flips: Sequence[bool]) -> Verdicts:
    """Per pair: "1" wins in the shown order when its log-prob is higher; a flip swaps back."""
    shown = [None if m == 0 else int(m > 0) for m in margins]
    preferred = [None if s is None else s ^ int(f) for s, f in zip(shown, flips, strict=True)]  # fmt: skip
    return Verdicts(preferred, None)


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest list of leading ids every row starts with."""
    first = list(rows[0])
    n = len(first)
    for row in rows[1:]:
        n = min(n, len(row))
        for i in range(n):
            if row[i] != first[i]:
                n = i
                break
    return first[:n]
