"""float64 sums of float32 rows, vectorisable and in a fixed order: shared by GroupNorm (norm.py) and ECA
(eca.py). Without fastmath LLVM may not reorder a running sum, so a plain `s += row[i]` loop runs one
element at a time; spreading the sum over LANES partial sums makes it one long contiguous loop."""

from npunet.kernels._numba import helper

LANES = 256      # float64 partial sums per row: lane l sums elements l, l+LANES, ... (see lane_moments)


@helper
def lane_moments(row, shift, lanes):
    """(sum(row - shift), sum((row - shift)**2)) in float64, in one pass.
    Element i goes to partial sums lanes[0 or 1, i % LANES], added in order at the end: a fixed order (results
    do not depend on threads), and one long contiguous loop that LLVM vectorises, which a single running
    sum (a serial dependency) or a few scalar accumulators are not. lanes: (2, LANES) float64 scratch."""
    M = row.shape[0]
    n_full = M // LANES
    s, q = lanes[0], lanes[1]
    for l in range(LANES):
        s[l] = 0.0
        q[l] = 0.0
    for k in range(n_full):
        block = row[k * LANES:]
        for l in range(LANES):
            d = block[l] - shift
            s[l] += d
            q[l] += d * d
    for i in range(n_full * LANES, M):
        d = row[i] - shift
        s[i - n_full * LANES] += d
        q[i - n_full * LANES] += d * d
    total_s = total_q = 0.0
    for l in range(LANES):
        total_s += s[l]
        total_q += q[l]
    return total_s, total_q
