"""Serial inner loops shared by the convolution kernels (conv.py, winograd.py): copying a band of rows into
a zero-padded scratch and back (the 3x3 direct kernels), and the 1x1-conv tile that is also the Winograd
transform-domain product."""

from npunet.kernels._numba import contracting_helper, helper


@helper
def load_band(x, n, c, y0, rows, xs):
    """xs[r*(W+2) + 1 + j] = x[n, c, y0-1+r, j] for r in [0, rows+2); zero outside the image."""
    H, W = x.shape[2], x.shape[3]
    Wp = W + 2
    for r in range(rows + 2):
        iy = y0 - 1 + r
        base = r * Wp
        if iy < 0 or iy >= H:
            for j in range(Wp):
                xs[base + j] = 0.0
        else:
            src = x[n, c, iy]
            xs[base] = 0.0
            xs[base + Wp - 1] = 0.0
            for j in range(W):
                xs[base + 1 + j] = src[j]


@helper
def store_band(acc, out, n, c, y0, rows):
    """out[n, c, y0+r, :] = acc[r*(W+2) : r*(W+2)+W] (drops the two padding columns)."""
    W = out.shape[3]
    Wp = W + 2
    for r in range(rows):
        dst = out[n, c, y0 + r]
        for j in range(W):
            dst[j] = acc[r * Wp + j]


@contracting_helper
def pointwise_tile(x, n, p0, L, w, w0, r0, nr, acc):
    """acc[r, :L] += sum_ci w[r0+r, w0+ci] * x[n, ci, p0:p0+L] for r < nr. x: (N, Ci, P), w: (R, >= w0+Ci).
    Input channels go eight at a time, in order; four output rows per pass share the eight loads.
    Every caller passes the same argument types (C-contiguous arrays, int64 counts, never a literal such as
    a plain 0, which Numba would type Literal[int](0)), so that Numba compiles this function once, not once
    per caller (each compilation took about a second of a first run)."""
    Ci = x.shape[1]
    ci = 0
    while ci + 8 <= Ci:
        x0, x1, x2, x3 = x[n, ci, p0:], x[n, ci + 1, p0:], x[n, ci + 2, p0:], x[n, ci + 3, p0:]
        x4, x5, x6, x7 = x[n, ci + 4, p0:], x[n, ci + 5, p0:], x[n, ci + 6, p0:], x[n, ci + 7, p0:]
        r = 0
        while r + 4 <= nr:
            k = w[r0 + r, w0 + ci:]
            a0, a1, a2, a3, a4, a5, a6, a7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            k = w[r0 + r + 1, w0 + ci:]
            b0, b1, b2, b3, b4, b5, b6, b7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            k = w[r0 + r + 2, w0 + ci:]
            c0, c1, c2, c3, c4, c5, c6, c7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            k = w[r0 + r + 3, w0 + ci:]
            d0, d1, d2, d3, d4, d5, d6, d7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            oa, ob, oc, od = acc[r], acc[r + 1], acc[r + 2], acc[r + 3]
            for p in range(L):
                v0, v1, v2, v3, v4, v5, v6, v7 = x0[p], x1[p], x2[p], x3[p], x4[p], x5[p], x6[p], x7[p]
                oa[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7
                ob[p] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4 + b5 * v5 + b6 * v6 + b7 * v7
                oc[p] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4 + c5 * v5 + c6 * v6 + c7 * v7
                od[p] += d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3 + d4 * v4 + d5 * v5 + d6 * v6 + d7 * v7
            r += 4
        while r < nr:                                          # the last nr % 4 rows, one at a time
            k = w[r0 + r, w0 + ci:]
            a0, a1, a2, a3, a4, a5, a6, a7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
            oa = acc[r]
            for p in range(L):
                oa[p] += (a0 * x0[p] + a1 * x1[p] + a2 * x2[p] + a3 * x3[p]
                          + a4 * x4[p] + a5 * x5[p] + a6 * x6[p] + a7 * x7[p])
            r += 1
        ci += 8
    while ci < Ci:                                             # the last Ci % 8 input channels
        x0 = x[n, ci, p0:]
        for r in range(nr):
            a0 = w[r0 + r, w0 + ci]
            oa = acc[r]
            for p in range(L):
                oa[p] += a0 * x0[p]
        ci += 1
