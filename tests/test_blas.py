"""System OpenBLAS vs mlx-cpu's bundled reference BLAS: same numbers, real swap."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_align import blas

needs_system_openblas = pytest.mark.skipif(
    sys.platform != "linux" or blas.openblas_path() is None,
    reason="needs Linux with a system OpenBLAS (apt-get install libopenblas0-pthread)",
)

# Seeded fp32 matmul (256x384 @ 384x128, scaled so entries are O(1)) plus a
# compiled fused bias + GELU + softmax on top of it.
MATMUL_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import mlx.core as mx
    from mlx_align.blas import loaded_openblas

    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((256, 384), dtype=np.float32))
    w = mx.array(rng.standard_normal((384, 128), dtype=np.float32) / 384**0.5)
    bias = mx.array(rng.standard_normal((128,), dtype=np.float32))
    fused = mx.compile(lambda h: mx.softmax(mx.sigmoid(1.702 * h) * h, axis=-1))
    h = x @ w + bias
    np.save(sys.argv[1], np.stack([np.array(h), np.array(fused(h))]))
    print(json.dumps({"openblas": loaded_openblas()}))
    """
)

REPORT_BLAS = (
    "from mlx_align.blas import ensure_fast_blas, loaded_openblas\n"
    "ensure_fast_blas()\n"
    "import sys, json\n"
    "print(json.dumps({'openblas': loaded_openblas(), 'args': sys.argv[1:]}))\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    """Environment without any BLAS settings inherited from the test runner."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.pop(blas.DISABLE_ENV, None)
    env.pop(blas.REEXEC_MARKER_ENV, None)
    return {**env, **extra}


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_system_openblas
def test_openblas_matches_reference_blas(tmp_path: Path) -> None:
    outputs = {}
    for name, preload in [("reference", None), ("openblas", blas.openblas_path())]:
        env = clean_env(**{blas.DISABLE_ENV: "1"})
        if preload:
            env["LD_PRELOAD"] = preload
        out = tmp_path / f"{name}.npy"
        report = run_json([sys.executable, "-c", MATMUL_WORKER, str(out)], env)
        assert (report["openblas"] is not None) == (name == "openblas"), report
        outputs[name] = np.load(out)
    assert outputs["reference"].shape == (2, 256, 128)
    np.testing.assert_allclose(
        outputs["openblas"], outputs["reference"], rtol=1e-4, atol=1e-4
    )


@needs_system_openblas
@pytest.mark.parametrize("disabled", [False, True])
def test_ensure_fast_blas_reexecs_with_openblas(disabled: bool) -> None:
    env = clean_env(**({blas.DISABLE_ENV: "1"} if disabled else {}))
    report = run_json([sys.executable, "-c", REPORT_BLAS], env)
    assert (report["openblas"] is not None) == (not disabled), report


@needs_system_openblas
def test_ensure_fast_blas_reexecs_console_script(tmp_path: Path) -> None:
    """A shebang script (like the installed `mlx-align`) keeps its arguments."""
    script = tmp_path / "mlx-align-like"
    script.write_text(f"#!{sys.executable}\n{REPORT_BLAS}")
    script.chmod(0o755)
    report = run_json([str(script), "train", "--steps", "3"], clean_env())
    assert report["openblas"] is not None
    assert report["args"] == ["train", "--steps", "3"]


@pytest.mark.parametrize(
    "env",
    [{blas.DISABLE_ENV: "true"}, {blas.REEXEC_MARKER_ENV: "1"}],
)
def test_ensure_fast_blas_stays_put(monkeypatch: pytest.MonkeyPatch, env) -> None:
    def refuse_exec(*args) -> None:
        raise AssertionError("unexpected re-exec")

    monkeypatch.setattr(os, "execve", refuse_exec)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    blas.ensure_fast_blas(["-c", "pass"])
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv(blas.DISABLE_ENV, raising=False)
    monkeypatch.delenv(blas.REEXEC_MARKER_ENV, raising=False)
    blas.ensure_fast_blas(["-c", "pass"])


def test_blas_notice_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    so = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(blas, "loaded_openblas", lambda: so)
    monkeypatch.setenv("LD_PRELOAD", so)
    assert blas.blas_notice() == f"mlx-align: BLAS = OpenBLAS ({so}, preloaded)"

    monkeypatch.setattr(blas, "loaded_openblas", lambda: None)
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv(blas.DISABLE_ENV, "1")
    assert blas.blas_notice().endswith("(disabled by MLX_ALIGN_NO_OPENBLAS)")

    monkeypatch.delenv(blas.DISABLE_ENV)
    monkeypatch.setattr(blas, "openblas_path", lambda: None)
    assert blas.blas_notice() == (
        "mlx-align: BLAS = MLX's bundled reference BLAS"
        " (slow; apt-get install libopenblas0-pthread)"
    )

    monkeypatch.setattr(sys, "platform", "darwin")
    assert blas.blas_notice() == "mlx-align: BLAS = Metal/Accelerate"
