"""OpenBLAS (system, or scipy-openblas32 via the shim) vs mlx-cpu's bundled
reference BLAS: same numbers, and libmlx.so really binds to the preloaded one."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_align.core import blas

needs_system_openblas = pytest.mark.skipif(
    sys.platform != "linux" or blas.openblas_path() is None,
    reason="needs Linux with a system OpenBLAS (apt-get install libopenblas0-pthread)",
)
needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux")

# Seeded fp32 matmul (256x384 @ 384x128, scaled so entries are O(1)) plus a
# compiled fused bias + GELU + softmax on top of it.
MATMUL_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import mlx.core as mx
    from mlx_align.core.blas import loaded_openblas

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
    "from mlx_align.core.blas import blas_notice, ensure_fast_blas, loaded_openblas\n"
    "ensure_fast_blas()\n"
    "import sys, json\n"
    "print(json.dumps({'openblas': loaded_openblas(), 'args': sys.argv[1:],"
    " 'notice': blas_notice()}))\n"
)
# The same on a machine without a system OpenBLAS (the search injected away).
REPORT_BLAS_NO_SYSTEM = (
    "import mlx_align.core.blas\nmlx_align.core.blas.openblas_path = lambda: None\n"
    + REPORT_BLAS
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


@pytest.fixture(scope="module")
def shim_cache(tmp_path_factory) -> Path:
    """An `XDG_CACHE_HOME` holding a freshly built shim over scipy-openblas32."""
    if sys.platform != "linux":
        pytest.skip("the shim is for Linux")
    if blas.scipy_openblas_library() is None:
        pytest.skip("needs scipy-openblas32 (pip install -e '.[cpu]')")
    if blas.c_compiler() is None:
        pytest.skip("needs a C compiler (cc, gcc, g++ or clang)")
    cache = tmp_path_factory.mktemp("xdg-cache")
    shim = blas.cblas_shim(cache / "mlx-align")
    assert shim is not None and Path(shim).parent == cache / "mlx-align"
    return cache


def run_matmul(
    tmp_path: Path, name: str, preload: str | None
) -> tuple[np.ndarray, dict, str]:
    """MATMUL_WORKER in a fresh process: (outputs, report, the library that
    libmlx.so's `cblas_sgemm` was bound to, per the loader's LD_DEBUG log)."""
    log = tmp_path / f"{name}.ld"
    env = clean_env(**{blas.DISABLE_ENV: "1", "LD_DEBUG": "bindings"})
    env["LD_DEBUG_OUTPUT"] = str(log)  # one file per process: log.<pid>
    if preload:
        env["LD_PRELOAD"] = preload
    out = tmp_path / f"{name}.npy"
    report = run_json([sys.executable, "-c", MATMUL_WORKER, str(out)], env)
    binding = re.compile(r"binding file \S*/libmlx\.so \S+ to (\S+) .*`cblas_sgemm'")
    bound = {
        m[1]
        for f in tmp_path.glob(f"{name}.ld.*")
        for m in binding.finditer(f.read_text())
    }
    assert len(bound) == 1, bound
    return np.load(out), report, bound.pop()


@pytest.fixture(scope="module")
def reference_matmul(tmp_path_factory) -> np.ndarray:
    if sys.platform != "linux":
        pytest.skip("the bundled reference BLAS is mlx-cpu's, on Linux")
    outputs, report, bound = run_matmul(tmp_path_factory.mktemp("ref"), "ref", None)
    assert report["openblas"] is None
    assert re.search(r"mlx_cpu\.libs/libblas-", bound), bound
    assert outputs.shape == (2, 256, 128)
    return outputs


@needs_system_openblas
def test_openblas_matches_reference_blas(tmp_path: Path, reference_matmul) -> None:
    outputs, report, bound = run_matmul(tmp_path, "system", blas.openblas_path())
    assert report["openblas"] is not None
    assert os.path.realpath(bound) == os.path.realpath(blas.openblas_path())
    np.testing.assert_allclose(outputs, reference_matmul, rtol=1e-4, atol=1e-4)


def test_shim_serves_mlx_and_matches_reference(
    tmp_path: Path, shim_cache: Path, reference_matmul
) -> None:
    """libmlx.so binds `cblas_sgemm` to the shim, whose ifunc hands out
    `scipy_cblas_sgemm` from the wheel's library; the numbers agree."""
    shim = blas.cblas_shim(shim_cache / "mlx-align", build=False)
    outputs, report, bound = run_matmul(tmp_path, "shim", shim)
    assert report["openblas"] == shim and bound == shim
    log = "".join(f.read_text() for f in tmp_path.glob("shim.ld.*"))
    assert (
        f"{blas.scipy_openblas_library()} [0]: normal symbol `scipy_cblas_sgemm'" in log
    )
    np.testing.assert_allclose(outputs, reference_matmul, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("asked, threads", [(None, 1), ("2", min(2, os.cpu_count()))])
def test_shim_uses_one_thread_unless_asked(
    shim_cache: Path, asked: str | None, threads: int
) -> None:
    """scipy-openblas spin-waits for its workers, so the shim asks for one
    thread; OPENBLAS_NUM_THREADS still wins."""
    env = clean_env(LD_PRELOAD=blas.cblas_shim(shim_cache / "mlx-align", build=False))
    env.pop("OPENBLAS_NUM_THREADS", None)
    if asked:
        env["OPENBLAS_NUM_THREADS"] = asked
    probe = "import ctypes; print(ctypes.CDLL(None).scipy_openblas_get_num_threads())"
    cmd = [sys.executable, "-c", probe]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert int(done.stdout) == threads


THREADS_PROBE = """
from mlx_align.core.blas import blas_threads, openblas_threads_calls
calls = openblas_threads_calls()
if calls is None:
    with blas_threads(1):
        print("none")
else:
    get = calls[0]
    before = get()
    with blas_threads(1):
        inside = get()
    print(before, inside, get())
"""


@pytest.mark.parametrize("library", ["system", "shim", "none"])
def test_blas_threads_sets_one_thread_inside_and_restores(
    library: str, request: pytest.FixtureRequest
) -> None:
    """The judge's CPU streams run BLAS on one thread each: set inside, restored
    after, for the system OpenBLAS and the shim alike; without one, nothing."""
    env = clean_env(OPENBLAS_NUM_THREADS="2")
    if library == "system":
        if sys.platform != "linux" or blas.openblas_path() is None:
            pytest.skip("needs Linux with a system OpenBLAS")
        env["LD_PRELOAD"] = blas.openblas_path()
    elif library == "shim":
        cache = request.getfixturevalue("shim_cache")
        env["LD_PRELOAD"] = blas.cblas_shim(cache / "mlx-align", build=False)
    cmd = [sys.executable, "-c", THREADS_PROBE]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    want = (
        "none"
        if library == "none"
        else f"{min(2, os.cpu_count())} 1 {min(2, os.cpu_count())}"
    )
    assert done.stdout.strip() == want


@needs_linux
def test_shim_forwards_what_libmlx_imports() -> None:
    """MLX_BLAS_SYMBOLS is exactly what libmlx.so takes from its bundled
    BLAS/LAPACK, and scipy-openblas32 has a `scipy_` twin of each."""
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils)")
    mlx_dir = Path(
        next(iter(importlib.util.find_spec("mlx").submodule_search_locations))
    )
    bundled = [*(mlx_dir.parent / "mlx_cpu.libs").glob("lib*.so*")]
    if not bundled:
        pytest.skip("needs the mlx-cpu wheel's bundled BLAS")

    def symbols(library: Path | str, which: str) -> set[str]:
        done = subprocess.run(
            ["nm", "-D", which, str(library)],
            capture_output=True,
            text=True,
            check=True,
        )
        return {line.split()[-1] for line in done.stdout.splitlines()}

    imported = symbols(mlx_dir / "lib" / "libmlx.so", "--undefined-only")
    from_bundled = imported & set().union(
        *(symbols(b, "--defined-only") for b in bundled)
    )
    assert from_bundled == set(blas.MLX_BLAS_SYMBOLS)
    if blas.scipy_openblas_library() is not None:
        exported = symbols(blas.scipy_openblas_library(), "--defined-only")
        assert {f"scipy_{name}" for name in blas.MLX_BLAS_SYMBOLS} <= exported


def test_fallback_to_shim_without_system_openblas(shim_cache: Path) -> None:
    """No system OpenBLAS: the CLI re-execs with the cached shim and says so."""
    env = clean_env(XDG_CACHE_HOME=str(shim_cache))
    report = run_json([sys.executable, "-c", REPORT_BLAS_NO_SYSTEM], env)
    assert report["openblas"].startswith(str(shim_cache / "mlx-align" / "libopenblas-"))
    assert (
        report["notice"]
        == f"mlx-align: BLAS = OpenBLAS ({report['openblas']}, preloaded)"
    )


def test_preload_library_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """System first, else the shim, else nothing; a failed build is silent."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(blas.DISABLE_ENV, raising=False)
    monkeypatch.setattr(blas, "openblas_path", lambda: "/usr/lib/libopenblas.so.0")
    monkeypatch.setattr(blas, "cblas_shim", lambda: pytest.fail("system comes first"))
    assert blas.preload_library() == "/usr/lib/libopenblas.so.0"
    monkeypatch.setattr(blas, "openblas_path", lambda: None)
    monkeypatch.setattr(blas, "cblas_shim", lambda: "/cache/libopenblas-shim.so")
    assert blas.preload_library() == "/cache/libopenblas-shim.so"
    monkeypatch.setenv(blas.DISABLE_ENV, "1")
    assert blas.preload_library() is None

    monkeypatch.undo()
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    assert blas.cblas_shim(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # no half-built leftovers


def test_library_command_prints_the_choice(shim_cache: Path) -> None:
    """What the Makefile preloads: `python -m mlx_align.core.blas --library`."""
    cmd = [sys.executable, "-m", "mlx_align.core.blas", "--library"]
    env = clean_env(XDG_CACHE_HOME=str(shim_cache))
    printed = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    shim = blas.cblas_shim(shim_cache / "mlx-align", build=False)
    assert printed.stdout.strip() == (blas.openblas_path() or shim)
    disabled = {**env, blas.DISABLE_ENV: "1"}
    printed = subprocess.run(
        cmd, env=disabled, capture_output=True, text=True, check=True
    )
    assert printed.stdout == "\n"


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
    monkeypatch.setattr(blas, "cblas_shim", lambda build: "/c/libopenblas-shim.so")
    assert blas.blas_notice().endswith(
        "(slow; run with LD_PRELOAD=/c/libopenblas-shim.so)"
    )
    monkeypatch.setattr(blas, "cblas_shim", lambda build: None)
    assert blas.blas_notice() == (
        "mlx-align: BLAS = MLX's bundled reference BLAS"
        " (slow; pip install scipy-openblas32 with a C compiler on PATH,"
        " or apt-get install libopenblas0-pthread)"
    )

    monkeypatch.setattr(sys, "platform", "darwin")
    assert blas.blas_notice() == "mlx-align: BLAS = Metal/Accelerate"
