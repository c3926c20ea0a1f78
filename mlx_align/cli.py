"""The ``mlx-align`` command: one thin command per stage (options -> config -> one call)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from mlx_align.apps.chat import chat_command
from mlx_align.apps.tools import (
    fuse_command,
    plot_command,
    rerank_command,
    score_command,
    set_template_command,
    upload_command,
)
from mlx_align.config.build import build_config, config_yaml
from mlx_align.config.online import GRPOConfig, OnlineDPOConfig, PPOConfig, RLOOConfig
from mlx_align.config.options import options_from
from mlx_align.config.stages import (
    CPOConfig,
    DPOConfig,
    EvalMathConfig,
    InitModelConfig,
    KTOConfig,
    ORPOConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
    TrainSettings,
)
from mlx_align.core.errors import DataError, RunError, UserError


def check_writable(out: Path, directory: bool = True) -> None:
    """Fail now, not after training, when ``out`` (a directory, or a file's
    directory) cannot be written."""
    folder = out if directory else out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mlx-align-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError("--out", f"cannot write to {folder}: {e.strerror}") from None


TRAINING_STAGES: dict[str, type] = {}  # stage name -> its config class


def config_for(name: str, argv: list[str]):
    """The config ``mlx-align NAME ARGV`` would run (a training stage; nothing runs)."""
    cls = TRAINING_STAGES[name]
    flags = dict(plan.commands[name].make_context(name, list(argv)).params)
    return build_config(cls, flags, flags.pop("config_file", None))


def stage_command(name: str, cls: type, epilog: str) -> Callable:
    def decorate(run: Callable) -> Callable:
        @cli.command(name, help=run.__doc__, epilog=epilog)
        @options_from(cls)
        @click.option(
            "--print-config",
            is_flag=True,
            help="Print every setting (defaults included) as the YAML --config "
            "reads, and exit without running.",
        )
        def command(config_file: str | None, print_config: bool, **flags) -> None:
            config = build_config(cls, flags, config_file)
            if print_config:
                click.echo(config_yaml(config, name), nl=False)
                return
            if getattr(config, "out", ""):  # before any model loads
                check_writable(Path(config.out), directory=cls is not EvalMathConfig)
            if issubclass(cls, TrainSettings):
                config = planned(name, config)
                from mlx_align.core import distributed

                if distributed.size() > 1:
                    click.echo(f"mlx-align {name}: {distributed.describe()}", err=True)
                if distributed.is_main():  # `--config R/config.yaml` runs it again
                    (Path(config.out) / "config.yaml").write_text(
                        config_yaml(config, name)
                    )
            run(config)

        if issubclass(cls, TrainSettings):
            TRAINING_STAGES[name] = cls
            plan_command(name, cls, epilog)
        return command

    return decorate


def planned(name: str, config):
    """``config`` fitted to ``--memory-limit`` (``apps/plan.py``), before any weight
    loads. Under the default (auto) a plan that cannot be made is said and skipped."""
    from mlx_align.apps.plan import fit_to_memory

    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    try:
        return fit_to_memory(name, config, echo)
    except (DataError, UserError):  # bad input: the run would fail on it too
        raise
    except Exception as e:  # a family the planner does not know
        if config.memory_limit.strip().lower() != "auto":
            raise  # a limit the user set is kept or refused, never skipped
        echo(f"memory plan skipped: {type(e).__name__}: {str(e)[:200]}")
        return config


def plan_command(name: str, cls: type, epilog: str) -> None:
    """``mlx-align plan NAME``: the stage's own flags, its predicted peak memory."""

    @plan.command(
        name,
        help=f"Predict the peak memory of `mlx-align {name}` with these flags "
        "(no weight is loaded; the data is read and batched).",
        epilog=epilog.replace("mlx-align ", "mlx-align plan ", 1).split(
            "\n\n  mlx-align", 1
        )[0],
    )
    @options_from(cls)
    def command(config_file: str | None, **flags) -> None:
        from mlx_align.apps.plan import print_plan

        print_plan(name, build_config(cls, flags, config_file))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
def cli() -> None:
    """mlx-align: pretrain, SFT, preference-tune, RL-tune and fuse language models on MLX."""


@cli.group(
    epilog="Examples:\n\n  mlx-align plan dpo --model Qwen/Qwen2.5-0.5B-Instruct --data D --max-length 2048\n\n"
    "  mlx-align plan grpo --model M --data D --group-size 8 --memory-limit 16GB\n\n"
    "A training stage plans by itself before it loads (--memory-limit, default auto)."
)
def plan() -> None:
    """Predict a training run's peak memory before it loads: `mlx-align plan dpo --model M --data D`."""


@stage_command(
    "init-model",
    InitModelConfig,
    "Example:\n\n  mlx-align init-model --preset tiny --corpus data/pretrain --out models/base",
)
def init_model_command(config: InitModelConfig) -> None:
    """Build a llama-style model and a byte-level BPE tokenizer from scratch, offline."""
    from mlx_align.model.tiny import init_model_from_config

    path = init_model_from_config(config)
    click.echo(f"model written to {path}")


@stage_command(
    "pretrain",
    PretrainConfig,
    "Example:\n\n  mlx-align pretrain --model models/base --data data/pretrain --out runs/pt --steps 500",
)
def pretrain_command(config: PretrainConfig) -> None:
    """Next-token training of the whole model on `text` JSONL records."""
    from mlx_align.stages.pretrain import run_pretrain

    click.echo(f"model written to {run_pretrain(config)}")


@stage_command(
    "sft",
    SFTConfig,
    "Examples:\n\n  mlx-align sft --model runs/pt/model --data data/sft --out runs/sft\n\n"
    "  mlx-align sft --model M --data D --out R --dora --lora-rank 16\n\n"
    "  mlx-align sft --model M --data D --out R --quantize 4   # QLoRA\n\n"
    "  mlx-align sft --config sft.yaml --steps 50   # flags override the file",
)
def sft_command(config: SFTConfig) -> None:
    """Supervised fine-tuning on completions (LoRA by default; --dora, --full, --quantize)."""
    from mlx_align.stages.sft import run_sft

    click.echo(f"result written to {run_sft(config)}")


@stage_command(
    "dpo",
    DPOConfig,
    "Examples:\n\n  mlx-align dpo --model runs/pt/model --data data/preference --out runs/dpo\n\n"
    "  mlx-align dpo --model M --data D --out R --loss ipo --beta 0.5\n\n"
    "  mlx-align dpo --model M --data D --out R --loss apo_zero   # any of TRL's 15 loss types\n\n"
    "  mlx-align dpo --model M --data D --out R --loss sigmoid --loss bco_pair --loss sft "
    "--loss-weights 0.8,0.2,1.0   # MPO\n\n"
    "  mlx-align dpo --model M --data D --out R --f-divergence-type js_divergence   # f-DPO\n\n"
    "  mlx-align dpo --model M --data D --out R --ld-alpha 0.5 --use-weighting   # LD-DPO + WPO\n\n"
    "  mlx-align dpo --model M --data D --out R --sft-weight 1.0   # RPO\n\n"
    "  mlx-align dpo --model M --data D --out R --ref-model SFT_MODEL --no-precompute",
)
def dpo_command(config: DPOConfig) -> None:
    """Direct preference optimisation (sigmoid, ipo, hinge, robust) on prompt/chosen/rejected."""
    from mlx_align.stages.dpo import run_dpo

    click.echo(f"result written to {run_dpo(config)}")


@stage_command(
    "orpo",
    ORPOConfig,
    "Example:\n\n  mlx-align orpo --model runs/pt/model --data data/preference --out runs/orpo --beta 0.1",
)
def orpo_command(config: ORPOConfig) -> None:
    """Odds-ratio preference optimisation: SFT on chosen + odds-ratio term, no reference."""
    from mlx_align.stages.orpo import run_orpo

    click.echo(f"result written to {run_orpo(config)}")


@stage_command(
    "cpo",
    CPOConfig,
    "Examples:\n\n  mlx-align cpo --model runs/pt/model --data data/preference --out runs/cpo\n\n"
    "  mlx-align cpo --model M --data D --out R --loss simpo --cpo-alpha 0 --beta 2.0   # SimPO\n\n"
    "  mlx-align cpo --model M --data D --out R --loss alphapo --alpha 0.25 --beta 2.0   # AlphaPO\n\n"
    "D holds preference pairs, as for dpo. No reference model is loaded.",
)
def cpo_command(config: CPOConfig) -> None:
    """CPO, SimPO or AlphaPO: a preference loss on the policy alone, no reference."""
    from mlx_align.stages.cpo import run_cpo

    click.echo(f"result written to {run_cpo(config)}")


@stage_command(
    "reward",
    RewardConfig,
    "Examples:\n\n  mlx-align reward --model runs/sft-fused --data data/preference --out runs/rm\n\n"
    "  mlx-align reward --model M --data D --out R --center-rewards-coefficient 0.01\n\n"
    "  mlx-align reward --model M --data D --out R --full   # train every weight",
)
def reward_command(config: RewardConfig) -> None:
    """Bradley-Terry reward model (backbone + scalar head) on prompt/chosen/rejected[/margin]."""
    from mlx_align.stages.reward import run_reward

    click.echo(f"reward model written to {run_reward(config)}")


@stage_command(
    "kto",
    KTOConfig,
    "Examples:\n\n  mlx-align kto --model runs/sft/model --data data/kto --out runs/kto\n\n"
    "  mlx-align kto --model M --data data/preference --out R   # pairs are split\n\n"
    "  mlx-align kto --model M --data D --out R --desirable-weight 1.33\n\n"
    "  mlx-align kto --model M --data D --out R --ref-model SFT_MODEL --no-precompute",
)
def kto_command(config: KTOConfig) -> None:
    """Kahneman-Tversky optimisation on unpaired prompt/completion/label data."""
    from mlx_align.stages.kto import run_kto

    click.echo(f"result written to {run_kto(config)}")


@stage_command(
    "grpo",
    GRPOConfig,
    "Examples:\n\n  mlx-align grpo --model runs/sft-fused --data data/grpo --out runs/grpo --reward math\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --reward format --reward-weights 1.0,0.2\n\n"
    "  mlx-align grpo --model M --data D --out R --reward my_pkg.rewards:length_penalty --iterations 2 "
    "--epsilon-high 0.28 --loss dapo --scale-rewards none\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --loss grpo "
    "--importance-sampling-level sequence   # GSPO\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --loss cispo --epsilon-high 5.0\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --top-entropy-quantile 0.2 "
    "--entropy-coef 0.01\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --reward format "
    "--multi-objective-aggregation normalize_then_sum   # GDPO\n\n"
    "  mlx-align grpo --model M --data D --out R --reward math --tool mytools:add "
    "--max-turns 4   # multi-turn, calling add(a, b)\n\n"
    "  mlx-align grpo --model M --data D --out R --reward mytools:solved "
    "--environment mytools:make_game   # one environment per trajectory\n\n"
    "Defaults are TRL 1.16's GRPOConfig's (loss dapo, G = 8, β = 0, ε = 0.2, "
    "temperature 1.0, 256 new tokens) except: --learning-rate 1e-5 (TRL's 1e-6, "
    "for full fine-tuning; LoRA wants more), --batch-size counts prompts (TRL's "
    "per_device_train_batch_size counts completions), and the advantages' std is a "
    "population std (TRL's is unbiased).",
)
def grpo_command(config: GRPOConfig) -> None:
    """Group relative policy optimisation with verifiable rewards (no reward model, no critic)."""
    from mlx_align.stages.grpo import run_grpo

    click.echo(f"result written to {run_grpo(config)}")


@stage_command(
    "rloo",
    RLOOConfig,
    "Examples:\n\n  mlx-align rloo --model runs/dpo-fused --data data/grpo --out runs/rloo --reward math\n\n"
    "  mlx-align rloo --model M --data D --out R --reward math --group-size 4 --beta 0   # no reference\n\n"
    "  mlx-align rloo --model M --data D --out R --reward mod:fn --normalize-advantages\n\n"
    "D holds prompts (train.jsonl with prompt + answer), as for grpo. Defaults are "
    "TRL's RLOOConfig's (group size 2, beta 0.05) except the learning rate (1e-5 for "
    "LoRA; TRL's 1e-6).",
)
def rloo_command(config: RLOOConfig) -> None:
    """RLOO: G samples per prompt, each against the mean of the others; KL in the reward."""
    from mlx_align.stages.rloo import run_rloo

    click.echo(f"result written to {run_rloo(config)}")


@stage_command(
    "online-dpo",
    OnlineDPOConfig,
    "Examples:\n\n  mlx-align online-dpo --model runs/sft-fused --data data/prompts --out runs/odpo --reward-model runs/rm\n\n"
    "  mlx-align online-dpo --model M --data D --out R --reward math --loss ipo\n\n"
    "  mlx-align online-dpo --model M --data D --out R --judge-model M   # RLAIF: M judges its samples\n\n"
    "  mlx-align online-dpo --model M --data D --out R --judge my_pkg.judges:rubric\n\n"
    "D holds prompts (train.jsonl; valid.jsonl for the held-out win rate), as for grpo.",
)
def online_dpo_command(config: OnlineDPOConfig) -> None:
    """Online DPO: two samples per prompt from the policy, labelled by a judge, a DPO step."""
    from mlx_align.stages.online_dpo import run_online_dpo

    click.echo(f"result written to {run_online_dpo(config)}")


@stage_command(
    "eval-math",
    EvalMathConfig,
    "Examples:\n\n  mlx-align eval-math --model runs/sft-fused --data data/grpo --split test\n\n"
    "  mlx-align eval-math --model runs/tools-grpo-fused --data data/tools/grpo "
    "--tool calculator:add --max-turns 4 --max-tokens 80 --out eval/tools.jsonl",
)
def eval_math_command(config: EvalMathConfig) -> None:
    """Held-out accuracy on prompt/answer math problems with greedy decoding."""
    from mlx_align.apps.eval_math import run_eval_math

    run_eval_math(config)


@stage_command(
    "ppo",
    PPOConfig,
    "Examples:\n\n  mlx-align ppo --model runs/sft-fused --data data/grpo --out runs/ppo --reward math\n\n"
    "  mlx-align ppo --model runs/sft-fused --data data/prompts --out runs/ppo --reward-model runs/rm "
    "--kl-coef 0.05 --ppo-epochs 4 --num-mini-batches 2\n\n"
    "  mlx-align ppo --model M --data D --out R --reward-model RM --value-model models/small "
    "--vf-coef 0.1 --cliprange-value 0.2 --gamma 1.0 --lam 0.95\n\n"
    "  mlx-align ppo --model M --data D --out R --reward mytools:solved "
    "--environment mytools:make_game   # multi-turn, as grpo\n\n"
    "D holds prompts (train.jsonl; valid.jsonl for held-out scores), as for grpo. The policy's "
    "adapters land in R (fuse them with `mlx-align fuse`), the critic in R/critic.",
)
def ppo_command(config: PPOConfig) -> None:
    """PPO with a critic: KL-shaped rewards from a reward model or function, GAE, clipped updates."""
    from mlx_align.stages.ppo import run_ppo

    click.echo(f"result written to {run_ppo(config)}")


for tool in (score_command, rerank_command, fuse_command, upload_command, plot_command, set_template_command):  # fmt: skip
    cli.add_command(tool)
cli.add_command(chat_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: fast BLAS first, then one-line errors for bad input."""
    from mlx_align.core.blas import blas_notice, ensure_fast_blas

    ensure_fast_blas()
    click.echo(blas_notice(), err=True)
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except (DataError, UserError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RunError as e:
        click.echo(f"stopped: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
