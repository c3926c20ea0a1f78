"""Tools and an environment for the multi-turn tests (importable as
``tool_helpers:...`` by runs in other processes), and a tiny model that calls them."""

import json
from pathlib import Path

REVEAL = '<tool_call>{"name": "reveal", "arguments": {}}</tool_call>'


class Box:
    """An environment whose reward needs its tool: the box opens only by reveal()."""

    def reset(self, secret: str = "0", **row) -> None:
        self.secret, self.opened = secret, False

    def reveal(self) -> str:
        """Open the box and read the number inside."""
        self.opened = True
        return self.secret


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def make_box() -> Box:
    return Box()


def opened(prompts, completions, environments, **columns) -> list[float]:
    return [1.0 if e.opened else 0.0 for e in environments]


REVEAL = '<tool_call>{"name": "reveal", "arguments": {}}</tool_call>'


def build_box_model(root: Path) -> Path:
    """A tiny ``chatml-tools`` model after 150 steps of SFT on demonstrations half
    of which call reveal() (its prompts show the tool as GRPO's do), fused."""
    from conftest import write_jsonl

    from mlx_align.config.stages import SFTConfig
    from mlx_align.model.fuse import fuse_adapters
    from mlx_align.model.tiny import PRESETS, init_model
    from mlx_align.sampling.tools import tool_schema
    from mlx_align.stages.sft import run_sft

    schema = tool_schema(Box().reveal)
    system = (  # the tools block as chatml-tools renders it, so SFT prompts are GRPO's
        f"Tools:\n<tools>\n{json.dumps(schema)}\n</tools>\n"
        'Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
    )
    texts = [f"Open box {i}. {REVEAL} I will not." for i in range(50)] + [system] * 5
    base = init_model(root / "base", PRESETS["tiny"], texts * 10, seed=0, chat_template="chatml-tools")  # fmt: skip
    demos = [
        {"messages": [
            {"role": "system", "content": system}, {"role": "user", "content": f"Open box {i}."},
            {"role": "assistant", "content": REVEAL if i % 2 else "I will not."},
        ]}
        for i in range(40)
    ]  # fmt: skip
    write_jsonl(root / "sft" / "train.jsonl", demos)
    run_sft(SFTConfig(
        model=str(base), data=str(root / "sft"), out=str(root / "sft_run"),
        steps=150, batch_size=8, learning_rate=3e-3, lora_rank=8, max_length=256,
        eval_every=0, save_every=0, log_every=50,
    ))  # fmt: skip
    return Path(fuse_adapters(str(base), str(root / "sft_run"), str(root / "start"), False))  # fmt: skip


def write_box_data(root: Path) -> Path:
    """Box prompts: 40 to train on, 16 held out, each with its secret."""
    from conftest import write_jsonl

    def rows(ids: range) -> list[dict]:
        return [{"prompt": f"Open box {i}.", "secret": str(i % 10)} for i in ids]

    write_jsonl(root / "train.jsonl", rows(range(40)))
    write_jsonl(root / "valid.jsonl", rows(range(100, 116)))
    return root
