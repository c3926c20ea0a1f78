"""Multi-turn rollouts: trajectories that call tools, G per prompt, advanced together.

Each turn samples every live trajectory together (``sample_turn``, the
stage's batched sampler) until it stops at EOS, at the end of a tool call
(mlx-lm's ``tool_call_end`` marker, a stop token here) or at its token
budget. The calls are parsed and run (``sampling/tools.py``); their results
go back as ``tool`` turns through the chat template, and the live
trajectories sample again, up to ``max_turns`` model turns. Finished
trajectories wait without compute.

What a trajectory holds after its prompt is every token in order, the
model's and the template's glue and tool results, with a mask that is 1
exactly on the model's own tokens: the loss, the KL and the token counts
read only those.

The glue after a call is what the chat template adds when the conversation
grows by the model's turn and the tool messages: the template rendered
after the turn, less the text before it. Templates that render an
assistant turn verbatim (mlx-lm's tool templates do) give exactly the
model's text back; for one that does not, the glue starts where the two
renderings part.

A live trajectory continues from its keys and values (``RowHistory``):
the next turn feeds only what came after them, its last sampled token and
the tool turn, and samples on (``rollout.continue_rows``); nothing is
encoded twice. Where the sampler keeps no history (the eager decoder of
models with other caches), each turn prefills the trajectory again. The
model's tokens themselves are never re-tokenized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlx_align.sampling.rollout import Group
from mlx_align.sampling.slots import RowHistory
from mlx_align.sampling.tools import FAILURES, ToolBox

# (prompts, group_size, max_tokens) -> one Group per prompt, stopping at the
# stage's EOS tokens and at the tool-call end token.
SampleTurn = Callable[[list[list[int]], int, int], list[Group]]
# (histories, feeds, max_tokens) -> each row's new tokens and history.
ContinueTurn = Callable[
    [list[RowHistory], list[list[int]], int], tuple[list[list[int]], list[RowHistory]]
]


@dataclass
class Trajectory:
    """One sampled conversation after its prompt."""

    template: ToolTemplate  # its chat template, with its tools' schemas
    messages: list[dict]  # the conversation so far, as the template takes it
    rendered: str  # the template's text of it, up to the model's last token
    toolbox: ToolBox
    tokens: list[int] = field(default_factory=list)  # model and glue tokens
    mask: list[int] = field(default_factory=list)  # 1 on the model's own tokens
    turns: int = 0
    calls: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURES, 0))  # fmt: skip
    texts: list[str] = field(default_factory=list)  # each model turn's text
    done: bool = False
    opened: int = 0  # messages at the start: the prompt's (and a first observation)
    history: RowHistory | None = None  # keys and values of the prompt + tokens[:fed]
    fed: int = 0

    def __post_init__(self) -> None:
        self.opened = self.opened or len(self.messages)

    @property
    def final_text(self) -> str:
        """The model's last turn: what a reward reads as the answer."""
        return self.texts[-1] if self.texts else ""


@dataclass
class ToolTemplate:
    """The tokenizer's chat template and tool markers, and the schemas it renders."""

    tokenizer: Any  # mlx-lm's TokenizerWrapper
    schemas: list[dict]
    eos_ids: set[int]

    @property
    def end_id(self) -> int:
        (end,) = self.tokenizer.encode(self.tokenizer.tool_call_end, add_special_tokens=False)  # fmt: skip
        return end

    def render(self, messages: list[dict], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=self.schemas or None,
            tokenize=False,
            add_generation_prompt=generation,  # fmt: skip
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def call_text(self, text: str) -> str:
        """The text between the last call markers of a model turn."""
        start, end = self.tokenizer.tool_call_start, self.tokenizer.tool_call_end
        body = text.rsplit(end, 1)[0]
        return body.rsplit(start, 1)[1] if start in body else body


def glue(before: str, after: str) -> str:
    """What ``after`` adds to ``before``: from where the two part."""
    if after.startswith(before):
        return after[len(before) :]
    common = 0
    for a, b in zip(before, after, strict=False):
        if a != b:
            break
        common += 1
    return after[common:]


def prompt_tokens(template: ToolTemplate, messages: list[dict], environment: bool) -> list[int]:  # fmt: skip
    """The prompt's tokens, with the tool schemas: up to the generation prompt, or
    with an environment up to the user's turn (``start`` opens each trajectory)."""
    return template.encode(template.render(messages, generation=not environment))


def start(template: ToolTemplate, messages: list[dict], toolbox: ToolBox, row: dict) -> Trajectory:  # fmt: skip
    """A trajectory at its start. With an environment, ``reset(**row)`` runs; its
    first observation, if any, is a user turn, whose tokens and the generation
    prompt open the trajectory, masked."""
    if toolbox.environment is None:
        return Trajectory(template, list(messages), template.render(messages, generation=True), toolbox)  # fmt: skip
    observation = toolbox.environment.reset(**row)
    base = template.render(messages, generation=False)
    if observation is not None:
        messages = [*messages, {"role": "user", "content": str(observation)}]
    rendered = template.render(messages, generation=True)
    opening = template.encode(glue(base, rendered))
    opened = len(messages) - (observation is not None)  # the observation is a turn
    return Trajectory(template, list(messages), rendered, toolbox, opening, [0] * len(opening), opened=opened)  # fmt: skip


def advance(trajectory: Trajectory, new: list[int], budget: int, max_turns: int) -> None:  # fmt: skip
    """Take one model turn's tokens; run its tool calls and append their glue,
    or finish the trajectory (EOS, the budget, or the last turn)."""
    template = trajectory.template
    trajectory.fed = len(trajectory.tokens) + len(new) - 1  # the history's end
    new = new[: max(budget - len(trajectory.tokens), 0)]
    text = template.tokenizer.decode([t for t in new if t not in template.eos_ids])
    trajectory.tokens += new
    trajectory.mask += [1] * len(new)
    trajectory.turns += 1
    trajectory.texts.append(text)
    called = bool(new) and new[-1] == template.end_id
    if not called or trajectory.turns >= max_turns:
        trajectory.done = True
        return
    results = trajectory.toolbox.run(
        template.call_text(text), template.tokenizer.tool_parser, template.schemas
    )
    trajectory.calls += len(results)
    for result in results:
        if result.failure:
            trajectory.failures[result.failure] += 1
    tool_turns = [{"role": "tool", "name": r.name, "content": r.content} for r in results]  # fmt: skip
    messages = [*trajectory.messages, {"role": "assistant", "content": text}, *tool_turns]  # fmt: skip
    rendered = template.render(messages, generation=True)
    added = template.encode(glue(trajectory.rendered + text, rendered))
    if len(trajectory.tokens) + len(added) >= budget:  # no room to answer
        trajectory.done = True
        return
    trajectory.tokens += added
    trajectory.mask += [0] * len(added)
    trajectory.messages, trajectory.rendered = messages, rendered


def converse(
    sample_turn: SampleTurn,
    prompts: Sequence[list[int]],
    trajectories: list[Trajectory],
    group_size: int,
    budget: int,
    max_turns: int,
    continue_turn: ContinueTurn | None = None,
) -> list[Trajectory]:
    """Advance ``trajectories`` (``group_size`` per prompt, in order) turn by turn
    until each is done; the first turn shares each prompt's prefill where its
    trajectories open alike, later turns continue from each trajectory's
    history (``continue_turn``) where the sampler kept one."""
    groups = [trajectories[i : i + group_size] for i in range(0, len(trajectories), group_size)]  # fmt: skip
    alike = all(len({tuple(t.tokens) for t in g}) == 1 for g in groups)
    if alike:
        firsts = sample_turn([p + g[0].tokens for p, g in zip(prompts, groups, strict=True)], group_size, budget)  # fmt: skip
        for g, sampled in zip(groups, firsts, strict=True):
            kept = sampled.histories or [None] * group_size
            for t, completion, history in zip(g, sampled.completions, kept, strict=True):  # fmt: skip
                t.history = history
                advance(t, completion, budget, max_turns)
    prompt_of = {id(t): p for p, g in zip(prompts, groups, strict=True) for t in g}
    while live := [t for t in trajectories if not t.done]:
        if continue_turn and all(t.history is not None for t in live):
            feeds = [t.tokens[t.fed :] for t in live]
            new, histories = continue_turn([t.history for t in live], feeds, budget)
        else:
            sampled = sample_turn([prompt_of[id(t)] + t.tokens for t in live], 1, budget)  # fmt: skip
            new = [g.completions[0] for g in sampled]
            histories = [(g.histories or [None])[0] for g in sampled]
        for t, tokens, history in zip(live, new, histories, strict=True):
            t.history = history
            advance(t, tokens, budget, max_turns)
    for t in trajectories:
        t.history = None  # the keys and values are the sampler's memory, not the result
    return trajectories


def conversation_stats(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Per trajectory: tool calls, failed calls by kind, model turns, and the
    tokens the model generated against the tool and template tokens."""
    n = max(len(trajectories), 1)
    generated = sum(sum(t.mask) for t in trajectories)
    glued = sum(len(t.mask) - sum(t.mask) for t in trajectories)
    stats = {
        "tools/calls": sum(t.calls for t in trajectories) / n,
        "tools/failures": sum(sum(t.failures.values()) for t in trajectories) / n,
        "tools/turns": sum(t.turns for t in trajectories) / n,
        "tools/generated_tokens": generated / n,
        "tools/tool_tokens": glued / n,
    }
    for kind in FAILURES:
        stats[f"tools/failures_{kind}"] = (
            sum(t.failures[kind] for t in trajectories) / n
        )
    return stats
