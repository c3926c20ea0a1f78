"""`mlx-align chat` as a child process, and plain HTTP calls to it (no proxies)."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0


@dataclass
class ChatProcess:
    process: subprocess.Popen
    port: int
    feedback: Path
    log: Path
    no_eos: dict  # logit_bias that keeps the model from ending an answer at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_chat(model: Path, feedback: Path, log: Path, *flags: str) -> ChatProcess:
    """Run the CLI on a free port and wait for the line that names it."""
    command = [sys.executable, "-c", "from mlx_align.cli import main; main()"]
    command += ["chat", "--model", str(model), "--feedback", str(feedback)]
    command += ["--port", "0", "--max-tokens", "8", *flags]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        if found:
            return ChatProcess(
                process, int(found.group(1)), feedback, log, no_eos_bias(model)
            )
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"chat server did not start:\n{log.read_text()}")


def stop_chat(chat: ChatProcess) -> None:
    chat.process.terminate()
    try:
        chat.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        chat.process.kill()
        chat.process.wait()


def call(
    port: int,
    method: str,
    path: str,
    body: dict | bytes | None = None,
    headers: dict | None = None,
) -> tuple[int, dict]:
    """Status and JSON reply of one request; ``body`` a dict (sent as JSON) or raw bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": "application/json", **(headers or {})}
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    return response.status, json.loads(text) if text else {}


def no_eos_bias(model: Path) -> dict[str, float]:
    """The untrained tiny model ends about one answer in a hundred at once; an
    empty answer cannot be judged, so the tests' requests forbid EOS."""
    eos = json.loads((Path(model) / "config.json").read_text())["eos_token_id"]
    return {str(token): -100.0 for token in ([eos] if isinstance(eos, int) else eos)}


def ask(chat: ChatProcess, messages: list[dict], **fields) -> dict:
    """A chat completion through mlx-lm's OpenAI route: the whole reply."""
    body = {"messages": messages, "logit_bias": chat.no_eos, **fields}
    status, reply = call(chat.port, "POST", "/v1/chat/completions", body)
    assert status == 200, reply
    return reply


def answer_text(reply: dict) -> str:
    return (reply["choices"][0]["message"]["content"] or "").strip(" \t\r\n")


def train_briefly(stage: str, model: Path, data: Path, out: Path) -> list[float]:
    """Two optimizer steps of ``mlx-align STAGE`` on ``data`` as it is; the losses."""
    from mlx_align.cli import main

    main(
        [stage, "--model", str(model), "--data", str(data), "--out", str(out),
         "--steps", "2", "--batch-size", "2", "--no-compile", "--warmup-steps", "0",
         "--log-every", "1", "--save-every", "0"]
    )  # fmt: skip
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
