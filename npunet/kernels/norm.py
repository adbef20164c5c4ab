"""GroupNorm (optionally fused with ReLU) and ReLU on NCHW float32 arrays.

GroupNorm splits the C channels of each sample into `groups` groups of C/groups channels, and normalises
each group by its own mean and biased variance over (C/groups)*H*W values:
    y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]
The statistics are the numerically delicate part: single-pass float32 E[x^2] - E[x]^2 loses everything
on large-mean inputs (1000 + noise). The reference takes two passes in float64 (mean, then the mean of
squared deviations). The fast path reads the data once for both, in float64 and shifted by the group's
first value (the "shifted data" variance: the common offset cancels before anything is squared), then
normalises in float32 as ((x - mean_hi) - mean_lo) * a + beta, with mean = mean_hi + mean_lo split into
two float32 parts, so the large mean cancels before rounding.

`<op>_reference` is the float64 NumPy definition; `<op>` is the Numba fast path that must match it.
Both are safe in place (out=x): a group's statistics are finished before any of it is overwritten.
"""

import math

import numpy as np
from numba import prange

from npunet.kernels._numba import as_f32, finish, helper, kernel, output
from npunet.kernels._sums import LANES, lane_moments


# ---------------------------------------------------------------------------------------------------------
# references (float64, NumPy)
# ---------------------------------------------------------------------------------------------------------

def _group_mean_var(g):
    """g: (N, G, M) float64 -> mean, biased variance, each (N, G, 1), in two passes."""
    mean = g.mean(axis=2, keepdims=True)
    return mean, ((g - mean) ** 2).mean(axis=2, keepdims=True)     # biased, as torch


def group_norm_statistics(x, groups):
    """x: (N, C, H, W) -> (mean, std), each (N, groups) float64: what GroupNorm subtracts and divides by
    (std = the square root of the biased variance, before eps is added)."""
    mean, var = _group_mean_var(np.asarray(x, np.float64).reshape(x.shape[0], groups, -1))
    return mean[:, :, 0], np.sqrt(var[:, :, 0])


def group_norm_reference(x, weight, bias, groups, eps, relu=False, out=None):
    """x: (N, C, H, W), weight, bias: (C,) -> (N, C, H, W).
    Mirrors F.group_norm(x, groups, weight, bias, eps), then F.relu when relu=True."""
    N, C, H, W = x.shape
    g = np.asarray(x, np.float64).reshape(N, groups, -1)
    mean, var = _group_mean_var(g)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(N, C, H, W)
    y = y * np.asarray(weight, np.float64)[None, :, None, None] + np.asarray(bias, np.float64)[None, :, None, None]
    return finish(relu_reference(y) if relu else y, out)


def relu_reference(x, out=None):
    """max(x, 0) elementwise, NaN kept. Mirrors F.relu."""
    return finish(np.maximum(np.asarray(x, np.float64), 0.0), out)


# ---------------------------------------------------------------------------------------------------------
# Numba fast paths
# ---------------------------------------------------------------------------------------------------------

@helper
def normalize_row(src, dst, mean_hi, mean_lo, a, b, relu):
    """dst = ((src - mean_hi) - mean_lo) * a + b in float32, then max(., 0) when relu (NaN kept)."""
    if relu:
        for i in range(src.shape[0]):
            v = ((src[i] - mean_hi) - mean_lo) * a + b
            dst[i] = np.float32(0.0) if v < 0.0 else v
    else:
        for i in range(src.shape[0]):
            dst[i] = ((src[i] - mean_hi) - mean_lo) * a + b


@helper
def _group_stats(row, eps):
    """(mean_hi, mean_lo, rstd) of one group: mean = mean_hi + mean_lo (two float32 parts) and 1/sqrt(var + eps)
    with the biased variance, both from float64 sums of (x - shift), shift = the group's first value, so a
    large common offset (1000 + noise) cancels before squaring."""
    M = row.shape[0]
    lanes = np.empty((2, LANES), np.float64)
    shift = np.float64(row[0])
    s, q = lane_moments(row, shift, lanes)
    mean_shifted = s / M
    var = max(q / M - mean_shifted * mean_shifted, 0.0)
    mean = shift + mean_shifted
    mean_hi = np.float32(mean)
    return mean_hi, np.float32(mean - np.float64(mean_hi)), 1.0 / math.sqrt(var + eps)


@kernel
def _group_norm_kernel(x, weight, bias, eps, relu, out):
    # x, out: (N, G, M) with M = (C/G)*H*W, one group a contiguous row; weight, bias: (C,)
    N, G, M = x.shape
    cpg = weight.shape[0] // G
    P = M // cpg
    for task in prange(N * G):
        n = task // G
        g = task % G
        row = x[n, g]
        mean_hi, mean_lo, rstd = _group_stats(row, eps)                      # pass 1: statistics
        for k in range(cpg):                                                 # pass 2: per channel of the group
            c = g * cpg + k
            normalize_row(row[k * P:(k + 1) * P], out[n, g, k * P:(k + 1) * P], mean_hi, mean_lo,
                          np.float32(weight[c] * rstd), bias[c], relu)


@kernel
def _group_norm_coefficients_kernel(x, weight, bias, eps, coef):
    # x: (N, G, M) as above; coef: (N, C, 4) float32
    N, G, M = x.shape
    cpg = weight.shape[0] // G
    for task in prange(N * G):
        n = task // G
        g = task % G
        mean_hi, mean_lo, rstd = _group_stats(x[n, g], eps)
        for k in range(cpg):
            c = g * cpg + k
            coef[n, c, 0], coef[n, c, 1] = mean_hi, mean_lo
            coef[n, c, 2], coef[n, c, 3] = np.float32(weight[c] * rstd), bias[c]


@helper
def _relu_range(src, dst):
    for i in range(src.shape[0]):
        v = src[i]
        dst[i] = np.float32(0.0) if v < 0.0 else v       # NaN < 0 is False: NaN kept


@kernel
def _relu_kernel(x, out):
    # x, out: flat, processed in chunks of 16384
    n = x.shape[0]
    chunk = 16384
    for t in prange((n + chunk - 1) // chunk):
        lo, hi = t * chunk, min(n, (t + 1) * chunk)
        _relu_range(x[lo:hi], out[lo:hi])


def _check_group_norm(x, weight, bias, groups):
    x = as_f32(x, "x", 4)
    C = x.shape[1]
    weight, bias = as_f32(weight, "weight"), as_f32(bias, "bias")
    groups = int(groups)
    if groups < 1 or C % groups:
        raise ValueError(f"group_norm: {C} channels (x {x.shape}) are not divisible into {groups} groups")
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"group_norm: weight and bias must be ({C},) for x {x.shape}, "
                         f"got {weight.shape} and {bias.shape}")
    return x, weight, bias, groups


def group_norm(x, weight, bias, groups, eps, relu=False, out=None):
    """x: (N, C, H, W), weight, bias: (C,), C divisible by groups -> (N, C, H, W).
    Mirrors F.group_norm(x, groups, weight, bias, eps) (biased variance), fused with F.relu when relu=True.
    Safe in place (out=x)."""
    x, weight, bias, groups = _check_group_norm(x, weight, bias, groups)
    N = x.shape[0]
    out = output(out, x.shape)
    if x.size:
        _group_norm_kernel(x.reshape(N, groups, -1), weight, bias, float(eps), bool(relu),
                           out.reshape(N, groups, -1))
    return out


def group_norm_coefficients(x, weight, bias, groups, eps):
    """x: (N, C, H, W) -> coef (N, C, 4) float32: per channel (mean_hi, mean_lo, a, beta) such that
    group_norm(x)[n, c] == ((x[n, c] - mean_hi) - mean_lo) * a + beta, the same float32 operations
    (normalize_row). For a consumer that normalises as it reads (conv3x3_winograd's norm_relu)."""
    x, weight, bias, groups = _check_group_norm(x, weight, bias, groups)
    N, C = x.shape[:2]
    coef = np.empty((N, C, 4), np.float32)
    if x.size:
        _group_norm_coefficients_kernel(x.reshape(N, groups, -1), weight, bias, float(eps), coef)
    return coef


def relu(x, out=None):
    """max(x, 0) elementwise, NaN kept, as a new float32 array (or into out; out=x is fine). Mirrors F.relu."""
    x = as_f32(x, "x")
    out = output(out, x.shape)
    if x.size:
        _relu_kernel(x.reshape(-1), out.reshape(-1))
    return out
