"""The commands around the stages: score, rerank, fuse, upload, plot and set-template.

Each is a plain ``click`` command; ``cli.py`` adds them to the ``mlx-align``
group beside the training stages.
"""

from __future__ import annotations

import click

from mlx_align.model.chat_templates import CHAT_TEMPLATES


@click.command(
    "score",
    epilog="Examples:\n\n  mlx-align score --reward-model runs/rm --data data/preference/test.jsonl\n\n"
    "  mlx-align score --reward-model runs/rm --data data/preference --out runs/rm/scores.jsonl",
)
@click.option(
    "--reward-model",
    required=True,
    type=click.Path(exists=True),
    help="Directory written by `mlx-align reward`.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="A .jsonl file, or a directory (its test.jsonl, else valid.jsonl) of prompt + completion, "
    "or prompt + chosen + rejected records.",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Write the JSON lines to this file instead of stdout.",
)
@click.option(
    "--batch-size",
    type=int,
    default=8,
    show_default=True,
    help="Responses per forward.",
)
def score_command(
    reward_model: str, data: str, out: str | None, batch_size: int
) -> None:
    """One reward per (prompt, response) as JSON lines; paired data also reports accuracy."""
    from mlx_align.apps.score import run_score

    rows = run_score(reward_model, data, out, batch_size)
    if out:
        click.echo(f"{len(rows)} rewards written to {out}", err=True)


@click.command(
    "rerank",
    epilog="Examples:\n\n  mlx-align rerank --model runs/sft-fused --adapter-path runs/dpo "
    "--data prompts.jsonl --k 8 --beta 0.1 --out ranked.jsonl\n\n"
    "  mlx-align rerank --model runs/dpo-fused --ref-model runs/sft-fused --data prompts.jsonl\n\n"
    "  mlx-align rerank --model runs/dpo-fused --reward-model runs/rm --data prompts.jsonl --k 16\n\n"
    "Each line of --out is the prompt's record plus `ranked`: its K completions, best first, "
    "with `score`, `sample` (draw order), `tokens`, `finished`, `logp` and `ref_logp`.",
)
@click.option("--model", required=True, help="Policy model (path or hub id).")
@click.option(
    "--adapter-path",
    type=click.Path(exists=True),
    default=None,
    help="LoRA / DoRA adapters on --model; without --ref-model, --model with them off is the reference.",
)
@click.option(
    "--ref-model",
    default=None,
    help="Reference model for the implicit reward (e.g. the SFT model under a fused DPO policy).",
)
@click.option(
    "--reward-model",
    type=click.Path(exists=True),
    default=None,
    help="Rank by this `mlx-align reward` model instead of the implicit reward.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="Prompts: a .jsonl file, or a directory (its test.jsonl, else valid.jsonl), of "
    '{"prompt": str or chat messages} records, as for grpo and eval-math.',
)
@click.option(
    "--k", type=int, default=8, show_default=True, help="Completions per prompt."
)
@click.option(
    "--beta",
    type=float,
    default=0.1,
    show_default=True,
    help="β of the implicit reward β·(log π − log π_ref); the DPO run's.",
)
@click.option(
    "--max-tokens",
    type=int,
    default=256,
    show_default=True,
    help="Longest completion.",
)
@click.option(
    "--temperature",
    type=float,
    default=1.0,
    show_default=True,
    help="Sampling temperature.",
)
@click.option(
    "--top-p",
    type=float,
    default=1.0,
    show_default=True,
    help="Nucleus sampling threshold.",
)
@click.option(
    "--batch-size",
    type=int,
    default=4,
    show_default=True,
    help="Prompts sampled together (K rows each).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Write every prompt's ranked completions here as JSON lines.",
)
def rerank_command(out: str | None, **settings) -> None:
    """Best-of-K: sample K completions per prompt, rank them by DPO's implicit reward
    (or a reward model), print each prompt's best."""
    from mlx_align.apps.rerank import run_rerank

    ranked = run_rerank(out=out, progress=True, **settings)
    for r in ranked:
        prompt = r.record.fields["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[-1]["content"]
        best = r.best.completion.strip().replace("\n", " ⏎ ")
        click.echo(prompt.strip().replace("\n", " ⏎ "))
        click.echo(f"  best of {len(r.candidates)} ({r.best.score:+.3f}): {best}")
    if out:
        click.echo(f"{len(ranked)} prompts ranked, written to {out}", err=True)


@click.command(
    "fuse",
    epilog="Examples:\n\n  mlx-align fuse --model runs/pt/model --adapter-path runs/sft --save-path models/sft-fused\n\n"
    "  python -m mlx_lm generate --model models/sft-fused --prompt 'Question: What is 2 + 3?'\n\n"
    "  mlx-align fuse --model Qwen/Qwen2.5-0.5B-Instruct --adapter-path runs/dpo "
    "--save-path models/dpo-fused --upload-repo me/qwen-dpo\n\n"
    "The fused directory gets a model card (README.md: base model, the stages and "
    "their settings, held-out figures) and mlx_align_stages.json, the stages that made it.",
)
@click.option(
    "--model",
    required=True,
    help="Base model the adapters were trained on (path or hub id).",
)
@click.option(
    "--adapter-path",
    required=True,
    type=click.Path(exists=True),
    help="Directory with adapters.safetensors + adapter_config.json.",
)
@click.option("--save-path", required=True, help="Output mlx-lm model directory.")
@click.option(
    "--dequantize",
    is_flag=True,
    help="Write a dequantized model when the base is quantized. Without it, "
    "fusing into a quantized base re-quantizes W + ΔW; the fused model is "
    "compared with base + adapters on random probe sequences, and the fuse "
    "refuses (exit 2) when it keeps under half the adapters' effect on the "
    "logits (1 - mean|fused - adapted| / mean|adapted - base| < 0.5).",
)
@click.option(
    "--upload-repo",
    default=None,
    help="Upload the fused model to this Hugging Face repo (ORG/NAME), with its card.",
)
def fuse_command(
    model: str,
    adapter_path: str,
    save_path: str,
    dequantize: bool,
    upload_repo: str | None,
) -> None:
    """Fold LoRA / DoRA adapters into the base weights; mlx-lm serves the result."""
    from pathlib import Path

    from mlx_align.apps.model_card import model_card, run_history, write_history
    from mlx_align.model.fuse import fuse_adapters

    fused = Path(fuse_adapters(model, adapter_path, save_path, dequantize))
    click.echo(f"fused model written to {fused}")
    history = []  # adapters from elsewhere: mlx-lm's own card stays
    if (Path(adapter_path) / "config.yaml").exists():
        history = run_history(Path(adapter_path), base=model)
        write_history(fused, history)
        card = model_card(upload_repo or fused.name, history, adapters=False)
        (fused / "README.md").write_text(card)
    if upload_repo:
        from mlx_align.apps.upload import upload_fused

        click.echo(f"uploaded to {upload_fused(fused, upload_repo, history)}")


@click.command(
    "upload",
    epilog="Examples:\n\n  mlx-align upload runs/dpo --repo me/qwen-dpo-adapters\n\n"
    "  mlx-align upload runs/sft --repo me/sft-adapters --private\n\n"
    "Sends adapters.safetensors, adapter_config.json and config.yaml (with --full: "
    "RUN/model) and a model card as README.md, in one commit, through huggingface_hub "
    "(its login or HF_TOKEN, and HF_ENDPOINT).",
)
@click.argument("run", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--repo", required=True, help="Hugging Face repo to upload to (ORG/NAME)."
)
@click.option("--private", is_flag=True, help="Create the repo private.")
def upload_command(run: str, repo: str, private: bool) -> None:
    """Upload a training run's adapters (not the base) to the hub, with a model card."""
    from pathlib import Path

    from mlx_align.apps.upload import upload_run

    click.echo(f"uploaded to {upload_run(Path(run), repo, private)}")


@click.command(
    "plot",
    epilog="Examples:\n\n  mlx-align plot runs/dpo   # writes runs/dpo/metrics.png\n\n"
    "  mlx-align plot runs/sft runs/dpo runs/grpo   # one PNG in each\n\n"
    "  mlx-align plot runs/grpo --out reports/grpo-curves.png",
)
@click.argument(
    "run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path()
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="PNG file to write, for one RUN_DIR (default: RUN_DIR/metrics.png).",
)
def plot_command(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Curves of RUN_DIR/metrics.jsonl as a PNG: one panel per metric, train and val together."""
    from pathlib import Path

    from mlx_align.apps.plot import plot_metrics

    if out and len(run_dirs) > 1:
        raise click.UsageError(
            "--out takes one RUN_DIR; without it each gets metrics.png"
        )
    for run_dir in run_dirs:
        png = plot_metrics(Path(run_dir), Path(out) if out else None)
        click.echo(f"curves written to {png}")


@click.command(
    "set-template",
    epilog="Examples:\n\n  mlx-align set-template --model runs/capstone/dpo-fused "
    "--chat-template qa-tools --save-path runs/capstone/tools/base\n\n"
    "  mlx-align set-template --model models/base --chat-template chatml --save-path models/chat\n\n"
    "A copy of the model: the template's special tokens (qa-tools: <|tool_call_start|> and "
    "<|tool_call_end|>) appended to the tokenizer, one new embedding row each, every "
    "other token's id and logits unchanged.",
)
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False), help="Model directory.")  # fmt: skip
@click.option(
    "--chat-template",
    required=True,
    type=click.Choice(sorted(CHAT_TEMPLATES)),
    help="The template to give the model.",
)
@click.option("--save-path", required=True, help="Output model directory.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the new rows."
)
def set_template_command(
    model: str, chat_template: str, save_path: str, seed: int
) -> None:
    """Give a model another chat template, adding the special tokens it needs."""
    from mlx_align.model.retemplate import set_chat_template

    out = set_chat_template(model, save_path, chat_template, seed)
    click.echo(f"model with the {chat_template} template written to {out}")
