"""Numba settings shared by every kernel, kept in one place so they are reviewed once.

- `kernel`: a parallel entry point. prange only on its outermost loop; each iteration writes a disjoint part
  of the output and reads nothing another iteration writes, so results are bit-identical whatever the
  thread count and from run to run.
- `helper`: a serial function called from inside a kernel's prange body.

fastmath stays off: it lets LLVM reorder sums and drop NaN checks, which breaks the parity tests and
max-pool NaN propagation. Only the convolutions' multiply-add loops allow its `contract` flag
(contracting_kernel, contracting_helper): a*b + c may become one FMA, rounded once, decided at compile time.
error_model="numpy" only removes the ZeroDivisionError checks from divisions.
cache=True stores compiled code under __pycache__/npunet-<build tag>/ beside the source, or under
$NUMBA_CACHE_DIR/npunet-<build tag>/ when set; on a read-only install (package folder not writable,
NUMBA_CACHE_DIR unset) under ~/.cache/npunet/numba/npunet-<build tag>/ (see _cache_dir_for_read_only_install
and _tagged_cache_dir). NUMBA_DISABLE_JIT=1 runs the
same source as plain Python, for debugging.

Vector width: LLVM's tuning for Intel server CPUs (skylake-avx512 .. graniterapids) carries the subtarget
feature `prefer-256-bit`, so on those CPUs Numba emitted 256-bit (ymm) loops although the CPU has 512-bit
registers, while on AMD Zen 4/5 it emitted zmm (issue 12: on an Intel Xeon the dense 3x3 convs took about
twice their Zen 4 time).
_full_width_vectors() switches that preference off when the CPU has AVX-512 (it must run before the first
kernel below is compiled), and the compiled kernels are cached per build tag (see _tagged_cache_dir), so code
compiled with other settings is never loaded. tests/test_vector_width.py compiles the hot kernels for
sapphirerapids and znver4 and checks their hot loops use zmm FMAs.
"""

import hashlib
import os
import tempfile
from pathlib import Path

import llvmlite.binding
import numba
import numpy as np


def _cache_dir_for_read_only_install():
    """If NUMBA_CACHE_DIR is unset and the package folder is not writable (a read-only or system install),
    point Numba's cache at a user-writable folder before any kernel below is compiled, so that the compiled
    kernels are still cached and the second start is fast: $XDG_CACHE_HOME/npunet/numba, else
    ~/.cache/npunet/numba (else a folder in the temp dir)."""
    if os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR:
        return
    if os.access(Path(__file__).parent / "__pycache__", os.W_OK) or (
            not (Path(__file__).parent / "__pycache__").exists() and os.access(Path(__file__).parent, os.W_OK)):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(base, "npunet", "numba"), os.path.join(tempfile.gettempdir(), "npunet-numba")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = folder      # for child processes
            numba.config.CACHE_DIR = folder             # read by Numba's cache locator at decoration time
            return


_cache_dir_for_read_only_install()

# OpenMP threads (Numba's "omp" threading layer, GNU libgomp) spin for a while after each parallel region in
# case another follows. On a busy 2-core machine that spinning took the core another thread needed: a forward
# of one slice took 490 ms with 2 threads instead of 23 ms. Passive waiting (OMP_WAIT_POLICY=PASSIVE) fixed
# that but cost 30 % at batch 1 on an idle machine (wake-ups between the ~70 kernels of a forward). A short
# spin (10,000 rounds, libgomp's default is 300,000) kept the idle speed and cut the busy case to 50 ms
# (AMD EPYC family 26, 2026-11-29, issue 12). Set only when the user has chosen neither; read when libgomp
# loads, at the first parallel kernel call.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"


def cpu_features():
    """The feature string Numba compiles for: $NUMBA_CPU_FEATURES when set, else the host's (LLVM's view)."""
    if numba.config.CPU_FEATURES is not None:
        return numba.config.CPU_FEATURES
    return llvmlite.binding.get_host_cpu_features().flatten()


def cpu_name():
    """The CPU Numba tunes for: $NUMBA_CPU_NAME when set, else the host CPU as LLVM names it."""
    return numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()


def _full_width_vectors():
    """With AVX-512 in the features, add -prefer-256-bit to them (unless the user's $NUMBA_CPU_FEATURES already
    says either way), so that LLVM vectorises with zmm registers on Intel as it does on AMD. The features, not
    the CPU name, decide the instructions: a CPU name LLVM does not know falls back to a generic tuning, but
    with the host's features it still gets AVX-512."""
    features = cpu_features()
    if "+avx512f" in features.split(",") and "prefer-256-bit" not in features:
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_full_width_vectors()


def _optimisation_level():
    """LLVM's -O1 instead of Numba's default -O3 for everything compiled in this process, unless the user's
    $NUMBA_OPT says otherwise (it must run before the first kernel below is compiled, as _full_width_vectors).
    The loop and SLP vectorisers stay on (Numba enables them at every level); what -O3 adds (more inlining,
    unrolling, argument promotion) bought nothing measurable for these hand-shaped loops. Compiling every
    kernel took 25.8-26.0 s of one core against 29.7-29.9 s (13 % less, the first run's wait); the forward ran
    at the same speed (2 threads, 256x256 slices, medians over 5 interleaved processes: batch 8 27.0 against
    28.0 ms per slice, batch 1 32.7 against 31.7, each within the runs' spread) and gave the same logits to
    the last bit (Intel Xeon family 6 model 167, 2026-12-06; tests/test_vector_width.py still finds zmm FMAs in
    the hot loops compiled for sapphirerapids and znver4). -O0 compiled in 16 s but ran 40x slower."""
    if "NUMBA_OPT" not in os.environ:
        numba.config.OPT = type(numba.config.OPT)(1)


_optimisation_level()

_OPTIONS = dict(cache=True, fastmath=False, error_model="numpy")
# The inner loops of the convolutions may fuse a*b + c into one FMA (one rounding instead of two), nothing else:
# no reordering, NaN and Inf kept. Decided at compile time, so the same on every thread count and tiling.
_CONTRACT = dict(_OPTIONS, fastmath={"contract"})


def _build_tag():
    """Hash of what the compiled code depends on beyond a function's own bytecode, which is all Numba's cache
    index checks: the kernel sources (a helper changed in another file), the compile options, the CPU name and
    features (a different $NUMBA_CPU_FEATURES), LLVM's optimisation level, and numba/llvmlite versions."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    h.update(repr((_OPTIONS, _CONTRACT, cpu_name(), cpu_features(), int(numba.config.OPT), numba.__version__,
                   llvmlite.__version__)).encode())
    return h.hexdigest()[:12]


BUILD_TAG = _build_tag()


def _tagged_cache_dir():
    """Numba's cache folder for this build tag: <base>/npunet-<tag>, base being $NUMBA_CACHE_DIR (or the
    user-wide folder chosen above) when set, else the kernels' own __pycache__."""
    base = numba.config.CACHE_DIR or str(Path(__file__).parent / "__pycache__")
    return os.path.join(base, f"npunet-{BUILD_TAG}")


_CACHE_DIR = _tagged_cache_dir()


def _njit(fn, **options):
    """numba.njit(**options)(fn), its cache under _CACHE_DIR. Numba picks a function's cache folder when it is
    decorated, so CACHE_DIR is set for that moment only and other users of Numba in the process keep theirs."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _CACHE_DIR
    try:
        return numba.njit(**options)(fn)
    finally:
        numba.config.CACHE_DIR = saved


def kernel(fn):
    """njit(parallel=True) with the project's settings."""
    return _njit(fn, parallel=True, **_OPTIONS)


def serial_kernel(fn):
    """njit (serial, cached) with the project's settings: an entry point called from Python whose work is too
    small to share between threads."""
    return _njit(fn, **_OPTIONS)


def helper(fn):
    """njit (serial) with the project's settings, for functions called inside a kernel. Not cached on its own:
    a cached kernel holds the machine code of the helpers it calls, so a helper is only compiled when a kernel
    is, and two processes compiling different kernels at once (npunet.precompile) never write the same
    helper's cache index (Numba's index of one function is not safe against two writers)."""
    return _njit(fn, **dict(_OPTIONS, cache=False))


def contracting_kernel(fn):
    """kernel, with a*b + c fused into FMAs (for the convolutions' multiply-add loops only)."""
    return _njit(fn, parallel=True, **_CONTRACT)


def contracting_helper(fn):
    """helper, with a*b + c fused into FMAs."""
    return _njit(fn, **dict(_CONTRACT, cache=False))


# ---- shared Python-side checks (run before entering a kernel) ----

def as_f32(a, name, ndim=None):
    """a as a C-contiguous float32 array (copied once only if needed); checks ndim when given."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def output(out, shape, dtype=np.float32, inputs=()):
    """A fresh output, or `out` checked for shape, dtype and C-contiguity (and not overlapping `inputs`)."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = (getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__))
        raise ValueError(f"out must be a writeable C-contiguous {np.dtype(dtype).name} array of shape "
                         f"{tuple(shape)}, got {got}")
    for a in inputs:
        if np.may_share_memory(out, a):
            raise ValueError(f"out (shape {out.shape}) must not overlap an input (shape {a.shape}) for this op")
    return out


def finish(y, out):
    """The reference twins' ending: cast the float64 result to float32, into `out` when given."""
    if out is None:
        return y.astype(np.float32)
    if out.shape != y.shape:
        raise ValueError(f"out has shape {out.shape}, expected {y.shape}")
    out[...] = y
    return out
