"""Numba settings shared by every kernel, kept in one place so they are reviewed once.

- `kernel`: a parallel entry point. prange only on its outermost loop; each iteration writes a disjoint part
  of the output and reads nothing another iteration writes, so results are bit-identical whatever the
  thread count and from run to run.
- `helper`: a serial function called from inside a kernel's prange body.

fastmath stays off: it lets LLVM reorder sums and drop NaN checks, which breaks the parity tests and
max-pool NaN propagation. error_model="numpy" only removes the ZeroDivisionError checks from divisions.
cache=True stores compiled code in __pycache__ beside the source, or under $NUMBA_CACHE_DIR when set; on a
read-only install (package folder not writable, NUMBA_CACHE_DIR unset) it goes to ~/.cache/npunet/numba
(see _cache_dir_for_read_only_install). NUMBA_DISABLE_JIT=1 runs the
same source as plain Python, for debugging.
"""

import os
import tempfile
from pathlib import Path

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

_OPTIONS = dict(cache=True, fastmath=False, error_model="numpy")


def kernel(fn):
    """njit(parallel=True) with the project's settings."""
    return numba.njit(parallel=True, **_OPTIONS)(fn)


def helper(fn):
    """njit (serial) with the project's settings, for functions called inside a kernel."""
    return numba.njit(**_OPTIONS)(fn)


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
