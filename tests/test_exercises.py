"""recipes/exercises: each of the seven scripts passes its own checks at its
smallest size (``--quick``) and writes its plot; a broken loss or estimator
makes a check fail and the exit status non-zero."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXERCISES = Path(__file__).resolve().parents[1] / "recipes" / "exercises"
NAMES = [
    "ex1_bradley_terry",
    "ex2_reward_model",
    "ex3_dpo_gradient",
    "ex4_dpo_margin",
    "ex5_beta_sweep",
    "ex6_kl_chain_rule",
    "ex7_reward_hacking",
]


@pytest.fixture
def exercise(monkeypatch, tmp_path):
    """Import an exercise script by name (recipes/ is a folder of scripts, not a package)."""
    monkeypatch.syspath_prepend(str(EXERCISES))
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))
    return importlib.import_module


def test_every_exercise_has_a_script():
    assert sorted(p.stem for p in EXERCISES.glob("ex[0-9]_*.py")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_exercise_passes_its_checks_at_the_smallest_size(
    name, exercise, tmp_path, capsys
):
    status = exercise(name).main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "[FAIL]" not in out and "[PASS]" in out
    plot = tmp_path / f"{name}.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_python(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLX_ALIGN_NO_OPENBLAS": "1"}  # no re-exec for a preload
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=EXERCISES
    )


def test_the_exit_status_is_the_checks(tmp_path):
    """From the command line: 0 when every check passes, 1 when one fails (here
    ex1 with a hinge loss in place of the package's Bradley-Terry loss)."""
    out = str(tmp_path)
    passed = run_python(["ex1_bradley_terry.py", "--quick", "--out", out])
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "all checks passed" in passed.stdout
    broken = run_python(
        [
            "-c",
            "import mlx.core as mx, mlx_align.losses.preference as losses\n"
            "losses.bt_loss = lambda c, r, m=None: (mx.maximum(1 - (c - r), 0.0), {})\n"
            "import exercise_common, ex1_bradley_terry as ex\n"
            f"exercise_common.main_guard(lambda: ex.main(['--quick', '--out', {out!r}]))",
        ]
    )
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "[FAIL] loss at margin 0 is ln 2" in broken.stdout


def test_bradley_terry_checks_catch_a_wrong_loss(exercise, tmp_path, monkeypatch):
    """A hinge max(0, 1 - m) in place of -log sigma(m): not ln 2 at 0, flat past 1."""
    import mlx.core as mx

    def hinge(chosen, rejected, margin=None):
        return mx.maximum(1.0 - (chosen - rejected), 0.0), {}

    monkeypatch.setattr("mlx_align.losses.preference.bt_loss", hinge)
    assert exercise("ex1_bradley_terry").main(["--quick", "--out", str(tmp_path)]) == 1


def test_dpo_gradient_checks_catch_a_sign_error(exercise, tmp_path, monkeypatch):
    from mlx_align.losses import dpo

    real = dpo.dpo_sigmoid_loss

    def swapped(pair, beta):  # prefers the rejected completion
        pc, pr, rc, rr = pair[:4]
        return real(dpo.DPOPair.of(pr, pc, rr, rc), beta)

    monkeypatch.setattr("mlx_align.losses.dpo.dpo_sigmoid_loss", swapped)
    assert exercise("ex3_dpo_gradient").main(["--quick", "--out", str(tmp_path)]) == 1


def test_chain_rule_check_catches_the_reversed_kl(exercise, tmp_path, monkeypatch):
    """Per-token KL(q || p) does not sum to the sequence-level KL(p || q)."""
    import numpy as np

    ex6 = exercise("ex6_kl_chain_rule")
    monkeypatch.setattr(
        ex6, "kl", lambda p, q: float(np.sum(q * (np.log(q) - np.log(p))))
    )
    assert ex6.main(["--quick", "--out", str(tmp_path)]) == 1


def test_beta_sweep_order_check_rejects_ties_and_reversals(exercise):
    falling = exercise("ex5_beta_sweep").strictly_falling
    assert falling([8.0, 4.0, 0.8, 0.4])
    assert not falling([8.0, 4.0, 4.0, 0.4])
    assert not falling([0.6, 0.7, 0.07, 0.02])


def test_length_reward_pays_for_characters_only(exercise):
    reward = exercise("ex7_reward_hacking").length_reward
    assert reward(["p", "p"], [" 657", " 1 2 3 4 5"], answer=["657", "657"]) == [
        0.4,
        1.0,
    ]
