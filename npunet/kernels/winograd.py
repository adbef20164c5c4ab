"""Dense 3x3 convolution by Winograd's minimal filtering F(4x4, 3x3): the same result as conv3x3 (to float32
rounding) with 36 multiplies per 4x4 output block and input channel instead of 16 x 9 = 144.

The idea, for one input channel: cut the zero-padded input into 6x6 tiles d that overlap by two (tile t
covers padded rows 4ty..4ty+5 and columns 4tx..4tx+5); each tile yields a 4x4 block of output as

    y = A^T [ (G g G^T) * (B^T d B) ] A          (* is elementwise, 6x6)

with the 3x3 kernel g and the constant matrices F43 below (Lavin and Gray 2016), built on the interpolation
points 0, -1, 1, 1/2, -2 and infinity rather than the usual 0, +-1, +-2: B^T and A^T hold only multiples of 1/8
(exact in float32, so the transforms are adds and exact scalings), and the float32 error is 2 to 3 times
smaller (docs/winograd.md measures both on a 192-channel layer: 3.9e-6 against 1.1e-5 of the output scale;
Barabasz et al. 2020 made the same choice).
Summed over input channels, the 6x6 elementwise products become, for each of the 36 positions e, one
matrix product over channels:  M[e] (Co, T) = U[e] (Co, Ci) @ V[e] (Ci, T), with U = G g G^T (the
weights, transformed once) and V = B^T d B (the input tiles). The product is the 1x1-conv tile of
_tiles.pointwise_tile, so 36/144 of the dense conv's multiply-adds run in the engine's GEMM-like loop, and
the transforms are cheap contiguous adds. F(2x2, 3x3) (F23: 16 multiplies per 2x2 block, 4 per output
instead of 2.25) is kept as the smaller teaching example (docs/winograd.md); npunet ran it until issue 12.
`conv3x3_winograd_reference` says all of this in NumPy, for either.

Accuracy: the larger tile's transforms grow the values before the float32 products, so the error is larger
than F(2x2)'s: ~1e-6 of the output scale against the float64 direct sum (tests/test_kernels.py prints it),
inside the 1e-5 parity tolerance.

Fast path: prange over (sample, band of tile rows, block of output channels; _work_split); each task
transforms its band of every input channel into V (36, Ci, T), runs the 36 products for its channels into
M (36, Co_block, T), and writes their 4x4 blocks out. A task writes only its own band and channels, sums
input channels in order: results do not depend on the thread count or the split.

The decoder's first conv reads torch.cat([skip, upsample2x(low)], 1). Given `low`, the fast path reads its
input rows from skip and from low, upsampling each needed row on the fly (as resample.interp_row, the same
float32 operations as upsample_concat), so the concatenation is never written to memory and read back.
"""

import functools
import math

import numba
import numpy as np
from numba import prange

from npunet.kernels._numba import as_f32, finish, helper, kernel, output
from npunet.kernels._tiles import pointwise_tile
from npunet.kernels.resample import bilinear_source_index, pairs_of_2x

# (B^T, G, A^T) of F(m x m, 3x3): input transform (m+2, m+2), kernel transform (m+2, 3), output transform (m, m+2)
F23 = (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
       np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
       np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64))
F43 = (np.array([[1, -1.5, -2, 1.5, 1, 0], [0, 1, -2.5, .5, 1, 0], [0, -1, .5, 2.5, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, .5, -1, -.5, 1, 0], [0, 1, -1.5, -2, 1.5, 1]], np.float64),
       np.array([[1, 0, 0], [-1 / 3, 1 / 3, -1 / 3], [1 / 3, 1 / 3, 1 / 3],
                 [-16 / 15, -8 / 15, -4 / 15], [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]], np.float64),
       np.array([[1, 1, 1, 1, 1, 0], [0, -1, 1, .5, -2, 0], [0, 1, 1, .25, 4, 0], [0, -1, 1, .125, -8, 1]],
                np.float64))
BT, G, AT = F43                                        # what the fast path computes

SCRATCH_FLOATS = 1 << 20   # per task: V and M together hold about this many floats (4 MiB); sets the band
                           # (npunet.tuning sets it per CPU from measurement)
CI_GROUP = 8               # input channels transformed per step (pointwise_tile's step: eight at a time)
MIN_TASK_TILES = 64        # tiles per task, when the work allows (_work_split)


def winograd_weights(w):
    """w: (Co, Ci, 3, 3) -> U: (36, Co, Ci) float32, U[6i+j] = (G w G^T)[i, j] with F43's G, computed in float64."""
    w = np.asarray(w, np.float64)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"winograd_weights: w must be (Co, Ci, 3, 3), got {w.shape}")
    u = np.einsum("ij,ocjk,lk->iloc", G, w, G)                        # (6, 6, Co, Ci)
    return np.ascontiguousarray(u.reshape(36, *w.shape[:2]), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# reference (float64, NumPy): the algorithm, step by step
# ---------------------------------------------------------------------------------------------------------

def conv3x3_winograd_reference(x, w, out=None, matrices=F43):
    """x: (N, Ci, H, W), w: (Co, Ci, 3, 3) -> (N, Co, H, W), as F.conv2d(x, w, padding=1), by F(m x m, 3x3)
    with matrices = (B^T, G, A^T): F43 (what the fast path computes) or F23."""
    BT, G, AT = matrices
    m, a = AT.shape                                                      # output block m x m, tile a x a
    N, Ci, H, W = x.shape
    TH, TW = -(-H // m), -(-W // m)                                      # output blocks (tiles)
    xp = np.zeros((N, Ci, m * TH + 2, m * TW + 2))                       # 1 zero row/col before, >= 1 after
    xp[:, :, 1:H + 1, 1:W + 1] = x
    windows = np.lib.stride_tricks.sliding_window_view(xp, (a, a), axis=(2, 3))[:, :, ::m, ::m]
    V = np.einsum("ij,nctsjk,lk->nctsil", BT, windows, BT)               # B^T d B   (N, Ci, TH, TW, a, a)
    U = np.einsum("ij,ocjk,lk->ocil", G, np.asarray(w, np.float64), G)   # G g G^T   (Co, Ci, a, a)
    M = np.einsum("ocil,nctsil->notsil", U, V)                           # sum over Ci, per position
    Y = np.einsum("ij,notsjk,lk->notsil", AT, M, AT)                     # A^T M A   (N, Co, TH, TW, m, m)
    y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(N, -1, m * TH, m * TW)[:, :, :H, :W]
    return finish(y, out)


# ---------------------------------------------------------------------------------------------------------
# Numba fast path
# ---------------------------------------------------------------------------------------------------------

@helper
def _input_rows(x, norm, up, n, c, iy0, xb, rows):
    """Rows iy0 .. iy0 + R - 1 of input channel c into xb[:R, 1:W+1] (R = xb.shape[0]; zeros outside the image;
    the caller keeps xb's padding columns at zero). The input is x (N, Cx, H, W) - GroupNorm-ed and ReLU-ed as
    it is read when norm (N, Cx, 4) holds group_norm_coefficients, not when norm has 0 channels - followed by
    the 2x bilinear upsampling of up = (low (N, Cl, H/2, W/2), iy0, iy1, ly0, ly1, ix0, ix1, lx0, lx1, pairs):
    channel Cx + c' is upsample(low)[n, c'], the same float32 operations as norm.normalize_row and
    resample.interp_row / _bilinear_kernel (pairs: ix0, ix1 follow resample.pairs_of_2x, so a row is read
    by position instead of through them). rows: (2, W) source rows of low interpolated along W, source row s
    in slot s % 2, so that consecutive output rows, which share source rows, interpolate each only once.
    One call per channel and band, indexing without array views in the row loops: per row, a helper call
    or a view costs reference counting that took longer than the copy itself (issue 12)."""
    Cx, H, W = x.shape[1], x.shape[2], x.shape[3]
    low, sy0, sy1, ly0, ly1, ix0, ix1, lx0, lx1, pairs = up
    Wl = low.shape[3]
    key_even = key_odd = -1                                    # the source rows that `rows` holds
    for r in range(xb.shape[0]):
        iy = iy0 + r
        if iy < 0 or iy >= H:
            for j in range(W):
                xb[r, 1 + j] = 0.0
        elif c >= Cx:
            cl = c - Cx
            for s in (sy0[iy], sy1[iy]):
                slot = s % 2
                if s == (key_even if slot == 0 else key_odd):
                    continue                                   # interpolated for the previous row
                if pairs:                                      # the loop below, without gathers: columns
                    for k in range(1, Wl):                     # 2k-1 and 2k read source columns k-1 and k
                        left, right = low[n, cl, s, k - 1], low[n, cl, s, k]
                        rows[slot, 2 * k - 1] = left * lx0[2 * k - 1] + right * lx1[2 * k - 1]
                        rows[slot, 2 * k] = left * lx0[2 * k] + right * lx1[2 * k]
                    for j in (0, W - 1):
                        rows[slot, j] = low[n, cl, s, ix0[j]] * lx0[j] + low[n, cl, s, ix1[j]] * lx1[j]
                else:
                    for j in range(W):
                        rows[slot, j] = low[n, cl, s, ix0[j]] * lx0[j] + low[n, cl, s, ix1[j]] * lx1[j]
                if slot == 0:
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
def _transform_in(d0, d1, d2, d3, d4, d5):
    """B^T d for six values along a row or a column (F43's B^T, grouped so that it takes 16 adds and scalings)."""
    s, t = d4 - d2, d1 - d3
    return ((d0 - d2) + s - np.float32(1.5) * t, s + t - np.float32(1.5) * (d2 - d3),
            s - t + np.float32(1.5) * (d2 + d3), s - np.float32(2.0) * t, s + np.float32(0.5) * t,
            (d5 - d3) + t + np.float32(1.5) * s)


@helper
def _transform_out(m0, m1, m2, m3, m4, m5):
    """A^T m for six values along a row or a column (F43's A^T)."""
    p, q = m2 + m1, m2 - m1
    return (m0 + p + (m3 + m4), q + np.float32(0.5) * m3 - np.float32(2.0) * m4,
            p + np.float32(0.25) * m3 + np.float32(4.0) * m4, q + np.float32(0.125) * m3 - np.float32(8.0) * m4 + m5)


@helper
def _input_tiles(x, norm, up, n, c, iy0, tile_rows, TW, v, k, xb, rows, h, ph):
    """v[6i+j, k, ty*TW + tx] = (B^T d B)[i, j] for every tile of a band of input channel c: the tiles d are
    6x6 windows, stride 4, of the zero-padded rows iy0 .. iy0 + 4*tile_rows + 1 of the input (_input_rows).
    xb: (4*tile_rows + 2, 4*TW + 4) padded rows, their padding columns zero; h: (4, 6, (tile_rows+1)*TW),
    d B of the rows 4s + p in h[p]; ph: (4, TW + 1) scratch."""
    _input_rows(x, norm, up, n, c, iy0, xb[:4 * tile_rows + 2], rows)
    for r in range(4 * tile_rows + 2):       # d B, row by row: the row's columns 4tx + q apart first (ph[q]),
        for tx in range(TW + 1):             # so that the arithmetic below runs on contiguous memory
            for q in range(4):
                ph[q, tx] = xb[r, 4 * tx + q]
        p, base = r % 4, (r // 4) * TW
        for tx in range(TW):                 # columns 4tx .. 4tx + 5
            h0, h1, h2, h3, h4, h5 = _transform_in(ph[0, tx], ph[1, tx], ph[2, tx], ph[3, tx], ph[0, tx + 1],
                                                   ph[1, tx + 1])
            h[p, 0, base + tx], h[p, 1, base + tx], h[p, 2, base + tx] = h0, h1, h2
            h[p, 3, base + tx], h[p, 4, base + tx], h[p, 5, base + tx] = h3, h4, h5
    T = tile_rows * TW                       # B^T (d B): tile t's rows are h[0..3][t], h[0][t + TW], h[1][t + TW]
    for j in range(6):
        r0, r1, r2, r3, r4, r5 = h[0, j], h[1, j], h[2, j], h[3, j], h[0, j, TW:], h[1, j, TW:]
        v0, v1, v2, v3, v4, v5 = v[j, k], v[6 + j, k], v[12 + j, k], v[18 + j, k], v[24 + j, k], v[30 + j, k]
        for t in range(T):
            v0[t], v1[t], v2[t], v3[t], v4[t], v5[t] = _transform_in(r0[t], r1[t], r2[t], r3[t], r4[t], r5[t])


@helper
def _output_tiles(m, tile_rows, TW, out, n, y0, co0, pq, ph):
    """out[n, co0 + co, y0 + 4ty + a, 4tx + b] = (A^T M A)[a, b], M = m[:, co, ty*TW + tx] as 6x6, for each of
    m's channels co; rows and columns past the image edge are dropped. m: (36, Cm, T); pq: (24, T), ph: (4, TW)
    scratch. Every loop runs over contiguous memory but the last, which only interleaves the four column
    phases of a row; indexed, not sliced, in its loops (a view per row cost more than the row's arithmetic,
    issue 12)."""
    H, W = out.shape[2], out.shape[3]
    T = tile_rows * TW
    for co in range(m.shape[1]):
        for j in range(6):                   # A^T M: rows a = 0..3 of column j into pq[6a + j]
            for t in range(T):
                pq[j, t], pq[6 + j, t], pq[12 + j, t], pq[18 + j, t] = _transform_out(
                    m[j, co, t], m[6 + j, co, t], m[12 + j, co, t], m[18 + j, co, t], m[24 + j, co, t],
                    m[30 + j, co, t])
        for ty in range(tile_rows):          # (A^T M) A: columns b = 0..3 into ph[b], then interleaved into
            for a in range(4):               # output row y0 + 4ty + a
                oy = y0 + 4 * ty + a
                if oy >= H:
                    break
                e, base = 6 * a, ty * TW
                for tx in range(TW):
                    ph[0, tx], ph[1, tx], ph[2, tx], ph[3, tx] = _transform_out(
                        pq[e, base + tx], pq[e + 1, base + tx], pq[e + 2, base + tx], pq[e + 3, base + tx],
                        pq[e + 4, base + tx], pq[e + 5, base + tx])
                for tx in range(W // 4):
                    out[n, co0 + co, oy, 4 * tx] = ph[0, tx]
                    out[n, co0 + co, oy, 4 * tx + 1] = ph[1, tx]
                    out[n, co0 + co, oy, 4 * tx + 2] = ph[2, tx]
                    out[n, co0 + co, oy, 4 * tx + 3] = ph[3, tx]
                for q in range(W % 4):
                    out[n, co0 + co, oy, 4 * (W // 4) + q] = ph[q, W // 4]


@kernel
def _winograd_kernel(x, norm, up, u, out, band_tiles, co_block):
    # x: (N, Cx, H, W), norm, up: see _input_row (up's low has Cl channels, Cx + Cl = Ci); u: (36, Co, Ci);
    # out: (N, Co, H, W); band_tiles: tile rows per task; co_block: output channels per task (a multiple of 4,
    # so that pointwise_tile groups the rows as it would without the split)
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    Ci = x.shape[1] + up[0].shape[1]
    Co = u.shape[1]
    TH, TW = (H + 3) // 4, (W + 3) // 4
    n_bands = (TH + band_tiles - 1) // band_tiles
    n_blocks = (Co + co_block - 1) // co_block
    for task in prange(N * n_bands * n_blocks):
        n, band, block = task // (n_bands * n_blocks), (task // n_blocks) % n_bands, task % n_blocks
        ty0, co0 = band * band_tiles, block * co_block
        tile_rows, n_co = min(band_tiles, TH - ty0), min(co_block, Co - co0)
        T = band_tiles * TW
        xb = np.zeros((4 * band_tiles + 2, 4 * TW + 4), np.float32)         # padding columns stay zero
        rows = np.empty((2, W), np.float32)
        ph = np.empty((4, TW + 1), np.float32)
        h = np.empty((4, 6, T + TW), np.float32)
        pq = np.empty((24, T), np.float32)
        v_all = np.empty(36 * CI_GROUP * T, np.float32)
        m = np.zeros((36, n_co, T), np.float32)
        for c0 in range(0, Ci, CI_GROUP):        # a few input channels at a time, so V stays in cache
            group = min(CI_GROUP, Ci - c0)
            v = v_all[:36 * group * T].reshape((36, group, T))               # C-contiguous
            for k in range(group):
                _input_tiles(x, norm, up, n, c0 + k, 4 * ty0 - 1, tile_rows, TW, v, k, xb, rows, h, ph)
            for e in range(36):
                pointwise_tile(v, e, np.int64(0), tile_rows * TW, u[e], c0, co0, n_co, m[e])
        _output_tiles(m, tile_rows, TW, out, n, 4 * ty0, co0, pq, ph)


def _work_split(N, H, W, Co, threads):
    """(tile rows, output channels) per task: as many tasks as threads, or a multiple of them (tasks of equal
    size), each at most SCRATCH_FLOATS of V and M and, when possible, at least MIN_TASK_TILES tiles (shorter
    rows starve the vector loops: a 48x48 slice cut in four bands of 36 tiles ran 1.4x slower than in two of
    72); when the bands of the batch are still fewer than the threads, the output channels are split too (each
    task then transforms the same input: more work, but on idle cores)."""
    TH, TW = (H + 3) // 4, (W + 3) // 4
    band_tiles = max(1, min(TH, SCRATCH_FLOATS // (36 * (CI_GROUP + Co) * TW)))
    bands_per_sample = threads // math.gcd(N, threads)                  # N * bands: a multiple of threads
    band_tiles = min(band_tiles, max(-(-TH // bands_per_sample), -(-MIN_TASK_TILES // TW)))
    tasks = N * -(-TH // band_tiles)
    co_block = Co
    if tasks < threads:                                                 # blocks of 4k channels, at least
        co_block = 4 * max(1, -(-Co // 4) // -(-threads // tasks))      # threads / tasks of them
    return band_tiles, co_block


@functools.lru_cache(maxsize=64)
def _source_index(n_in, n_out, align_corners):
    """bilinear_source_index for a 2x upsampling, and whether it reads in pairs (resample.pairs_of_2x); kept:
    the same few sizes come back at every call (the kernel only reads these arrays)."""
    i0, i1, l0, l1 = bilinear_source_index(n_in, n_out, align_corners, 2.0)
    return i0, i1, l0, l1, pairs_of_2x(i0, i1, n_in)


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
    if u.shape != (36, Co, Ci):
        raise ValueError(f"conv3x3: Winograd weights must be (36, {Co}, {Ci}) for w {w.shape}, got {u.shape}")
    out = output(out, (N, Co, H, W), inputs=(x, low))
    if out.size:
        iy0, iy1, ly0, ly1, _ = _source_index(max(1, low.shape[2]), H, align_corners)
        ix0, ix1, lx0, lx1, pairs = _source_index(max(1, low.shape[3]), W, align_corners)
        band_tiles, co_block = _work_split(N, H, W, Co, numba.get_num_threads())
        _winograd_kernel(x, norm, (low, iy0, iy1, ly0, ly1, ix0, ix1, lx0, lx1, pairs), u, out, band_tiles,
                         co_block)
    return out
