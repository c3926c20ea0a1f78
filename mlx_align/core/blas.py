"""Preload OpenBLAS in place of the reference BLAS bundled with `mlx-cpu`.

The `mlx-cpu` wheel links `libmlx.so` against a bundled reference BLAS
(`mlx_cpu.libs/libblas-*.so`): an fp32 1024x1024 matmul runs at ~5 GFLOP/s
where OpenBLAS gives ~60-250 (README, "Fast BLAS on Linux"). `libmlx.so`
resolves `cblas_sgemm` and friends by ordinary dynamic-symbol lookup, so a
library in `LD_PRELOAD` wins. The dynamic loader reads `LD_PRELOAD` only at
process start, hence `ensure_fast_blas` re-executes the process once with it
set. Only the CLI calls it; importing `mlx_align` (e.g. under pytest) never
re-executes anything.

What is preloaded, first found wins (`preload_library`):

1. a system OpenBLAS (Debian/Ubuntu/Fedora paths, `openblas_path`);
2. OpenBLAS from the `scipy-openblas32` wheel, which the `cpu` extra installs
   on Linux. That wheel prefixes every symbol (`scipy_cblas_sgemm`), so
   `cblas_shim` compiles, once, a small library exporting the plain names
   `libmlx.so` imports and forwarding each to its `scipy_` twin.

`python -m mlx_align.core.blas --library` prints the choice for the Makefile.
"""

import ctypes
import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DISABLE_ENV = "MLX_ALIGN_NO_OPENBLAS"
REEXEC_MARKER_ENV = "MLX_ALIGN_BLAS_REEXEC"
OPENBLAS_DIRS = ("openblas-pthread", "openblas-openmp", "openblas-serial", "")
INSTALL_HINT = (
    "pip install scipy-openblas32 with a C compiler on PATH,"
    " or apt-get install libopenblas0-pthread"
)

# What libmlx.so (mlx 0.32) imports from its bundled BLAS and LAPACK
# (`nm -D --undefined-only libmlx.so`; tests/test_blas.py keeps this honest).
# A name missing here would still resolve, to the bundled library.
MLX_BLAS_SYMBOLS = (
    *("cblas_sgemm", "cblas_dgemm", "cblas_cgemm"),
    *("sgeev_", "dgeev_", "cgeev_", "sgesdd_", "dgesdd_", "cgesdd_"),
    *("ssyevd_", "dsyevd_", "cheevd_", "sgeqrf_", "dgeqrf_", "sorgqr_", "dorgqr_"),
    *("sgetrf_", "dgetrf_", "sgetri_", "dgetri_", "spotrf_", "dpotrf_"),
    *("strtri_", "dtrtri_"),
)

# A GNU indirect function: the loader asks `resolve_<name>` once and binds the
# caller straight to the `scipy_` function, so every argument (Fortran's hidden
# string lengths included) passes through untouched and no signature is
# restated here. The resolver runs when libmlx.so binds the name, after the
# wheel's library (a DT_NEEDED of the shim) is loaded and relocated.
FORWARD_TEMPLATE = """\
extern void scipy_{name}(void);
static void *resolve_{name}(void) {{ return (void *)scipy_{name}; }}
void {name}(void) __attribute__((ifunc("resolve_{name}")));
"""

# scipy-openblas waits for its worker threads by spinning, not yielding: on a
# machine busy with other work a threaded call stalls until the scheduler
# runs the worker again (on the 2-core box a training step took 2.5-5.8 s
# threaded, 0.55 s on one thread, like Debian's OpenBLAS, which yields). So
# one thread unless OPENBLAS_NUM_THREADS asks for more.
ONE_THREAD_UNLESS_ASKED = """
#include <stdlib.h>
extern void scipy_openblas_set_num_threads(int);
__attribute__((constructor)) static void one_thread_unless_asked(void) {
    if (!getenv("OPENBLAS_NUM_THREADS")) scipy_openblas_set_num_threads(1);
}
"""

# Run with a freshly built shim in LD_PRELOAD, as mlx will meet it: the global
# `cblas_sgemm` must exist and do a row-major 1x1 sgemm, 2 * 3.
SHIM_CHECK = """
import ctypes, sys
f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
a, b, c = (f * 1)(2.0), (f * 1)(3.0), (f * 1)(0.0)
sgemm = ctypes.CDLL(None).cblas_sgemm
sgemm.argtypes = [i] * 6 + [f, p, i, p, i, f, p, i]
sgemm(101, 111, 111, 1, 1, 1, 1.0, a, 1, b, 1, 0.0, c, 1)
sys.exit(c[0] != 6.0)
"""


def openblas_path() -> str | None:
    """First system OpenBLAS found among the Debian/Ubuntu/Fedora paths, if any."""
    multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
    candidates = [os.path.join(multiarch, d, "libopenblas.so.0") for d in OPENBLAS_DIRS]
    candidates.append("/usr/lib64/libopenblas.so.0")
    return next((path for path in candidates if os.path.exists(path)), None)


def scipy_openblas_library() -> str | None:
    """`libscipy_openblas*.so` of an installed `scipy-openblas32`, if any.

    Located with `find_spec`, not imported: importing it loads the library.
    """
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = Path(next(iter(spec.submodule_search_locations)), "lib")
    found = sorted(lib_dir.glob("libscipy_openblas*.so"))
    return str(found[0]) if found else None


def shim_source() -> str:
    forwards = (FORWARD_TEMPLATE.format(name=n) for n in MLX_BLAS_SYMBOLS)
    return "\n".join([*forwards, ONE_THREAD_UNLESS_ASKED])


def shim_cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache, "mlx-align")


def c_compiler() -> list[str] | None:
    """`$CC`, else the first of cc/gcc/g++/clang on PATH (MLX's JIT needs g++)."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = next(filter(None, map(shutil.which, ("cc", "gcc", "g++", "clang"))), None)
    return [found] if found else None


def cblas_shim(cache_dir: Path | None = None, build: bool = True) -> str | None:
    """The shim over scipy-openblas32, compiled on first use; None if impossible.

    Named `libopenblas-*` so every check for a preloaded `libopenblas` (here
    and in bench/) counts it. Keyed by the source and the wheel library's path
    and mtime, so a reinstall or a second venv gets its own. `build=False` only
    looks in the cache.
    """
    target = scipy_openblas_library()
    if target is None:
        return None
    source = shim_source()
    stamp = f"{source}\0{target}\0{os.stat(target).st_mtime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    shim = (cache_dir or shim_cache_dir()) / f"libopenblas-scipy32-shim-{key}.so"
    if not shim.exists() and build:
        try:
            build_shim(shim, source, target)
        except (OSError, subprocess.SubprocessError):
            return None
    return str(shim) if shim.exists() else None


def build_shim(shim: Path, source: str, target: str) -> None:
    """Compile and check the shim in a temporary directory, then rename it into
    place, so a concurrent first use never sees a half-written library."""
    compiler = c_compiler()
    if compiler is None:
        raise OSError("no C compiler")
    lib_dir, lib_name = os.path.split(target)
    shim.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=shim.parent) as tmp:
        c_file, built = Path(tmp, "shim.c"), Path(tmp, shim.name)
        c_file.write_text(source)
        compile_cmd = [*compiler, "-x", "c", "-shared", "-fPIC", "-O2"]
        compile_cmd += ["-o", str(built), str(c_file), f"-L{lib_dir}", f"-l:{lib_name}"]
        compile_cmd += ["-Xlinker", "-rpath", "-Xlinker", lib_dir]  # commas are fine
        subprocess.run(compile_cmd, check=True, capture_output=True, timeout=120)
        env = dict(os.environ, LD_PRELOAD=str(built))
        check_cmd = [sys.executable, "-c", SHIM_CHECK]
        subprocess.run(check_cmd, env=env, check=True, capture_output=True, timeout=60)
        os.replace(built, shim)


def preload_library() -> str | None:
    """What to preload for mlx: the system OpenBLAS, else the scipy-openblas32 shim.

    None off Linux (macOS uses Metal/Accelerate), when disabled, or when neither
    is available.
    """
    if sys.platform != "linux" or openblas_disabled():
        return None
    return openblas_path() or cblas_shim()


def openblas_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def loaded_openblas() -> str | None:
    """Path of a libopenblas mapped into this process, read from /proc/self/maps.

    Matches `libopenblas` only: the system library or the shim. numpy's own
    `libscipy_openblas64_` has renamed symbols and never serves mlx. Mapped is
    not the same as used: a libopenblas loaded after `import mlx` shows up here
    but mlx keeps its bundled BLAS, which is why `blas_notice` also checks
    `LD_PRELOAD`.
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


def openblas_threads_calls() -> tuple | None:
    """(get, set) of the thread count of the OpenBLAS mlx calls in this process:
    the system library's, or the scipy-openblas32 wheel's behind the shim; None without one."""
    scope = ctypes.CDLL(None)  # the global symbols: LD_PRELOAD's libraries among them
    for prefix in ("", "scipy_"):
        get = getattr(scope, f"{prefix}openblas_get_num_threads", None)
        put = getattr(scope, f"{prefix}openblas_set_num_threads", None)
        if get is not None and put is not None:
            return get, put
    return None


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """OpenBLAS runs ``n`` threads inside the block (restored after); nothing
    changes without an OpenBLAS. For work spread over several CPU streams,
    whose concurrent threaded BLAS calls would fight over the cores."""
    calls = openblas_threads_calls()
    if calls is None:
        yield
        return
    get, put = calls
    before = get()
    put(n)
    try:
        yield
    finally:
        put(before)


def ensure_fast_blas(argv: list[str] | None = None) -> None:
    """Re-exec this process once with `preload_library()` in `LD_PRELOAD`.

    Call first thing in the console entry point, before `import mlx`; if mlx
    was already imported the re-exec still works (exec replaces the process),
    it only wastes that import. `argv` is the command line to re-run after the
    interpreter, default `sys.orig_argv[1:]`, which keeps interpreter flags
    (`-X`, `-u`, `-m module`) and the console-script path. No-op off Linux,
    when disabled, when there is nothing to preload, when an OpenBLAS is
    already preloaded, or after one re-exec.
    """
    if sys.platform != "linux" or openblas_disabled():
        return
    if os.environ.get(REEXEC_MARKER_ENV) or preloaded_openblas():
        return
    if argv is None:
        if sys.argv[0] in ("", "-"):  # REPL or script on stdin: cannot replay
            return
        argv = sys.orig_argv[1:]
    library = preload_library()
    if library is None:
        return
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
    library = openblas_path() or cblas_shim(build=False)
    if library is None:
        return f"{reference} (slow; {INSTALL_HINT})"
    return f"{reference} (slow; run with LD_PRELOAD={library})"


if __name__ == "__main__":
    # The Makefile's `python -m mlx_align.core.blas --library`: the path, or nothing.
    if sys.argv[1:] != ["--library"]:
        sys.exit("usage: python -m mlx_align.core.blas --library")
    print(preload_library() or "")
