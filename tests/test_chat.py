"""`mlx-align chat`: mlx-lm's server + a feedback API that writes TRL-format rows.

One server (a child process on a free port) is shared by the module; the
SIGKILL test starts its own. Every refusal test uses a fresh answer and
checks afterwards that the same answer *can* be rated, so a missing guard
would have written a row.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import socket
import threading
import time
from itertools import combinations
from pathlib import Path

import pytest
from chat_helpers import (
    answer_text,
    ask,
    call,
    read_rows,
    start_chat,
    stop_chat,
    train_briefly,
)

from mlx_align.apps.feedback import Answer, FeedbackLog
from mlx_align.cli import main

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(autouse=True)
def reference_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def chat(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    server = start_chat(tiny_model, root / "feedback", root / "server.log")
    yield server
    stop_chat(server)


def files_bytes(feedback: Path) -> dict[str, bytes]:
    return {
        name: (feedback / name).read_bytes() if (feedback / name).exists() else b""
        for name in ("kto.jsonl", "dpo.jsonl")
    }


def cli_error(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    return exit_info.value.code, [x for x in err if not x.startswith("mlx-align: BLAS")]


# --- the command's edges -----------------------------------------------------


def test_help_shows_examples_and_the_feedback_files(capsys):
    main(["chat", "--help"])
    out = capsys.readouterr().out
    assert "mlx-align chat --model" in out and "--feedback" in out
    assert "kto.jsonl" in out and "dpo.jsonl" in out


def test_missing_model_dir_is_one_line_and_exit_2(tmp_path, capsys):
    code, lines = cli_error(
        ["chat", "--model", str(tmp_path / "nope"), "--feedback", str(tmp_path / "f")],
        capsys,
    )
    assert code == 2
    assert lines == [
        f"error: --model: no mlx-lm model directory at {tmp_path / 'nope'} "
        "(no config.json)"
    ]


def test_adapters_without_config_and_a_taken_port_are_one_line_errors(
    tiny_model, tmp_path, capsys
):
    base = ["chat", "--model", str(tiny_model), "--feedback", str(tmp_path / "f")]
    code, lines = cli_error([*base, "--adapter-path", str(tmp_path)], capsys)
    assert (code, lines) == (
        2,
        [f"error: --adapter-path: no adapter_config.json in {tmp_path}"],
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = cli_error([*base, "--port", str(port)], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --port: cannot listen on 127.0.0.1:{port}")


# --- answers, judgements, rows ----------------------------------------------


def test_judgements_are_trl_rows_that_kto_and_dpo_train_on(chat, tiny_model, tmp_path):
    kto_path, dpo_path = chat.feedback / "kto.jsonl", chat.feedback / "dpo.jsonl"
    kto_before, dpo_before = len(read_rows(kto_path)), len(read_rows(dpo_path))
    first = ask(chat, QUESTION, temperature=1.0)
    second = ask(chat, QUESTION, temperature=1.0)
    a, b = answer_text(first), answer_text(second)

    def feedback(kind: str, **fields) -> dict:
        status, reply = call(
            chat.port, "POST", "/api/feedback", {"kind": kind, **fields}
        )
        assert status == 200, reply
        return reply

    assert feedback("rating", answer_id=first["id"], label=True)["saved"] == "kto"
    feedback("rating", answer_id=second["id"], label=False)
    assert feedback("edit", answer_id=first["id"], text=" Five. \n")["saved"] == "dpo"
    feedback("pick", chosen_id=second["id"], rejected_id=first["id"])
    # A second turn continues the conversation with the edited answer.
    turn_two = [
        *QUESTION,
        {"role": "assistant", "content": "Five."},
        {"role": "user", "content": "And 3 + 4?"},
    ]
    third = ask(chat, turn_two, temperature=1.0)
    stats = feedback("rating", answer_id=third["id"], label=True)["stats"]

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    assert read_rows(kto_path)[kto_before:] == [
        {"prompt": QUESTION, "completion": said(a), "label": True},
        {"prompt": QUESTION, "completion": said(b), "label": False},
        {"prompt": turn_two, "completion": said(answer_text(third)), "label": True},
    ]
    assert read_rows(dpo_path)[dpo_before:] == [
        {"prompt": QUESTION, "chosen": said("Five."), "rejected": said(a)},
        {"prompt": QUESTION, "chosen": said(b), "rejected": said(a)},
    ]
    assert stats["ratings"] == kto_before + 3 and stats["pairs"] == dpo_before + 2
    assert call(chat.port, "GET", "/api/stats")[1]["good"] == stats["good"]
    assert stats["train"]["dpo"].startswith(f"mlx-align dpo --model {tiny_model} ")

    # The same rating again is refused, and writes nothing.
    before = files_bytes(chat.feedback)
    again = {"kind": "rating", "answer_id": first["id"], "label": True}
    assert call(chat.port, "POST", "/api/feedback", again)[0] == 409
    assert files_bytes(chat.feedback) == before

    # The files train as they are, through the CLI.
    for stage, data in (("kto", kto_path), ("dpo", dpo_path)):
        losses = train_briefly(stage, tiny_model, data, tmp_path / stage)
        assert len(losses) == 2 and all(map(math.isfinite, losses)), stage
        assert (tmp_path / stage / "adapters.safetensors").is_file()


# --- refusals ----------------------------------------------------------------


@pytest.fixture
def fresh_answer(chat) -> str:
    """The id of an answer nobody has judged yet."""
    return ask(chat, QUESTION, temperature=1.0)["id"]


def rating(answer_id: str) -> dict:
    return {"kind": "rating", "answer_id": answer_id, "label": True}


def raw_post(port: int, path: str, head: dict, body: bytes, send: int) -> int:
    """The status of a POST that declares ``len(body)`` bytes (unless ``head``
    says otherwise) but sends only ``send`` of them before reading the reply:
    a server must not wait for more."""
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **head,
    }
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:send])
        reply = sock.recv(4096).decode(errors="replace")
    return int(reply.split(" ", 2)[1])


REFUSALS = {
    # name: (headers, body for a fresh answer id, expected status)
    "foreign_origin": ({"Origin": "http://evil.example"}, rating, 403),
    "null_origin": ({"Origin": "null"}, rating, 403),
    "foreign_host": ({"Host": "evil.example"}, rating, 403),
    "rebound_host": ({"Host": "evil.example:{port}"}, rating, 403),
    "malformed_json": ({}, lambda i: b'{"kind": "rating", "answer_id": "' + i.encode(), 400),
    "not_an_object": ({}, lambda i: b'["rating"]', 400),
    "unknown_kind": ({}, lambda i: {"kind": "love", "answer_id": i}, 400),
    "label_not_bool": ({}, lambda i: {**rating(i), "label": "yes"}, 400),
    "unknown_id": ({}, lambda i: rating("chatcmpl-" + "0" * 36), 404),
    "empty_edit": ({}, lambda i: {"kind": "edit", "answer_id": i, "text": " \n"}, 422),
    "pick_itself": ({}, lambda i: {"kind": "pick", "chosen_id": i, "rejected_id": i}, 422),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_feedback_gets_4xx_and_writes_nothing(chat, fresh_answer, case):
    headers, make_body, expected = REFUSALS[case]
    headers = {k: v.format(port=chat.port) for k, v in headers.items()}
    before = files_bytes(chat.feedback)
    status, reply = call(
        chat.port, "POST", "/api/feedback", make_body(fresh_answer), headers
    )
    assert (status, files_bytes(chat.feedback)) == (expected, before), reply
    # The same answer rated properly is saved: only the fault stopped it.
    assert call(chat.port, "POST", "/api/feedback", rating(fresh_answer))[0] == 200


def test_a_10_mb_body_is_refused_unread(chat, fresh_answer):
    before = files_bytes(chat.feedback)
    body = json.dumps({**rating(fresh_answer), "pad": "x" * 10_000_000}).encode()
    assert raw_post(chat.port, "/api/feedback", {}, body, send=65536) == 413
    assert raw_post(chat.port, "/v1/chat/completions", {}, body, send=65536) == 413
    assert files_bytes(chat.feedback) == before
    assert call(chat.port, "POST", "/api/feedback", rating(fresh_answer))[0] == 200


def test_a_negative_length_is_refused_not_read_to_the_end(chat, fresh_answer):
    before = files_bytes(chat.feedback)
    body = json.dumps(rating(fresh_answer)).encode()
    for path in ("/api/feedback", "/v1/chat/completions"):
        head = {"Content-Length": "-1"}
        assert raw_post(chat.port, path, head, body, send=len(body)) == 400
    assert files_bytes(chat.feedback) == before


def test_foreign_pages_cannot_read_or_generate(chat):
    evil = {"Origin": "http://evil.example"}
    assert call(chat.port, "GET", "/", headers={"Host": "evil.example"})[0] == 403
    assert call(chat.port, "GET", "/api/stats", headers=evil)[0] == 403
    body = {"messages": QUESTION, "max_tokens": 2}
    assert call(chat.port, "POST", "/v1/chat/completions", body, evil)[0] == 403
    # Same-origin and the loopback names are this server.
    own = {"Origin": f"http://localhost:{chat.port}", "Host": f"localhost:{chat.port}"}
    assert call(chat.port, "POST", "/v1/chat/completions", body, own)[0] == 200


def test_requests_cannot_load_another_model_or_adapters(chat):
    for extra in ({"model": "mlx-community/some-model"}, {"adapters": "/tmp"},
                  {"draft_model": "/tmp"}):  # fmt: skip
        body = {"messages": QUESTION, "max_tokens": 2, **extra}
        status, reply = call(chat.port, "POST", "/v1/chat/completions", body)
        assert status == 400, (extra, reply)


def test_page_is_self_contained(chat):
    connection = http.client.HTTPConnection("127.0.0.1", chat.port)
    connection.request("GET", "/")
    response = connection.getresponse()
    html = response.read().decode()
    assert response.status == 200
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    assert (
        "<script>" in html
        and "/api/feedback" in html
        and "/v1/chat/completions" in html
    )
    assert "http://" not in html and "https://" not in html and " src=" not in html
    assert "mlx-align dpo --model" in html  # the training command, with the counts


# --- durability --------------------------------------------------------------


def test_sigkill_while_writing_loses_at_most_the_judgement_in_flight(
    tiny_model, tmp_path
):
    server = start_chat(tiny_model, tmp_path / "fb", tmp_path / "log")
    try:
        ids = [
            ask(server, QUESTION, max_tokens=4, temperature=1.0)["id"]
            for _ in range(12)
        ]
        acknowledged = []

        def judge_all() -> None:
            for chosen, rejected in combinations(ids, 2):
                body = {"kind": "pick", "chosen_id": chosen, "rejected_id": rejected}
                try:
                    status, _ = call(server.port, "POST", "/api/feedback", body)
                except OSError:
                    return  # the server is gone
                assert status == 200
                acknowledged.append((chosen, rejected))

        writer = threading.Thread(target=judge_all)
        writer.start()
        while len(acknowledged) < 25 and writer.is_alive():
            time.sleep(0.001)
        os.kill(server.process.pid, signal.SIGKILL)
        writer.join()
        server.process.wait()
    finally:
        stop_chat(server)
    lines = (tmp_path / "fb" / "dpo.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line is whole
    rows = [json.loads(line) for line in lines[:-1]]
    assert len(acknowledged) >= 25 and len(rows) in (
        len(acknowledged),
        len(acknowledged) + 1,
    )
    assert all(row["prompt"] == QUESTION and len(row["chosen"]) == 1 for row in rows)  # fmt: skip


def test_a_torn_last_line_is_dropped_and_counts_carry_on(tmp_path):
    kto = tmp_path / "kto.jsonl"
    good = {
        "prompt": QUESTION,
        "completion": [{"role": "assistant", "content": "5"}],
        "label": True,
    }
    kto.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps({**good, "label": False})
        + "\n"
        + '{"prompt": [{"ro'
    )
    log = FeedbackLog(tmp_path)
    assert log.stats() == {"ratings": 2, "good": 1, "bad": 1, "pairs": 0}
    log.rate(Answer("chatcmpl-1", (("user", "What is 2 + 3?"),), "Five."), good=True)
    log.close()
    rows = [json.loads(line) for line in kto.read_text().splitlines()]
    assert [row["label"] for row in rows] == [True, False, True]
    assert rows[2]["completion"] == [{"role": "assistant", "content": "Five."}]  # fmt: skip


def test_the_page_commands_keep_training_served_adapters():
    from mlx_align.apps.chat_server import ChatSettings, train_commands

    settings = ChatSettings(model="runs/sft-fused", feedback="fb", adapter_path="runs/my dpo")  # fmt: skip
    commands = train_commands(settings)
    assert commands["dpo"] == (
        "mlx-align dpo --model runs/sft-fused --adapter-path 'runs/my dpo' "
        "--data fb/dpo.jsonl --out runs/chat-dpo"
    )
    assert "--adapter-path" not in train_commands(ChatSettings(model="m", feedback="fb"))["kto"]  # fmt: skip
