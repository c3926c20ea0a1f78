"""Use the system OpenBLAS instead of the reference BLAS bundled with `mlx-cpu`.

The `mlx-cpu` wheel links `libmlx.so` against a bundled reference BLAS
(`mlx_cpu.libs/libblas-*.so`): an fp32 1024x1024 matmul runs at ~4 GFLOP/s
where Debian's OpenBLAS gives ~100+. `libmlx.so` resolves `cblas_sgemm` and
friends by ordinary dynamic-symbol lookup, so a library in `LD_PRELOAD` wins.
The dynamic loader reads `LD_PRELOAD` only at process start, hence
`ensure_fast_blas` re-executes the process once with it set. Only the CLI calls
it; importing `mlx_align` (e.g. under pytest) never re-executes anything.
"""

import os
import platform
import sys

DISABLE_ENV = "MLX_ALIGN_NO_OPENBLAS"
REEXEC_MARKER_ENV = "MLX_ALIGN_BLAS_REEXEC"
OPENBLAS_DIRS = ("openblas-pthread", "openblas-openmp", "openblas-serial", "")
INSTALL_HINT = "apt-get install libopenblas0-pthread"


def openblas_path() -> str | None:
    """First system OpenBLAS found among the Debian/Ubuntu/Fedora paths, if any."""
    multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
    candidates = [os.path.join(multiarch, d, "libopenblas.so.0") for d in OPENBLAS_DIRS]
    candidates.append("/usr/lib64/libopenblas.so.0")
    return next((path for path in candidates if os.path.exists(path)), None)


def openblas_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def loaded_openblas() -> str | None:
    """Path of a libopenblas mapped into this process, read from /proc/self/maps.

    Matches `libopenblas` only: numpy's own `libscipy_openblas64_` has
    renamed symbols and never serves mlx. Mapped is not the same as used: a
    libopenblas loaded after `import mlx` shows up here but mlx keeps its
    bundled BLAS, which is why `blas_notice` also checks `LD_PRELOAD`.
    """
    try:
        with open("/proc/self/maps") as maps:
            lines = [line for line in maps if "libopenblas" in line]
    except OSError:
        return None
    return lines[0].split()[-1] if lines else None


def preloaded_openblas() -> str | None:
    entries = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return next((e for e in entries if "libopenblas" in os.path.basename(e)), None)


def ensure_fast_blas(argv: list[str] | None = None) -> None:
    """Re-exec this process once with the system OpenBLAS in `LD_PRELOAD`.

    Call first thing in the console entry point, before `import mlx`; if mlx
    was already imported the re-exec still works (exec replaces the process),
    it only wastes that import. `argv` is the command line to re-run after the
    interpreter, default `sys.orig_argv[1:]`, which keeps interpreter flags
    (`-X`, `-u`, `-m module`) and the console-script path. No-op off Linux
    (macOS uses Metal/Accelerate), when disabled, when no OpenBLAS is
    installed, when it is already preloaded, or after one re-exec.
    """
    if sys.platform != "linux" or openblas_disabled():
        return
    if os.environ.get(REEXEC_MARKER_ENV) or preloaded_openblas():
        return
    library = openblas_path()
    if library is None:
        return
    if argv is None:
        if sys.argv[0] in ("", "-"):  # REPL or script on stdin: cannot replay
            return
        argv = sys.orig_argv[1:]
    env = dict(os.environ, **{REEXEC_MARKER_ENV: "1"})
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    sys.stdout.flush()  # exec drops unflushed Python buffers
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)


def blas_notice() -> str:
    """One line saying which BLAS mlx's CPU backend uses in this process."""
    prefix = "mlx-align: BLAS ="
    if sys.platform == "darwin":
        return f"{prefix} Metal/Accelerate"
    loaded = loaded_openblas()
    if loaded and preloaded_openblas():
        return f"{prefix} OpenBLAS ({loaded}, preloaded)"
    reference = f"{prefix} MLX's bundled reference BLAS"
    if openblas_disabled():
        return f"{reference} (disabled by {DISABLE_ENV})"
    library = openblas_path()
    if library is None:
        return f"{reference} (slow; {INSTALL_HINT})"
    return f"{reference} (slow; run with LD_PRELOAD={library})"
