"""Upload with a model card: `mlx-align upload RUN --repo` (the adapters alone) and
`mlx-align fuse ... --upload-repo` (the fused model), against a stand-in for the
hub's API on 127.0.0.1: exactly which files were sent, and the card's metadata."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from mlx_align.apps.model_card import StageRecord, model_card, run_history
from mlx_align.cli import main

TOKEN = "hf_stand_in_token"


class StandInHub(BaseHTTPRequestHandler):
    """The three routes `create_repo` + `create_commit` use; files are sent inline
    ("regular" upload mode), so each commit's files arrive whole."""

    commits: list[dict] = []
    validated: list[str] = []
    refuse = False

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.refuse or self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})  # fmt: skip
        if (
            self.path == "/api/validate-yaml"
        ):  # the README's front matter, before a commit
            content = json.loads(body)["content"]
            self.validated.append(content)
            errors = [] if isinstance(front_matter(content), dict) else [{"message": "no metadata"}]  # fmt: skip
            return self.reply(
                400 if errors else 200, {"errors": errors, "warnings": []}
            )
        if self.path == "/api/repos/create":
            request = json.loads(body)
            name = f"{request['organization']}/{request['name']}"
            return self.reply(200, {"url": f"{base}/{name}", "name": name})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]  # fmt: skip
            return self.reply(200, {"files": modes})
        if "/commit/" in self.path:
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            files = {
                x["value"]["path"]: base64.b64decode(x["value"]["content"])
                for x in lines
                if x["key"] == "file"
            }
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            summary = lines[0]["value"]["summary"]
            self.commits.append({"repo": repo, "message": summary, "files": files})
            oid = "0" * 40
            return self.reply(200, {"commitUrl": f"{base}/{repo}/commit/{oid}", "commitOid": oid})  # fmt: skip
        self.reply(404, {"error": self.path})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    StandInHub.commits, StandInHub.validated, StandInHub.refuse = [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield StandInHub
    server.shutdown()


@pytest.fixture(scope="module")
def sft_run(tiny_model, sft_dir, tmp_path_factory):
    """A finished SFT run through the CLI (config.yaml, metrics.jsonl, best/)."""
    out = tmp_path_factory.mktemp("upload") / "sft"
    main([
        "sft", "--model", str(tiny_model), "--data", str(sft_dir), "--out", str(out),
        "--steps", "4", "--batch-size", "2", "--eval-every", "2", "--save-every", "0",
        "--no-compile", "--lora-rank", "4", "--max-length", "64", "--save-best", "val_loss",
    ])  # fmt: skip
    return out


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_upload_sends_the_adapters_alone_with_a_card(sft_run, hub, capsys):
    main(["upload", str(sft_run), "--repo", "me/tiny-sft"])
    [commit] = hub.commits
    assert commit["repo"] == "me/tiny-sft"
    assert commit["message"] == "mlx-align: sft adapters"
    sent = commit["files"]
    assert set(sent) == {"adapters.safetensors", "adapter_config.json", "config.yaml", "README.md"}  # fmt: skip
    for name in ("adapters.safetensors", "adapter_config.json", "config.yaml"):
        assert sent[name] == (sft_run / name).read_bytes(), name
    card = sent["README.md"].decode()
    assert hub.validated == [card]  # huggingface_hub checked its metadata first
    meta = front_matter(card)
    assert meta["library_name"] == "mlx" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["mlx", "mlx-align", "sft", "lora"]
    assert "base_model" not in meta  # a local base is no hub id
    lines = [
        json.loads(x) for x in (sft_run / "metrics.jsonl").read_text().splitlines()
    ]
    last_val = [x["val_loss"] for x in lines if "val_loss" in x][-1]
    best = json.loads((sft_run / "best" / "best.json").read_text())
    assert f"| sft | val_loss | {last_val:.4g} |" in card
    assert f"| sft | best val_loss (step {best['step']}) | {best['value']:.4g} |" in card  # fmt: skip
    assert "steps 4; learning_rate" in card and "lora_rank 4" in card
    assert "mlx_lm.generate --model " in card and "--adapter-path tiny-sft" in card
    assert "uploaded to http://127.0.0.1:" in capsys.readouterr().out


def test_fuse_uploads_the_fused_model_and_its_stages_carry_into_the_next_card(
    sft_run, tiny_model, hub, tmp_path
):
    fused = tmp_path / "sft-fused"
    main([
        "fuse", "--model", str(tiny_model), "--adapter-path", str(sft_run),
        "--save-path", str(fused), "--upload-repo", "me/tiny-sft-fused",
    ])  # fmt: skip
    [commit] = hub.commits
    local = {p.relative_to(fused).as_posix() for p in fused.rglob("*") if p.is_file()}
    assert set(commit["files"]) == local
    assert {"model.safetensors", "config.json", "README.md", "mlx_align_stages.json"} <= local  # fmt: skip
    card = commit["files"]["README.md"].decode()
    assert card == (fused / "README.md").read_text()
    assert "A model fused from" in card and front_matter(card)["tags"][:3] == ["mlx", "mlx-align", "sft"]  # fmt: skip
    # A later stage on the fused model: its card tells both stages.
    later = tmp_path / "dpo"
    later.mkdir()
    (later / "config.yaml").write_text(f"# mlx-align dpo --config <this file>\nmodel: {fused}\ndata: prefs\nbeta: 0.1\n")  # fmt: skip
    (later / "metrics.jsonl").write_text('{"step": 5, "val_rewards/accuracies": 0.75}\n')  # fmt: skip
    history = run_history(later)
    assert [h.stage for h in history] == ["sft", "dpo"]
    assert history[0].figures == run_history(sft_run)[0].figures
    card = model_card("me/dpo", history, adapters=True)
    assert "trained with mlx-align: sft → dpo" in card
    assert "| dpo | val_rewards/accuracies | 0.75 |" in card


def test_the_card_names_hub_models_and_datasets_in_its_metadata(tmp_path):
    qwen, local = "Qwen/Qwen2.5-0.5B-Instruct", str(tmp_path / "sft-fused")
    history = [
        StageRecord("sft", qwen, "trl-lib/Capybara", {"steps": 100}),
        StageRecord("dpo", local, "trl-lib/ultrafeedback_binarized", {"dora": True}),
    ]
    fused = front_matter(model_card("me/m", history, adapters=False))
    assert fused["base_model"] == qwen
    assert fused["base_model_relation"] == "finetune"
    assert fused["datasets"] == ["trl-lib/Capybara", "trl-lib/ultrafeedback_binarized"]
    assert fused["tags"] == ["mlx", "mlx-align", "sft", "dpo", "dora"]
    # Adapters apply to the last stage's model: a local one is no hub id.
    adapters = front_matter(model_card("me/m", history[1:], adapters=True))
    assert "base_model" not in adapters
    adapters = front_matter(model_card("me/m", history[:1], adapters=True))
    assert (adapters["base_model"], adapters["base_model_relation"]) == (
        qwen,
        "adapter",
    )


def test_a_refused_upload_and_a_directory_that_is_no_run_are_one_line(sft_run, hub, tmp_path, capsys):  # fmt: skip
    hub.refuse = True
    with pytest.raises(SystemExit) as exit_info:
        main(["upload", str(sft_run), "--repo", "me/tiny-sft"])
    assert exit_info.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("mlx-align: ")]  # fmt: skip
    assert len(err) == 1 and err[0].startswith("error: --repo: upload to me/tiny-sft failed: ")  # fmt: skip
    assert "401" in err[0] and hub.commits == []
    with pytest.raises(SystemExit) as exit_info:
        main(["upload", str(tmp_path), "--repo", "me/x"])
    assert exit_info.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("mlx-align: ")]  # fmt: skip
    assert err == [f"error: {tmp_path}: holds neither adapters.safetensors nor model/config.json (the output of a finished mlx-align training stage)"]  # fmt: skip
