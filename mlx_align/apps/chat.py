"""``mlx-align chat``: chat with a model in the browser; ratings and edits become DPO/KTO data.

The server is mlx-lm's own (``chat_server.py``); the page is ``chat_page.py``;
the judgements are written by ``feedback.py``. This module is the command:
it checks the flags before anything loads, then serves until Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import signal
from pathlib import Path

import click

from mlx_align.core.errors import UserError

EPILOG = (
    "Examples:\n\n"
    "  mlx-align chat --model runs/capstone/sft-fused --feedback feedback/\n\n"
    "  mlx-align chat --model models/base --adapter-path runs/sft --feedback fb --port 8081\n\n"
    "  mlx-align dpo --model runs/capstone/sft-fused --data feedback/dpo.jsonl --out runs/chat-dpo\n\n"
    "Open http://127.0.0.1:8080/ . Each 👍 / 👎 is a row of FEEDBACK/kto.jsonl "
    "(prompt, completion, label); each edit, and each pick between an answer and "
    "'another', a pair in FEEDBACK/dpo.jsonl (prompt, chosen, rejected), in TRL's "
    "conversational format. The OpenAI API (/v1/chat/completions) and a JSON API "
    "(POST /api/feedback, GET /api/stats) serve scripts too; see the README."
)


def check_model_dir(model: str, adapter_path: str | None) -> None:
    """A local mlx-lm model directory (nothing is downloaded) and, if given,
    an adapters directory with its config."""
    if not (Path(model) / "config.json").is_file():
        raise UserError(
            "--model", f"no mlx-lm model directory at {model} (no config.json)"
        )
    if adapter_path and not (Path(adapter_path) / "adapter_config.json").is_file():
        raise UserError("--adapter-path", f"no adapter_config.json in {adapter_path}")


def check_host(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UserError(
                "--host", f"{host!r} is not an IP address or localhost"
            ) from None
        return
    if not address.is_loopback:
        click.echo(
            f"mlx-align chat: serving on {host}: other machines can reach the page "
            "and the API (no authentication)",
            err=True,
        )


@click.command("chat", epilog=EPILOG)
@click.option("--model", required=True, help="Local mlx-lm model directory.")
@click.option(
    "--adapter-path",
    default=None,
    help="LoRA / DoRA adapters to serve on --model (mlx-lm's format).",
)
@click.option(
    "--feedback",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for kto.jsonl and dpo.jsonl (appended to, never rewritten).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one, printed).",
)
@click.option(
    "--max-tokens",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Longest answer (the page's, and any request's that sets none).",
)
@click.option(
    "--temperature",
    default=0.7,
    show_default=True,
    type=click.FloatRange(0),
    help="Sampling temperature (the page's, and any request's that sets none); "
    "above 0, so 'another' differs.",
)
def chat_command(
    model: str,
    adapter_path: str | None,
    feedback: str,
    host: str,
    port: int,
    max_tokens: int,
    temperature: float,
) -> None:
    """Chat with a model in the browser; 👍/👎, edits and picks become KTO and DPO data."""
    check_model_dir(model, adapter_path)
    check_host(host)
    try:
        Path(feedback).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            "--feedback", f"cannot create {feedback}: {e.strerror}"
        ) from None

    from mlx_align.apps.chat_server import (
        ChatSettings,
        authority,
        start_chat_server,
        stop_chat_server,
    )

    settings = ChatSettings(
        model, feedback, adapter_path or "", host, port, max_tokens, temperature
    )
    server = start_chat_server(settings)
    stats = server.stats()
    click.echo(
        f"mlx-align chat: http://{authority(host, server.port)}/ serving {model}"
        f"{' + ' + adapter_path if adapter_path else ''}; feedback in {feedback} "
        f"({stats['ratings']} ratings, {stats['pairs']} pairs so far). Ctrl-C stops.",
        err=True,
    )
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `kill PID` stops it cleanly
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop_chat_server(server)


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
