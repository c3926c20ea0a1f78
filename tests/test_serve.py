"""mlx-lm's own server on loopback: a real chat completion over HTTP, always stopped."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mlx_align.apps import serve
from mlx_align.apps.serve import (
    ServerStartError,
    accepts_connections,
    ask_chat,
    chat_completion,
    free_port,
    mlx_lm_server,
)


def special_token_ids(model_dir: Path) -> list[int]:
    added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    return [token["id"] for token in added]


@pytest.fixture
def spawned(monkeypatch) -> list[subprocess.Popen]:
    """Every process ``mlx_lm_server`` starts, so a test can see it was stopped."""
    processes = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        processes.append(real_popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(serve.subprocess, "Popen", recording_popen)
    return processes


def test_served_model_answers_a_chat_completion_then_stops(tiny_model):
    port = free_port()
    with mlx_lm_server(tiny_model, port=port) as server:
        assert server.url == f"http://127.0.0.1:{port}"
        answer = ask_chat(server.url, "What is 12 + 7?", max_tokens=8)
        # An untrained model may end its turn at once (an empty answer); with
        # every special token banned, greedy decoding must fill all 8 tokens.
        ban = {str(i): -100.0 for i in special_token_ids(tiny_model)}
        reply = chat_completion(server.url, "What is 12 + 7?", 8, logit_bias=ban)
    assert isinstance(answer, str)
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] != ""
    assert choice["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 8
    assert server.process.returncode is not None
    assert not accepts_connections(port)


def test_server_is_stopped_when_the_block_raises(tiny_model, spawned):
    port = free_port()
    with pytest.raises(KeyError), mlx_lm_server(tiny_model, port=port):
        raise KeyError("boom")
    assert [p.returncode is not None for p in spawned] == [True]
    assert not accepts_connections(port)


def test_model_dir_without_config_fails_fast_with_the_log_tail(tmp_path, spawned):
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="config.json") as error:
        with mlx_lm_server(tmp_path, port=port, timeout=30.0):
            pass
    assert time.monotonic() - start < 20.0
    assert "model did not load" in str(error.value)
    assert [p.returncode is not None for p in spawned] == [True]
    assert not accepts_connections(port)


def test_server_not_ready_in_time_is_killed(tiny_model, spawned):
    with pytest.raises(ServerStartError, match="not ready after 0.1s"):
        with mlx_lm_server(tiny_model, timeout=0.1):
            pass
    assert [p.returncode is not None for p in spawned] == [True]


def test_busy_port_is_refused_before_starting(tiny_model, spawned):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ServerStartError, match="already in use"):
            with mlx_lm_server(tiny_model, port=port):
                pass
    assert spawned == []


def test_only_loopback_is_contacted():
    with pytest.raises(ValueError, match="only 127.0.0.1"):
        ask_chat("http://example.com:8080", "hi")


def test_main_asks_one_question(tiny_model, capsys):
    assert serve.main(["--model", str(tiny_model), "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: What is 12 + 7?\nA: ")


def test_main_exits_2_on_a_missing_model_dir(tmp_path, capsys):
    assert serve.main(["--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
