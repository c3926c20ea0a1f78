"""The HTTP side of ``mlx-align chat``: mlx-lm's OpenAI server plus the feedback API.

``ChatHandler`` is mlx-lm's own ``APIHandler`` (``mlx_lm/server.py``), so
``/v1/chat/completions`` (streaming included), ``/v1/completions``,
``/v1/models`` and ``/health`` are mlx-lm's code, answered from its
``ResponseGenerator`` and ``ModelProvider``. On top of it:

* ``GET /`` the chat page (``chat_page.py``), ``GET /api/stats`` the counts
  saved, ``POST /api/feedback`` a rating, an edit or a pick;
* every chat completion's text is remembered under the ``id`` mlx-lm gives
  its reply (``chatcmpl-<uuid4>``), so feedback can only judge real answers.

Where this departs from mlx-lm's server, and why:

* a request whose ``Host`` or ``Origin`` is not this server's own is refused
  with 403 (mlx-lm allows any Host and, by default, any Origin through
  CORS ``*``): a web page elsewhere must not post judgements, nor read
  answers through DNS rebinding. No CORS header is sent at all;
* a body over ``MAX_BODY_BYTES`` is refused with 413 before it is read
  (mlx-lm reads whatever ``Content-Length`` claims), a negative or
  non-numeric length with 400;
* a request may not name another model, adapters or a draft model (mlx-lm
  would load any path or Hugging Face id a client names, i.e. download);
* ``mlx_lm.server.run`` ignores its ``handler_class`` argument (0.32.2), so
  ``start_chat_server`` builds the ``ThreadingHTTPServer`` itself, as
  ``_run_http_server`` does, and loads the model before serving, so a model
  that cannot load is a one-line error rather than a dead generation thread.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from argparse import Namespace
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from mlx_lm.models.cache import LRUPromptCache
from mlx_lm.server import APIHandler, ModelProvider, ResponseGenerator

from mlx_align.apps.chat_page import render_page
from mlx_align.apps.feedback import (
    SPACES,
    Answer,
    AnswerBook,
    FeedbackError,
    FeedbackLog,
    plain_prompt,
)
from mlx_align.core.errors import UserError

MAX_BODY_BYTES = 1 << 20  # a long conversation fits; a flood does not
OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions", "/chat/completions")
SERVED_MODEL = "default_model"  # mlx-lm's name for its --model
PAGE_POLICY = (  # the page may load nothing from anywhere else
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class ChatSettings:
    """What ``mlx-align chat`` serves, where, and where judgements go."""

    model: str
    feedback: str
    adapter_path: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    max_tokens: int = 256
    temperature: float = 0.7


def mlx_lm_args(settings: ChatSettings) -> Namespace:
    """The ``cli_args`` mlx-lm's server reads, at its own defaults but for ours."""
    return Namespace(
        model=settings.model,
        adapter_path=settings.adapter_path or None,
        draft_model=None,
        num_draft_tokens=3,
        trust_remote_code=False,
        chat_template="",
        use_default_chat_template=False,
        chat_template_args={},
        allowed_origins=[],  # same-origin only: no CORS header is ever sent
        temp=settings.temperature,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        max_tokens=settings.max_tokens,
        decode_concurrency=32,
        prompt_concurrency=8,
        prefill_step_size=2048,
        prompt_cache_size=10,
        prompt_cache_bytes=None,
        kv_bits=None,
        kv_group_size=64,
        quantized_kv_start=5000,
        pipeline=False,
    )


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ChatServer(ThreadingHTTPServer):
    """mlx-lm's threading HTTP server, holding what the handlers share."""

    daemon_threads = True

    def __init__(self, settings: ChatSettings, feedback: FeedbackLog) -> None:
        super().__init__((settings.host, settings.port), ChatHandler)
        self.settings = settings
        self.feedback = feedback
        self.answers = AnswerBook()
        self.response_generator: ResponseGenerator | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stats(self) -> dict:
        return {
            **self.feedback.stats(),
            "files": {
                "kto": str(self.feedback.kto.path),
                "dpo": str(self.feedback.dpo.path),
            },
            "train": train_commands(self.settings),
        }


class ChatHandler(APIHandler):
    """mlx-lm's ``APIHandler`` with the page, the feedback API and the guards."""

    server: ChatServer
    answer_prompt: tuple | None = None  # set for a chat completion to remember

    def __init__(self, request, client_address, server: ChatServer) -> None:
        super().__init__(server.response_generator, request, client_address, server)

    def log_request(self, code="-", size="-") -> None:
        pass  # one line per request would bury the server's real messages

    # --- guards --------------------------------------------------------------

    def own_authorities(self) -> set[str]:
        """``host:port`` names that reach this server: the bound host, the
        address this connection came in on, and the loopback names for it."""
        port = self.server.port
        local = self.connection.getsockname()[0]
        names = {self.server.settings.host, local}
        if ipaddress.ip_address(local.split("%")[0]).is_loopback:
            names |= {"localhost", "127.0.0.1", "::1"}
        own = {authority(name, port) for name in names}
        return own | names if port == 80 else own

    def refuse_foreign(self) -> bool:
        """403 for a Host or Origin that is not this server's; True if refused."""
        own = self.own_authorities()
        host = (self.headers.get("Host") or "").lower()
        origin = self.headers.get("Origin")
        if host not in own:
            reason = f"Host {host[:100]!r} is not this server"
        elif origin is not None and origin.lower() not in {f"http://{a}" for a in own}:
            reason = f"Origin {origin[:100]!r} is not this server"
        else:
            return False
        self.send_json(403, {"error": reason})
        return True

    def refuse_bad_length(self) -> bool:
        """400 for a Content-Length that is not a count, 413 (and close) for
        one over ``MAX_BODY_BYTES``, before anything is read; True if refused.
        (mlx-lm reads whatever it claims; a negative one reads to EOF.)"""
        text = self.headers.get("Content-Length", "0")
        if not text.strip().isdigit():
            self.close_connection = True
            self.send_json(400, {"error": "invalid Content-Length header"})
            return True
        if int(text) <= MAX_BODY_BYTES:
            return False
        self.close_connection = True
        self.send_json(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
        return True

    def validate_model_parameters(self) -> None:
        super().validate_model_parameters()
        served = {SERVED_MODEL, self.server.settings.model}
        if self.requested_model not in served or self.adapter is not None:
            raise ValueError("this server serves one model; name no model or adapters")
        if self.requested_draft_model != SERVED_MODEL:
            raise ValueError("this server takes no draft model")

    # --- routes --------------------------------------------------------------

    def do_OPTIONS(self) -> None:
        if not self.refuse_foreign():
            super().do_OPTIONS()

    def do_GET(self) -> None:
        if self.refuse_foreign():
            return
        path = self.path.split("?", 1)[0]
        if path == "/":
            settings = self.server.settings
            page = render_page(
                self.server.stats(), settings.max_tokens, settings.temperature
            )
            self.send_bytes(200, page.encode(), "text/html; charset=utf-8")
        elif path == "/api/stats":
            self.send_json(200, self.server.stats())
        else:
            super().do_GET()

    def do_POST(self) -> None:
        if self.refuse_foreign() or self.refuse_bad_length():
            return
        if self.path == "/api/feedback":
            self.handle_feedback()
        elif self.path in OPENAI_ROUTES:
            super().do_POST()
        else:
            self.send_json(404, {"error": f"no route {self.path[:100]!r}"})

    # --- the feedback API ----------------------------------------------------

    def handle_feedback(self) -> None:
        try:
            body = self.read_json_body()
            saved = judge(self.server.feedback, self.server.answers, body)
        except FeedbackError as e:
            self.send_json(e.status, {"error": e.message})
            return
        self.send_json(200, {"saved": saved, "stats": self.server.stats()})

    def read_json_body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise FeedbackError(411, "Content-Length header is required")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError as e:  # bad UTF-8 or bad JSON
            raise FeedbackError(400, f"invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise FeedbackError(400, "the body must be a JSON object")
        return body

    # --- remembering the answers mlx-lm's handler generates ------------------

    def handle_chat_completions(self):
        request = super().handle_chat_completions()
        self.answer_prompt = plain_prompt(self.body.get("messages"))
        self.answer_parts: list[str] = []
        return request

    def generate_response(self, text, finish_reason, *args, **kwargs):
        """mlx-lm calls this for every chunk it sends and for the whole reply;
        the last call (``finish_reason`` set) comes before the client sees the
        end, so the answer is remembered before any feedback can name it."""
        if self.answer_prompt is not None:
            self.answer_parts.append(text or "")
            if finish_reason is not None:
                answer = Answer(
                    self.request_id,
                    self.answer_prompt,
                    "".join(self.answer_parts).strip(SPACES),
                )
                self.server.answers.remember(answer)
        return super().generate_response(text, finish_reason, *args, **kwargs)

    # --- replies -------------------------------------------------------------

    def send_json(self, status: int, body: dict) -> None:
        self.send_bytes(status, json.dumps(body).encode(), "application/json")

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def judge(feedback: FeedbackLog, answers: AnswerBook, body: dict) -> str:
    """Save one judgement named by server-issued answer ids; which file took it.

    ``{"kind": "rating", "answer_id": ID, "label": true | false}`` -> kto;
    ``{"kind": "edit", "answer_id": ID, "text": "..."}`` -> dpo (text over answer);
    ``{"kind": "pick", "chosen_id": ID, "rejected_id": ID}`` -> dpo.
    """
    kind = body.get("kind")
    if kind == "rating":
        if not isinstance(body.get("label"), bool):
            raise FeedbackError(400, "a rating needs 'label': true or false")
        feedback.rate(answers.get(body.get("answer_id")), body["label"])
        return "kto"
    if kind == "edit":
        if not isinstance(body.get("text"), str):
            raise FeedbackError(400, "an edit needs 'text': the corrected answer")
        feedback.edit(answers.get(body.get("answer_id")), body["text"])
        return "dpo"
    if kind == "pick":
        chosen = answers.get(body.get("chosen_id"))
        feedback.pick(chosen, answers.get(body.get("rejected_id")))
        return "dpo"
    raise FeedbackError(400, "'kind' must be rating, edit or pick")


def train_commands(settings: ChatSettings) -> dict[str, str]:
    """The commands that train on the saved judgements, for the page to show:
    served adapters keep training (``--adapter-path``), the base the reference."""
    folder = Path(settings.feedback)
    adapters = ""
    if settings.adapter_path:
        adapters = f" --adapter-path {shlex.quote(settings.adapter_path)}"
    return {
        stage: f"mlx-align {stage} --model {shlex.quote(settings.model)}{adapters} "
        f"--data {shlex.quote(str(folder / f'{stage}.jsonl'))} --out runs/chat-{stage}"
        for stage in ("dpo", "kto")
    }


def start_chat_server(settings: ChatSettings) -> ChatServer:
    """Load the model, open the feedback files, bind, start mlx-lm's generation
    thread. Serve with ``server.serve_forever()``; stop with ``stop_chat_server``."""
    provider = ModelProvider(mlx_lm_args(settings))
    try:  # here, not on the generation thread: a bad model is a clear error
        provider.load_default()
    except Exception as e:  # mlx-lm raises many kinds for a directory it cannot read
        raise UserError(
            "--model", f"mlx-lm cannot load {settings.model}: {e}"
        ) from None
    feedback = FeedbackLog(Path(settings.feedback))
    try:
        server = ChatServer(settings, feedback)
    except OSError as e:
        feedback.close()
        where = authority(settings.host, settings.port)
        raise UserError("--port", f"cannot listen on {where}: {e.strerror}") from None
    cache = LRUPromptCache(provider.cli_args.prompt_cache_size)
    server.response_generator = ResponseGenerator(provider, cache)
    return server


def stop_chat_server(server: ChatServer) -> None:
    server.server_close()
    if server.response_generator is not None:
        server.response_generator.stop_and_join()
    server.feedback.close()
