"""`mlx-align dpo`'s held-out metrics against TRL's ``DPOTrainer.evaluate()`` on the
same weights and pairs, for every DPO loss type.

Not a test of the suite (torch and TRL are no project dependency): run it by
hand with a throwaway TRL venv (see ``preference_losses.py``),

    .venv/bin/python tests/trl_parity/dpo_evaluate.py --trl-python /tmp/trl-venv/bin/python

It builds a tiny llama (``model/tiny.py``, saved in mlx-lm's layout, which
transformers reads as ``LlamaForCausalLM``), trains DPO adapters on it for a
few steps and fuses them: that is the policy, the untrained model the
reference. Then, for each loss configuration, ``mlx-align dpo --model POLICY
--ref-model BASE`` runs one step at learning rate 1e-12 (the new adapters start
at zero, so the weights stay the policy's) with an evaluation over the
held-out pairs in one batch, and TRL's ``DPOTrainer(model=POLICY,
ref_model=BASE).evaluate()`` scores the same pairs, also in one batch. The
table shows the largest difference between ``val_*`` and TRL's ``eval_*``
over the loss and the metrics both log. Exit 1 when one exceeds 1e-4.

One adjustment on TRL's side, on by default: TRL 1.16 gives its reference
the fused LM head that computes log-probs alone, and on this CPU that head
disagrees with the policy's (which also computes entropy and the top-1) by
about 1e-4 per token, so ``evaluate()`` with ``model`` and ``ref_model`` the
same weights reports a loss of 0.69264, not ln 2, and rewards of 0.002
(``--trl-reference-head`` keeps TRL's own and shows it). The script gives the
reference the policy's head, after which TRL's policy == reference is
exactly ln 2; mlx-align scores both models with one code path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DPO_CASES, compare, trl_values  # noqa: E402

CASES = [
    *DPO_CASES,
    {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"},
    {"loss_type": ["sigmoid"], "ld_alpha": 0.5},
    {"loss_type": ["ipo"], "ld_alpha": 0.3},
    {"loss_type": ["sigmoid"], "use_weighting": True},
    {"loss_type": ["apo_zero", "bco_pair"], "use_weighting": True},
]
METRICS = [
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
]
BETA = 0.5
WORDS = "apple river stone cloud tiger piano lemon forest".split()


def pairs(words: list[str]) -> list[dict]:
    """Preference pairs of different lengths, explicit prompts."""
    return [
        {
            "prompt": f"Question: What about the {w}?\nAnswer:",
            "chosen": " It is good." if i % 2 else f" The {w} is good, really.",
            "rejected": " Bad." if i % 3 else f" It is a bad {w}.",
        }
        for i, w in enumerate(words)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def align(*argv: str) -> None:
    cli = Path(sys.executable).parent / "mlx-align"
    done = subprocess.run([str(cli), *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"mlx-align {argv[0]} failed:\n{done.stderr[-2000:]}")


def build(work: Path) -> tuple[Path, Path, Path]:
    """(base model, policy model, data dir): the policy is DPO-trained and fused."""
    from mlx_align.model.tiny import PRESETS, init_model

    base, policy, data = work / "base", work / "policy", work / "data"
    texts = [f"{p['prompt']}{p['chosen']}{p['rejected']}" for p in pairs(WORDS * 4)]
    init_model(base, PRESETS["tiny"], texts * 5, seed=0)
    write_jsonl(data / "train.jsonl", pairs(WORDS) * 2)
    write_jsonl(data / "valid.jsonl", pairs(WORDS))
    common = ["--data", str(data), "--max-length", "64", "--save-every", "0"]
    align("dpo", "--model", str(base), "--out", str(work / "trained"), *common,
          "--steps", "8", "--batch-size", "4", "--learning-rate", "5e-3",
          "--beta", str(BETA), "--eval-every", "0")  # fmt: skip
    align("fuse", "--model", str(base), "--adapter-path", str(work / "trained"),
          "--save-path", str(policy))  # fmt: skip
    return base, policy, data


def mlx_side(base: Path, policy: Path, data: Path, work: Path, case: dict) -> dict:
    """One step at learning rate 1e-12, then the evaluation over the 8 valid pairs."""
    out = work / ("mlx-" + "-".join(f"{k}={v}" for k, v in case.items()))
    flags = []
    for name in case["loss_type"]:
        flags += ["--loss", name]
    for key in ("label_smoothing", "f_divergence_type", "ld_alpha"):
        if key in case:
            flags += ["--" + key.replace("_", "-"), str(case[key])]
    if case.get("use_weighting"):
        flags += ["--use-weighting"]
    if "loss_weights" in case:
        flags += ["--loss-weights", ",".join(map(str, case["loss_weights"]))]
    align("dpo", "--model", str(policy), "--ref-model", str(base), "--data", str(data),
          "--out", str(out), "--steps", "1", "--batch-size", "8", "--learning-rate", "1e-12",
          "--warmup-steps", "0", "--eval-every", "1", "--save-every", "0",
          "--max-length", "64", "--beta", str(BETA), "--max-batch-tokens", "0", *flags)  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = next(m for m in lines if "val_loss" in m)
    return {name: val["val_" + name] for name in METRICS}


def trl_side() -> None:
    """Reads {"base", "policy", "data", "cases"}; prints TRL's eval metrics per case."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    job = json.load(sys.stdin)
    tokenizer = AutoTokenizer.from_pretrained(job["base"])
    valid = load_dataset("json", data_files=str(Path(job["data"]) / "valid.jsonl"))
    results = []
    for case in job["cases"]:
        settings = {k: v for k, v in case.items()}
        with tempfile.TemporaryDirectory() as out:
            args = DPOConfig(
                output_dir=out,
                beta=BETA,
                per_device_eval_batch_size=8,
                max_length=64,
                report_to=[],
                use_cpu=True,
                **settings,
            )
            trainer = DPOTrainer(
                model=AutoModelForCausalLM.from_pretrained(job["policy"]),
                ref_model=AutoModelForCausalLM.from_pretrained(job["base"]),
                args=args,
                train_dataset=valid["train"],
                eval_dataset=valid["train"],
                processing_class=tokenizer,
            )
            if job.get("same_head"):  # the reference's head as the policy's
                from trl.trainer.utils import add_fused_lm_head

                outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
                if case.get("use_weighting"):
                    outputs += ("log_sum_sq_probs",)
                add_fused_lm_head(trainer.ref_model, outputs=outputs)
            metrics = trainer.evaluate()
        results.append({name: metrics["eval_" + name] for name in METRICS})
    json.dump(results, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--trl-reference-head",
        action="store_true",
        help="keep TRL's own (log-probs only) head on its reference",
    )
    parser.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trl_side:
        trl_side()
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="dpo_parity_"))
    base, policy, data = build(work)
    job = {"base": str(base), "policy": str(policy), "data": str(data), "cases": CASES}
    job["same_head"] = not args.trl_reference_head
    trl = trl_values(args.trl_python, __file__, job)
    title = "DPO evaluate (DPOTrainer.evaluate vs mlx-align dpo's val_*)"
    ours = lambda case: mlx_side(base, policy, data, work, case)  # noqa: E731
    return compare([(title, CASES, trl, ours)], tolerance=1e-4)


if __name__ == "__main__":
    sys.exit(main())
