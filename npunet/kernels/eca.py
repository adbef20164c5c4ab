"""Efficient Channel Attention (Wang et al. 2020, BangguWu/ECANet eca_module.py), NCHW float32.

    y[n, c]   = mean over H, W of x[n, c]                                  (N, C)
    z[n, c]   = sum_j w[j] * y[n, c + j - (k-1)//2]   (zero padding)        conv1d across channels, no bias
    out       = x * sigmoid(z)[:, :, None, None]                           (N, C, H, W)

The kernel size k is read from the stored weight's shape (1, 1, k), never recomputed from C (the
official code passes k by hand). The sigmoid is the stable form that never overflows:
1 / (1 + exp(-z)) for z >= 0, exp(z) / (1 + exp(z)) for z < 0.

`eca_reference` is the float64 NumPy definition (`eca_gate_reference` its gates alone); `eca` is the
Numba fast path, which can also hand back the gates it applied (`gate=`). Both are safe in place.
"""

import math

import numpy as np
from numba import prange

from npunet.kernels._numba import as_f32, finish, kernel, output
from npunet.kernels._sums import LANES, lane_moments


def _sigmoid64(z):
    e = np.exp(-np.abs(z))                      # in (0, 1]: no overflow either way
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def eca_gate_reference(x, w):
    """x: (N, C, H, W), w: (1, 1, k) -> the gates (N, C) float64, sigmoid(conv1d(mean over H, W)).
    Mirrors torch.sigmoid(F.conv1d(x.mean((2, 3))[:, None, :], w, padding=(k-1)//2))[:, 0]."""
    x64, w = np.asarray(x, np.float64), np.asarray(w, np.float64).reshape(-1)
    k, C = w.shape[0], x64.shape[1]
    y = np.pad(x64.mean(axis=(2, 3)), ((0, 0), ((k - 1) // 2, k - 1 - (k - 1) // 2)))
    z = sum(w[j] * y[:, j:j + C] for j in range(k))
    return _sigmoid64(z)


def eca_reference(x, w, out=None):
    """x: (N, C, H, W), w: (1, 1, k) -> (N, C, H, W).
    Mirrors x * torch.sigmoid(F.conv1d(x.mean((2, 3))[:, None, :], w, padding=(k-1)//2))[:, 0, :, None, None]."""
    return finish(np.asarray(x, np.float64) * eca_gate_reference(x, w)[:, :, None, None], out)


@kernel
def _eca_kernel(x, w, out, gate):
    # x, out: (N, C, P); w: (k,); gate: (N, C), written with the gates applied
    N, C, P = x.shape
    k = w.shape[0]
    pad = (k - 1) // 2
    mean = np.empty((N, C), np.float64)
    for t in prange(N * C):                     # per-channel means, in float64 (vectorised partial sums)
        lanes = np.empty((2, LANES), np.float64)
        mean[t // C, t % C] = lane_moments(x[t // C, t % C], 0.0, lanes)[0] / P
    for n in range(N):                          # conv1d across channels + stable sigmoid (tiny, serial)
        for c in range(C):
            z = 0.0
            for j in range(k):
                cc = c + j - pad
                if 0 <= cc < C:
                    z += w[j] * mean[n, cc]
            if z >= 0.0:
                s = 1.0 / (1.0 + math.exp(-z))
            else:
                e = math.exp(z)
                s = e / (1.0 + e)
            gate[n, c] = s
    for t in prange(N * C):
        g = gate[t // C, t % C]
        src = x[t // C, t % C]
        dst = out[t // C, t % C]
        for i in range(P):
            dst[i] = src[i] * g


def eca(x, w, out=None, gate=None):
    """x: (N, C, H, W), w: (1, 1, k) (the Conv1d weight; k from its shape) -> (N, C, H, W).
    Mirrors the ECA module: x * sigmoid(conv1d(avgpool(x) across channels, w, padding=(k-1)//2)). In place ok.
    gate: an optional (N, C) float32 array that receives the gates applied (out[n, c] = x[n, c] * gate[n, c],
    one float32 multiply), for teaching (Network.run_layers) and tests."""
    x = as_f32(x, "x", 4)
    w = as_f32(w, "w")
    if w.ndim != 3 or w.shape[:2] != (1, 1) or w.shape[2] % 2 == 0:
        raise ValueError(f"eca: w must be (1, 1, k) with k odd (as torch's padding (k-1)//2 needs), "
                         f"got {w.shape} (x {x.shape})")
    N, C, H, W = x.shape
    if H * W == 0:
        raise ValueError(f"eca: x must have a non-empty H x W plane to average, got {x.shape}")
    out = output(out, x.shape)
    if gate is None:
        gate = np.empty((N, C), np.float32)
    elif not (isinstance(gate, np.ndarray) and gate.shape == (N, C) and gate.dtype == np.float32
              and gate.flags.c_contiguous and gate.flags.writeable):
        raise ValueError(f"eca: gate must be a writeable C-contiguous float32 array of shape {(N, C)} "
                         f"for x {x.shape}, got {getattr(gate, 'shape', None)} {getattr(gate, 'dtype', type(gate))}")
    if x.size:
        _eca_kernel(x.reshape(N, C, H * W), w.reshape(-1), out.reshape(N, C, H * W), gate)
    return out
