"""Dense 3x3 convolution by Winograd's minimal filtering F(2x2, 3x3): the same result as conv3x3 (to float32
rounding) with 16 multiplies per 2x2 output block and input channel instead of 36.

The idea, for one input channel: cut the zero-padded input into 4x4 tiles d that overlap by two (tile t
covers padded rows 2ty..2ty+3 and columns 2tx..2tx+3); each tile yields a 2x2 block of output as

    y = A^T [ (G g G^T) * (B^T d B) ] A          (* is elementwise, 4x4)

with the 3x3 kernel g and the constant matrices below (entries 0, +-1, +-1/2: transforms are adds only).
Summed over input channels, the 4x4 elementwise products become, for each of the 16 positions e, one
matrix product over channels:  M[e] (Co, T) = U[e] (Co, Ci) @ V[e] (Ci, T), with U = G g G^T (the
weights, transformed once) and V = B^T d B (the input tiles). The product is the 1x1-conv tile of
_tiles.pointwise_tile, so 16/36 of the dense conv's multiply-adds run in the engine's GEMM-like loop, and
the transforms are cheap contiguous adds. `conv3x3_winograd_reference` says all of this in NumPy.

Accuracy: the transforms add a few roundings; against the float64 direct sum the error stays ~1e-7 of the
output scale (tests/test_kernels.py prints it), well inside the 1e-5 parity tolerance.

Fast path: prange over (sample, band of tile rows); each task transforms its band of every input channel
into V (16, Ci, T), runs the 16 products into M (16, Co, T), and writes the 2x2 blocks out. A task reads
and writes only its own band, sums channels in order: results do not depend on the thread count.

The decoder's first conv reads torch.cat([skip, upsample2x(low)], 1). Given `low`, the fast path reads its
input rows from skip and from low, upsampling each needed row on the fly (as resample.interp_row, the same
float32 operations as upsample_concat), so the concatenation is never written to memory and read back.
"""

import functools

import numba
import numpy as np
from numba import prange

from npunet.kernels._numba import as_f32, finish, helper, kernel, output
from npunet.kernels._tiles import pointwise_tile
from npunet.kernels.resample import bilinear_source_index

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)   # input transform
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)            # kernel transform
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)                                # output transform

SCRATCH_FLOATS = 1 << 20   # per task: V and M together hold about this many floats (4 MiB); sets the band
                           # (npunet.tuning sets it per CPU from measurement)
CI_GROUP = 8               # input channels transformed per step (pointwise_tile's step: eight at a time)


def winograd_weights(w):
    """w: (Co, Ci, 3, 3) -> U: (16, Co, Ci) float32, U[4i+j] = (G w G^T)[i, j], computed in float64."""
    w = np.asarray(w, np.float64)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"winograd_weights: w must be (Co, Ci, 3, 3), got {w.shape}")
    u = np.einsum("ij,ocjk,lk->iloc", G, w, G)                        # (4, 4, Co, Ci)
    return np.ascontiguousarray(u.reshape(16, *w.shape[:2]), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# reference (float64, NumPy): the algorithm, step by step
# ---------------------------------------------------------------------------------------------------------

def conv3x3_winograd_reference(x, w, out=None):
    """x: (N, Ci, H, W), w: (Co, Ci, 3, 3) -> (N, Co, H, W), as F.conv2d(x, w, padding=1), by F(2x2, 3x3)."""
    N, Ci, H, W = x.shape
    TH, TW = -(-H // 2), -(-W // 2)                                       # 2x2 output blocks (tiles)
    xp = np.zeros((N, Ci, 2 * TH + 2, 2 * TW + 2))                       # 1 zero row/col before, >= 1 after
    xp[:, :, 1:H + 1, 1:W + 1] = x
    windows = np.lib.stride_tricks.sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]
    V = np.einsum("ij,nctsjk,lk->nctsil", BT, windows, BT)               # B^T d B   (N, Ci, TH, TW, 4, 4)
    U = np.einsum("ij,ocjk,lk->ocil", G, np.asarray(w, np.float64), G)   # G g G^T   (Co, Ci, 4, 4)
    M = np.einsum("ocil,nctsil->notsil", U, V)                           # sum over Ci, per position
    Y = np.einsum("ij,notsjk,lk->notsil", AT, M, AT)                     # A^T M A   (N, Co, TH, TW, 2, 2)
    y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(N, -1, 2 * TH, 2 * TW)[:, :, :H, :W]
    return finish(y, out)


# ---------------------------------------------------------------------------------------------------------
# Numba fast path
# ---------------------------------------------------------------------------------------------------------

@helper
def _input_rows(x, norm, up, n, c, iy0, xb, rows):
    """Rows iy0 .. iy0 + R - 1 of input channel c into xb[:R, 1:W+1] (R = xb.shape[0]; zeros outside the image;
    the caller keeps xb's padding columns at zero). The input is x (N, Cx, H, W) - GroupNorm-ed and ReLU-ed as
    it is read when norm (N, Cx, 4) holds group_norm_coefficients, not when norm has 0 channels - followed by
    the 2x bilinear upsampling of up = (low (N, Cl, H/2, W/2), iy0, iy1, ly0, ly1, ix0, ix1, lx0, lx1):
    channel Cx + c' is upsample(low)[n, c'], the same float32 operations as norm.normalize_row and
    resample.interp_row / _bilinear_kernel. rows: (2, W) source rows of low interpolated along W, source row s
    in slot s % 2, so that consecutive output rows, which share source rows, interpolate each only once.
    One call per channel and band, indexing without array views in the row loops: per row, a helper call
    or a view costs reference counting that took longer than the copy itself (issue 12)."""
    Cx, H, W = x.shape[1], x.shape[2], x.shape[3]
    low, sy0, sy1, ly0, ly1, ix0, ix1, lx0, lx1 = up
    key_even = key_odd = -1                                    # the source rows that `rows` holds
    for r in range(xb.shape[0]):
        iy = iy0 + r
        if iy < 0 or iy >= H:
            for j in range(W):
                xb[r, 1 + j] = 0.0
        elif c >= Cx:
            cl = c - Cx
            for s in (sy0[iy], sy1[iy]):
                if s != (key_even if s % 2 == 0 else key_odd):
                    for j in range(W):
                        rows[s % 2, j] = low[n, cl, s, ix0[j]] * lx0[j] + low[n, cl, s, ix1[j]] * lx1[j]
                    if s % 2 == 0:
                        key_even = s
                    else:
                        key_odd = s
            a, b = sy0[iy] % 2, sy1[iy] % 2
            h0, h1 = ly0[iy], ly1[iy]
            for j in range(W):
                xb[r, 1 + j] = rows[a, j] * h0 + rows[b, j] * h1
        elif norm.shape[1]:
            mean_hi, mean_lo, scale, shift = norm[n, c, 0], norm[n, c, 1], norm[n, c, 2], norm[n, c, 3]
            for j in range(W):
                v = ((x[n, c, iy, j] - mean_hi) - mean_lo) * scale + shift
                xb[r, 1 + j] = np.float32(0.0) if v < 0.0 else v
        else:
            for j in range(W):
                xb[r, 1 + j] = x[n, c, iy, j]


@helper
def _input_tiles(x, norm, up, n, c, iy0, tile_rows, TW, v, k, xb, rows, h, eo):
    """v[4i+j, k, ty*TW + tx] = (B^T d B)[i, j] for every tile of a band of input channel c: the tiles d are
    4x4 windows, stride 2, of the zero-padded rows iy0 .. iy0 + 2*tile_rows + 1 of the input (_input_rows).
    xb: (2*tile_rows + 2, 2*TW + 2) padded rows, their padding columns zero; h: (2, 4, (tile_rows+1)*TW), d B
    of the even and of the odd rows; eo: (2, TW + 1) scratch."""
    _input_rows(x, norm, up, n, c, iy0, xb[:2 * tile_rows + 2], rows)
    for r in range(2 * tile_rows + 2):       # d B, row by row: columns (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
        for tx in range(TW + 1):             # the row's even and odd columns apart first, so that the
            eo[0, tx] = xb[r, 2 * tx]        # arithmetic below runs on contiguous memory
            eo[1, tx] = xb[r, 2 * tx + 1]
        e, base = r % 2, (r // 2) * TW
        for tx in range(TW):                 # d0, d1, d2, d3 = eo[0, tx], eo[1, tx], eo[0, tx + 1], eo[1, tx + 1]
            h[e, 0, base + tx] = eo[0, tx] - eo[0, tx + 1]
            h[e, 1, base + tx] = eo[1, tx] + eo[0, tx + 1]
            h[e, 2, base + tx] = eo[0, tx + 1] - eo[1, tx]
            h[e, 3, base + tx] = eo[1, tx] - eo[1, tx + 1]
    T = tile_rows * TW                       # B^T (d B): rows (r0 - r2, r1 + r2, r2 - r1, r1 - r3), where
    for j in range(4):                       # tile t's rows are even[t], odd[t], even[t + TW], odd[t + TW]
        r0, r1, r2, r3 = h[0, j], h[1, j], h[0, j, TW:], h[1, j, TW:]
        v0, v1, v2, v3 = v[j, k], v[4 + j, k], v[8 + j, k], v[12 + j, k]
        for t in range(T):
            v0[t] = r0[t] - r2[t]
            v1[t] = r1[t] + r2[t]
            v2[t] = r2[t] - r1[t]
            v3[t] = r1[t] - r3[t]


@helper
def _output_tiles(m, tile_rows, TW, out, n, y0, pq, eo):
    """out[n, co, y0 + 2ty + a, 2tx + b] = (A^T M A)[a, b], M = m[:, co, ty*TW + tx] as 4x4, for every output
    channel co; rows and columns past the image edge are dropped. m: (16, Co, T); pq: (8, T), eo: (2, TW)
    scratch. Every loop runs over contiguous memory but the last, which only interleaves the even and odd
    columns of a row (arithmetic and interleaving in one loop ran 2x slower); indexed, not sliced, in its
    loops (a view per row cost more than the row's arithmetic, issue 12)."""
    Co, H, W = out.shape[1], out.shape[2], out.shape[3]
    T = tile_rows * TW
    for co in range(Co):
        for j in range(4):                   # A^T M: rows (m0 + m1 + m2, m1 - m2 - m3), column j
            for t in range(T):
                pq[j, t] = m[j, co, t] + m[4 + j, co, t] + m[8 + j, co, t]
                pq[4 + j, t] = m[4 + j, co, t] - m[8 + j, co, t] - m[12 + j, co, t]
        for ty in range(tile_rows):          # (A^T M) A: columns (s0 + s1 + s2, s1 - s2 - s3), into eo, then
            for a in range(2):               # interleaved into output row y0 + 2ty + a
                oy = y0 + 2 * ty + a
                if oy >= H:
                    break
                e, b = 4 * a, ty * TW
                for tx in range(TW):
                    eo[0, tx] = pq[e, b + tx] + pq[e + 1, b + tx] + pq[e + 2, b + tx]
                    eo[1, tx] = pq[e + 1, b + tx] - pq[e + 2, b + tx] - pq[e + 3, b + tx]
                for tx in range(W // 2):
                    out[n, co, oy, 2 * tx] = eo[0, tx]
                    out[n, co, oy, 2 * tx + 1] = eo[1, tx]
                if W % 2:
                    out[n, co, oy, W - 1] = eo[0, TW - 1]


@kernel
def _winograd_kernel(x, norm, up, u, out, band_tiles):
    # x: (N, Cx, H, W), norm, up: see _input_row (up's low has Cl channels, Cx + Cl = Ci); u: (16, Co, Ci);
    # out: (N, Co, H, W); band_tiles: tile rows per task
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    Ci = x.shape[1] + up[0].shape[1]
    Co = u.shape[1]
    TH, TW = (H + 1) // 2, (W + 1) // 2
    n_bands = (TH + band_tiles - 1) // band_tiles
    for task in prange(N * n_bands):
        n = task // n_bands
        ty0 = (task % n_bands) * band_tiles
        tile_rows = min(band_tiles, TH - ty0)
        T = band_tiles * TW
        xb = np.zeros((2 * band_tiles + 2, 2 * TW + 2), np.float32)         # padding columns stay zero
        rows = np.empty((2, W), np.float32)
        eo = np.empty((2, TW + 1), np.float32)
        h = np.empty((2, 4, T + TW), np.float32)
        pq = np.empty((8, T), np.float32)
        v_all = np.empty(16 * CI_GROUP * T, np.float32)
        m = np.zeros((16, Co, T), np.float32)
        for c0 in range(0, Ci, CI_GROUP):        # a few input channels at a time, so V stays in cache
            group = min(CI_GROUP, Ci - c0)
            v = v_all[:16 * group * T].reshape((16, group, T))               # C-contiguous
            for k in range(group):
                _input_tiles(x, norm, up, n, c0 + k, 2 * ty0 - 1, tile_rows, TW, v, k, xb, rows, h, eo)
            for e in range(16):
                pointwise_tile(v, e, 0, tile_rows * TW, u[e, :, c0:], 0, Co, m[e])
        _output_tiles(m, tile_rows, TW, out, n, 2 * ty0, pq, eo)


@functools.lru_cache(maxsize=64)
def _source_index(n_in, n_out, align_corners):
    """bilinear_source_index for a 2x upsampling, kept: the same few sizes come back at every call (the kernel
    only reads these arrays)."""
    return bilinear_source_index(n_in, n_out, align_corners, 2.0)


def conv3x3_winograd(x, w, out=None, u=None, low=None, align_corners=False, norm_relu=None):
    """x: (N, Ci, H, W), w: (Co, Ci, 3, 3) -> (N, Co, H, W). Mirrors F.conv2d(x, w, padding=1), no bias.
    u: winograd_weights(w), when the caller keeps it (the network transforms each layer's weights once).
    low: (N, Cl, H/2, W/2): the conv then runs on torch.cat([x, F.interpolate(low, scale_factor=2,
    mode="bilinear", align_corners=align_corners)], 1) (w: (Co, Ci + Cl, 3, 3)), equal to
    conv3x3_winograd(upsample_concat(x, low), w) to the last bit, without building the concatenation.
    norm_relu: (N, Ci, 4) group_norm_coefficients of x: the conv then runs on relu(group_norm(x)), equal to
    conv3x3_winograd(group_norm(x, ..., relu=True), w) to the last bit, without writing the normalised x."""
    x = as_f32(x, "x", 4)
    N, Cx, H, W = x.shape
    norm = np.empty((N, 0, 4), np.float32) if norm_relu is None else as_f32(norm_relu, "norm_relu", 3)
    if norm.shape[1] and norm.shape != (N, Cx, 4):
        raise ValueError(f"conv3x3: norm_relu must be ({N}, {Cx}, 4) for x {x.shape}, got {norm.shape}")
    if low is None:
        low = np.empty((N, 0, 1, 1), np.float32)
    low = as_f32(low, "low", 4)
    if low.shape[1] and (low.shape[0] != N or (2 * low.shape[2], 2 * low.shape[3]) != (H, W)):
        raise ValueError(f"conv3x3: low {low.shape} must be (N, Cl, H/2, W/2) for x {x.shape}")
    Ci = Cx + low.shape[1]
    w = as_f32(w, "w")
    if w.ndim != 4 or w.shape[1:] != (Ci, 3, 3):
        raise ValueError(f"conv3x3: w must be (Co, {Ci}, 3, 3) for x {x.shape}"
                         + (f" and low {low.shape}" if low.shape[1] else "") + f", got {w.shape}")
    Co = w.shape[0]
    u = winograd_weights(w) if u is None else as_f32(u, "u")
    if u.shape != (16, Co, Ci):
        raise ValueError(f"conv3x3: Winograd weights must be (16, {Co}, {Ci}) for w {w.shape}, got {u.shape}")
    out = output(out, (N, Co, H, W), inputs=(x, low))
    if out.size:
        iy0, iy1, ly0, ly1 = _source_index(max(1, low.shape[2]), H, align_corners)
        ix0, ix1, lx0, lx1 = _source_index(max(1, low.shape[3]), W, align_corners)
        TH, TW = (H + 1) // 2, (W + 1) // 2
        band_tiles = max(1, min(TH, SCRATCH_FLOATS // (16 * (CI_GROUP + Co) * TW)))
        bands_per_sample = -(-2 * numba.get_num_threads() // N)          # enough tasks for every thread
        band_tiles = min(band_tiles, -(-TH // bands_per_sample))
        _winograd_kernel(x, norm, (low, iy0, iy1, ly0, ly1, ix0, ix1, lx0, lx1), u, out, band_tiles)
    return out
