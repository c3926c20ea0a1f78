"""``--tool`` / ``--environment`` for GRPO: prompts with the tools' schemas, and
groups whose completions are conversations (``sampling/conversations.py``).

A group's completions are then every token after the prompt, the model's
and the tool turns', with ``Group.masks`` 1 on the model's own tokens; the
rollout batch takes the rest out of the loss, the KL and the token counts
(``grpo_rollouts.masked_turns``). Rewards read each trajectory's last model
turn as its completion, and with an environment get the trajectories'
environments as ``environments=``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from mlx_align.config.online import ToolSettings
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import require_prompt
from mlx_align.sampling.conversations import (
    ContinueTurn,
    SampleTurn,
    ToolTemplate,
    Trajectory,
    conversation_stats,
    converse,
    prompt_tokens,
    start,
)
from mlx_align.sampling.rollout import Group
from mlx_align.sampling.tools import ToolBox, load_environment_factory, load_tools

TOOL_STATS = tuple(conversation_stats([]))


def uses_tools(config) -> bool:
    return bool(getattr(config, "tool", ()) or getattr(config, "environment", ""))


def prompt_messages(record: Record) -> list[dict]:
    prompt = require_prompt(record)
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def schema_names(schemas: list[dict]) -> list[str]:
    """The function names of JSON schemas (``{"type": "function", "function": {...}}``
    as ``get_json_schema`` writes them, or the function object alone)."""
    return [str(s.get("function", s).get("name")) for s in schemas]


def row_template(record: Record, template: ToolTemplate, known: dict) -> ToolTemplate:
    """The template with the record's own ``tools`` column (TRL's tool-calling
    format: a list of JSON schemas, or their JSON text), or ``template``."""
    tools = record.fields.get("tools")
    if tools is None:
        return template
    try:
        tools = json.loads(tools) if isinstance(tools, str) else tools
        if not isinstance(tools, list):
            raise ValueError("not a list")
        schemas = [json.loads(t) if isinstance(t, str) else t for t in tools]
        if not all(isinstance(t, dict) for t in schemas):
            raise ValueError("not a list of JSON schemas")
    except ValueError as error:
        raise DataError(record.path, record.line, f"field 'tools': {error}") from None
    unknown = [n for n in schema_names(schemas) if n not in known]
    if unknown:
        raise DataError(record.path, record.line, f"field 'tools' names {unknown[0]!r}, which no --tool or --environment method provides")  # fmt: skip
    return replace(template, schemas=schemas)


class ToolUse:
    """The tools, the template that shows them, and each record's prompt tokens."""

    def __init__(
        self, config: ToolSettings, tokenizer, records: Sequence[Record], room: int
    ):
        self.config = config
        self.functions = load_tools(config.tool)
        self.factory = load_environment_factory(config.environment) if config.environment else None  # fmt: skip
        if not tokenizer.has_tool_calling:
            raise UserError(
                "--tool",
                "the model's chat template has no tool-call markers mlx-lm knows "
                "(mlx_lm.tool_parsers; init-model --chat-template chatml-tools has them)",
            )
        if len(tokenizer.encode(tokenizer.tool_call_end, add_special_tokens=False)) != 1:  # fmt: skip
            raise UserError("--tool", f"the tool-call end {tokenizer.tool_call_end!r} is not one token; it must stop the sampler")  # fmt: skip
        sample = self.toolbox()
        self.template = ToolTemplate(tokenizer, sample.schemas, set(tokenizer.eos_token_ids))  # fmt: skip
        self.messages = [prompt_messages(r) for r in records]
        self.templates = [row_template(r, self.template, sample.tools) for r in records]  # fmt: skip
        self.prompts = []
        for record, messages, template in zip(records, self.messages, self.templates, strict=True):  # fmt: skip
            tokens = prompt_tokens(template, messages, self.factory is not None)
            if len(tokens) > room:
                raise DataError(
                    record.path,
                    record.line,
                    f"the prompt with the tools' schemas is {len(tokens)} tokens, over the "
                    f"{room} --max-length leaves beside --max-completion-tokens",
                )
            self.prompts.append(tokens)

    def toolbox(self, template: ToolTemplate | None = None) -> ToolBox:
        """A trajectory's tools (those its template shows), with an environment of its own."""
        box = ToolBox(self.functions, self.factory() if self.factory else None)
        if template is not None and template is not self.template:
            box.tools = {n: box.tools[n] for n in schema_names(template.schemas)}
        return box

    @property
    def stop_id(self) -> int:
        return self.template.end_id

    def roll_out(
        self,
        sample_turn: SampleTurn,
        indices: Sequence[int],
        records: Sequence[Record],
        group_size: int,
        budget: int,
        continue_turn: ContinueTurn | None = None,
    ) -> tuple[list[Group], list[Trajectory]]:
        """``group_size`` conversations for each record ``indices``: the groups
        (completions = every token after the prompt, with masks) and trajectories."""
        trajectories = [
            start(
                self.templates[i],
                self.messages[i],
                self.toolbox(self.templates[i]),
                dict(record.fields),
            )  # fmt: skip
            for i, record in zip(indices, records, strict=True)
            for _ in range(group_size)
        ]
        prompts = [self.prompts[i] for i in indices]
        converse(sample_turn, prompts, trajectories, group_size, budget, self.config.max_turns, continue_turn)  # fmt: skip
        groups = []
        for j, prompt in enumerate(prompts):
            own = trajectories[j * group_size : (j + 1) * group_size]
            groups.append(Group(prompt, [t.tokens for t in own], [t.mask for t in own]))
        return groups, trajectories


def sample_rows(trajectories: Sequence[Trajectory]) -> list[list[dict]]:
    """Each trajectory after its prompt as turns, as ``samples.jsonl`` shows it:
    the model's and the tools', then its last model turn (nothing followed it)."""
    return [
        [*t.messages[t.opened :], {"role": "assistant", "content": t.final_text}]
        for t in trajectories
    ]
