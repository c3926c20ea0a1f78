"""Serve a model directory with mlx-lm's own OpenAI-compatible server, and ask it.

``mlx_lm_server`` runs ``python -m mlx_lm server`` as a child process bound to
127.0.0.1, waits until the model answers, and always stops the child on exit.
``ask_chat`` sends one ``POST /v1/chat/completions`` with ``urllib`` only.

Readiness takes two probes because mlx-lm 0.32 loads the model on its
generation thread while the HTTP server is already up: ``GET /health`` is 200
as soon as that thread runs (503 once it has died, e.g. on a bad model
directory), so a one-token ``POST /v1/completions`` then waits for the load.

    python -m mlx_align.apps.serve --model out/grpo-fused --question "What is 12 + 7?"
    python -m mlx_align.apps.serve --model out/grpo-fused --serve-only --port 8080
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
# The server maps this name to its --model directory.
DEFAULT_MODEL = "default_model"
POLL_INTERVAL_S = 0.2
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30

# Never route loopback requests through an http_proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """The server exited, failed to load the model, or was not ready in time."""


@dataclass(frozen=True)
class LocalServer:
    """A running ``mlx_lm server`` child: its base URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def server_command(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlx_lm",
        "server",
        "--model",
        str(
            Path(model_dir).resolve()
        ),  # an existing path is never looked up on the Hub
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not log_path.exists():
        return "(no log)"
    text = log_path.read_text(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _require_loopback(url: str) -> None:
    if urlsplit(url).hostname != LOOPBACK:
        raise ValueError(f"only {LOOPBACK} may be contacted, not {url}")


def post_json(url: str, body: dict, timeout: float) -> dict:
    """POST ``body`` as JSON; an HTTP error becomes a RuntimeError with the server's reply."""
    _require_loopback(url)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise RuntimeError(f"{url} answered {error.code}: {detail}") from None


def health_status(base_url: str) -> int | None:
    """The status code of ``GET /health``, or None while nothing answers."""
    try:
        with _opener.open(f"{base_url}/health", timeout=2.0) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def wait_until_ready(server: LocalServer, timeout: float) -> None:
    """Poll ``/health`` until 200, then wait for a one-token completion (the model load)."""
    deadline = time.monotonic() + timeout

    def fail(reason: str) -> ServerStartError:
        return ServerStartError(
            f"mlx_lm server for {server.url} {reason}; "
            f"last lines of {server.log_path}:\n{log_tail(server.log_path)}"
        )

    while (status := health_status(server.url)) != 200:
        if server.process.poll() is not None:
            raise fail(f"exited with code {server.process.returncode}")
        if status == 503:
            raise fail("is up but its generation thread died (model did not load)")
        if time.monotonic() > deadline:
            raise fail(f"was not ready after {timeout:.1f}s")
        time.sleep(POLL_INTERVAL_S)
    probe = {"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 1}
    try:
        post_json(
            f"{server.url}/v1/completions",
            probe,
            timeout=max(deadline - time.monotonic(), 0.1),
        )
    except (RuntimeError, OSError) as error:  # URLError and timeouts are OSErrors
        raise fail(f"could not answer a one-token completion ({error})") from None


def stop_server(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def mlx_lm_server(
    model_dir: Path,
    port: int | None = None,
    timeout: float = 60.0,
    log_path: Path | None = None,
) -> Iterator[LocalServer]:
    """Run ``mlx_lm server`` on 127.0.0.1 until the block exits, even on an exception.

    Yields a ``LocalServer`` once the model answers; its ``url`` is the base URL
    (``http://127.0.0.1:PORT``). The child's stdout and stderr go to ``log_path``
    (a temporary file when None). Raises ``ServerStartError``, with the log's
    last lines, if the child dies or is not ready within ``timeout`` seconds.
    """
    port = free_port() if port is None else port
    if accepts_connections(port):  # else /health could be answered by a stranger
        raise ServerStartError(f"port {port} on {LOOPBACK} is already in use")
    with ExitStack() as stack:
        if log_path is None:
            log_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mlx-lm-server-")
            )
            log_path = Path(log_dir) / "server.log"
        log_file = stack.enter_context(open(log_path, "wb"))
        process = subprocess.Popen(
            server_command(model_dir, port),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stack.callback(stop_server, process)  # runs before the log is closed
        server = LocalServer(f"http://{LOOPBACK}:{port}", process, Path(log_path))
        wait_until_ready(server, timeout)
        yield server


def chat_completion(
    base_url: str,
    question: str,
    max_tokens: int = 32,
    temperature: float = 0.0,
    timeout: float = 120.0,
    **fields,
) -> dict:
    """The server's whole JSON reply to one user message; ``fields`` go into the body."""
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        **fields,
    }
    return post_json(f"{base_url}/v1/chat/completions", body, timeout)


def ask_chat(
    base_url: str, question: str, max_tokens: int = 32, temperature: float = 0.0
) -> str:
    """``choices[0].message.content`` of a chat completion for one user message."""
    reply = chat_completion(base_url, question, max_tokens, temperature)
    return reply["choices"][0]["message"]["content"]


def curl_example(base_url: str, question: str) -> str:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 32}
    return (
        f"curl {base_url}/v1/chat/completions "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )


def serve_in_foreground(model_dir: Path, port: int, question: str) -> None:
    """Replace this process with the server, so Ctrl-C and its log go straight to it."""
    base_url = f"http://{LOOPBACK}:{port}"
    print(f"Serving {model_dir} at {base_url} (Ctrl-C to stop). Try:")
    print(curl_example(base_url, question), flush=True)
    command = server_command(model_dir, port)
    os.execv(command[0], command)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_align.apps.serve",
        description="Serve a model dir with mlx-lm's OpenAI-compatible server on "
        "127.0.0.1 and ask it one question (or just serve it).",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="mlx-lm model directory"
    )
    parser.add_argument("--question", default="What is 12 + 7?", help="user message")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length cap")
    parser.add_argument(
        "--port", type=int, help="default: a free port; 8080 with --serve-only"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the server"
    )
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="run the server in the foreground until Ctrl-C",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"error: no mlx-lm model directory at {args.model}", file=sys.stderr)
        return 2
    if args.serve_only:
        serve_in_foreground(args.model, args.port or 8080, args.question)
    try:
        with mlx_lm_server(args.model, args.port, args.timeout) as server:
            answer = ask_chat(server.url, args.question, args.max_tokens)
    except (RuntimeError, OSError) as error:  # ServerStartError is a RuntimeError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Q: {args.question}")
    print(f"A: {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
