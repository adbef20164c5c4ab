"""Numba settings shared by every kernel, kept in one place so they are reviewed once.

- `kernel`: a parallel entry point. prange only on its outermost loop; each iteration writes a disjoint part
  of the output and reads nothing another iteration writes, so results are bit-identical whatever the
  thread count and from run to run.
- `helper`: a serial function called from inside a kernel's prange body.

fastmath stays off: it lets LLVM reorder sums and drop NaN checks, which breaks the parity tests and
max-pool NaN propagation. error_model="numpy" only removes the ZeroDivisionError checks from divisions.
cache=True stores compiled code in __pycache__ beside the source, or under $NUMBA_CACHE_DIR when set (Numba
falls back to a per-user cache folder when the package folder is read-only). NUMBA_DISABLE_JIT=1 runs the
same source as plain Python, for debugging.
"""

import numba
import numpy as np

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
