"""The label map's kernels: bounding boxes of every label, one label's closing by a cube, and the voxel count of
each label value.

label_boxes(labels)                          labels (X, Y, Z) uint8 -> (256, 6) int64 [x0, x1, y0, y1, z0, z1)
                                             per label value (x0 == X when the label is absent)
                                             mirrors scipy.ndimage.find_objects
close_label_box(labels, out, k, box, r)      out[v] = k where v is background in both labels and out and the
                                             closing of (labels == k) by a (2r+1)^3 cube is set, computed on
                                             the box padded by r with zeros (npunet.postprocess.close_labels)

label_counts(labels)                         labels uint8 (any shape, contiguous) -> (256,) int64 voxels per
                                             value; mirrors np.bincount(labels.ravel(), minlength=256)
largest_part(labels, k, box)                 -> (voxels, centroid, part_box) of the largest 26-connected part
                                             of labels == k in the box (npunet.anatomy); mirrors
                                             scipy.ndimage.label with a 3x3x3 structure, then the part of
                                             most voxels

The closing is a dilation then an erosion, each separable into three 1D max (min) passes of 2r+1 taps along
x, y and z, with 0 outside the padded box: the same values as scipy.ndimage.maximum_filter / minimum_filter
(size 2r+1, mode "constant", cval 0) on the padded box, which npunet.postprocess's reference uses. All of it is
0/1 arithmetic, exact; tests/test_postprocess.py compares the two on random label maps and a real one.
The largest part is found on runs: the voxels of k along x in each row (y, z) of the box, numbered in scan
order (x fastest, then y, then z); runs of neighbouring rows (y-1 in the same z, and y-1 .. y+1 in z-1) whose
x-ranges overlap or touch at a corner are 26-connected and joined (union-find, the lower run the root). A
part is then numbered by its first run, the order in which scipy.ndimage.label numbers parts on the box's
(z, y, x) view, and of parts of equal size the first met wins (as np.argmax over their sizes). Its voxels,
sums and box come from its runs, without visiting its voxels again. Serial: 0.044-0.049 s for the 13 organs
of a 512x512x300 map whose liver is one part of 5.4 million voxels, against 0.29-0.31 s for the flood fill
it replaced (26 neighbours visited per voxel) and more for scipy (Intel Xeon family 6 model 167).
"""

import numpy as np

from npunet.kernels._numba import helper, serial_kernel


@serial_kernel
def _label_boxes_kernel(labels, boxes):
    X, Y, Z = labels.shape
    for k in range(boxes.shape[0]):
        boxes[k, 0], boxes[k, 2], boxes[k, 4] = X, Y, Z
        boxes[k, 1], boxes[k, 3], boxes[k, 5] = 0, 0, 0
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                k = labels[x, y, z]
                if k:
                    if x < boxes[k, 0]:
                        boxes[k, 0] = x
                    if x + 1 > boxes[k, 1]:
                        boxes[k, 1] = x + 1
                    if y < boxes[k, 2]:
                        boxes[k, 2] = y
                    if y + 1 > boxes[k, 3]:
                        boxes[k, 3] = y + 1
                    if z < boxes[k, 4]:
                        boxes[k, 4] = z
                    boxes[k, 5] = z + 1


def label_boxes(labels):
    """labels: (X, Y, Z) uint8 -> (256, 6) int64: per label value k, the box [x0, x1) x [y0, y1) x [z0, z1)
    holding every voxel of k (x0 == X, x1 == 0 when k is absent; row 0, the background, is left empty).
    Fastest on a Fortran-ordered map (x fastest), as npunet.pipeline makes it."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise ValueError(f"label_boxes: labels must be a 3D uint8 array, got {labels.dtype} {labels.shape}")
    boxes = np.empty((256, 6), np.int64)
    _label_boxes_kernel(np.asfortranarray(labels), boxes)
    return boxes


@helper
def _line_pass(src, dst, axis, r, dilate):
    """dst = the max (dilate) or min of src over 2r+1 neighbours along `axis` (0: x, 1: y, 2: z of the (z, y, x)
    arrays), 0 outside. Every inner loop runs along x, contiguous."""
    nz, ny, nx = src.shape
    for z in range(nz):
        for y in range(ny):
            o = dst[z, y]
            row = src[z, y]
            for x in range(nx):
                o[x] = row[x]
            for d in range(-r, r + 1):
                if d == 0:
                    continue
                if axis == 0:                        # neighbour x + d of the same row
                    lo, hi = max(0, -d), min(nx, nx - d)
                    if dilate:
                        for x in range(lo, hi):
                            o[x] = max(o[x], row[x + d])
                    else:
                        for x in range(lo, hi):
                            o[x] = min(o[x], row[x + d])
                        for x in range(0, min(lo, nx)):   # the neighbour is outside: 0
                            o[x] = 0
                        for x in range(max(hi, 0), nx):
                            o[x] = 0
                    continue
                yy, zz = (y + d, z) if axis == 1 else (y, z + d)
                if 0 <= yy < ny and 0 <= zz < nz:
                    other = src[zz, yy]
                    if dilate:
                        for x in range(nx):
                            o[x] = max(o[x], other[x])
                    else:
                        for x in range(nx):
                            o[x] = min(o[x], other[x])
                elif not dilate:
                    for x in range(nx):
                        o[x] = 0


@serial_kernel
def _close_label_kernel(labels, out, k, x0, x1, y0, y1, z0, z1, r):
    # a: the padded box as (z, y, x), x fastest; 1 where labels == k
    nx, ny, nz = x1 - x0 + 2 * r, y1 - y0 + 2 * r, z1 - z0 + 2 * r
    a = np.zeros((nz, ny, nx), np.uint8)
    b = np.empty((nz, ny, nx), np.uint8)
    for z in range(z0, z1):
        for y in range(y0, y1):
            for x in range(x0, x1):
                if labels[x, y, z] == k:
                    a[z - z0 + r, y - y0 + r, x - x0 + r] = 1
    for step in range(6):              # dilation along x, y, z, then erosion: a -> b -> a ..., ending in a
        if step % 2 == 0:
            _line_pass(a, b, step % 3, r, step < 3)
        else:
            _line_pass(b, a, step % 3, r, step < 3)
    for z in range(z0, z1):
        for y in range(y0, y1):
            for x in range(x0, x1):
                if a[z - z0 + r, y - y0 + r, x - x0 + r] and labels[x, y, z] == 0 and out[x, y, z] == 0:
                    out[x, y, z] = k


def _checked_box(box, shape, op):
    """box [x0, x1, y0, y1, z0, z1) as six ints, each range non-empty and inside `shape`, else ValueError."""
    x0, x1, y0, y1, z0, z1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= shape[0] and 0 <= y0 < y1 <= shape[1] and 0 <= z0 < z1 <= shape[2]):
        raise ValueError(f"{op}: box {tuple(box)} is empty or outside labels {tuple(shape)}")
    return x0, x1, y0, y1, z0, z1


def close_label_box(labels, out, k, box, radius):
    """Fill out[v] = k where labels[v] == 0 and out[v] == 0 and the closing of (labels == k) by a cube of side
    2*radius + 1, computed on `box` ([x0, x1, y0, y1, z0, z1), label_boxes' row k) padded by radius with
    zeros, is set. labels, out: (X, Y, Z) uint8 of the same shape (out is written in place)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 3 or not isinstance(out, np.ndarray) \
            or out.shape != labels.shape or out.dtype != np.uint8:
        raise ValueError(f"close_label_box: labels and out must be 3D uint8 arrays of one shape, got "
                         f"{labels.dtype} {labels.shape} and {getattr(out, 'dtype', None)} {getattr(out, 'shape', None)}")
    x0, x1, y0, y1, z0, z1 = _checked_box(box, labels.shape, "close_label_box")
    _close_label_kernel(labels, out, np.uint8(k), x0, x1, y0, y1, z0, z1, int(radius))
    return out


@serial_kernel
def _label_counts_kernel(flat, counts):
    for k in range(counts.shape[0]):
        counts[k] = 0
    for i in range(flat.shape[0]):
        counts[flat[i]] += 1


def label_counts(labels):
    """labels: uint8 array of any shape -> (256,) int64, the number of voxels of each value (as
    np.bincount(labels.ravel(), minlength=256), without its intp copy of the map: one pass, 20 ms for a
    512x512x100 map against 0.13 s)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        raise ValueError(f"label_counts: labels must be uint8, got {labels.dtype}")
    flat = labels.ravel(order="K") if labels.flags.c_contiguous or labels.flags.f_contiguous \
        else np.ascontiguousarray(labels).ravel()
    counts = np.empty(256, np.int64)
    _label_counts_kernel(flat, counts)
    return counts


@helper
def _find(parent, r):
    """The root of run r (the first run of its part), halving the path on the way."""
    while parent[r] != r:
        parent[r] = parent[parent[r]]
        r = parent[r]
    return r


@helper
def _join_rows(parent, starts, ends, a0, a1, b0, b1):
    """Union the runs a0..a1-1 of one row with the runs b0..b1-1 of a neighbouring row (26-connected: their
    x-ranges overlap or touch at a corner), walking both rows' runs in x order; the lower root stays root."""
    i, j = a0, b0
    while i < a1 and j < b1:
        if starts[i] <= ends[j] and starts[j] <= ends[i]:     # [start, end) ranges, one voxel apart at most
            ri, rj = _find(parent, i), _find(parent, j)
            if ri < rj:
                parent[rj] = ri
            elif rj < ri:
                parent[ri] = rj
        if ends[i] < ends[j]:
            i += 1
        else:
            j += 1


@serial_kernel
def _largest_part_kernel(labels, k, x0, x1, y0, y1, z0, z1, summary):
    # labels: (X, Y, Z) uint8, x fastest; summary: (10,) int64 out: the largest part's voxels, its sums of x, y
    # and z, and its box [x0, x1, y0, y1, z0, z1) in labels. Parts are unions of runs (the voxels of k along x
    # in one row (y, z) of the box), numbered by their first run, so in the order the scan meets them.
    ny, nz = y1 - y0, z1 - z0
    n = 0
    for z in range(z0, z1):                                  # count the runs
        for y in range(y0, y1):
            inside = False
            for x in range(x0, x1):
                here = labels[x, y, z] == k
                if here and not inside:
                    n += 1
                inside = here
    starts = np.empty(n, np.int64)                           # run r: x in [starts[r], ends[r]) of its row
    ends = np.empty(n, np.int64)
    row_first = np.empty(ny * nz + 1, np.int64)              # the runs of row (y, z): row_first[i] .. [i + 1] - 1
    r = 0
    for z in range(z0, z1):
        for y in range(y0, y1):
            row_first[(z - z0) * ny + (y - y0)] = r
            x = x0
            while x < x1:
                if labels[x, y, z] == k:
                    starts[r] = x
                    while x < x1 and labels[x, y, z] == k:
                        x += 1
                    ends[r] = x
                    r += 1
                else:
                    x += 1
    row_first[ny * nz] = n
    parent = np.arange(n)
    for zi in range(nz):                                     # join each row to the rows before it that touch it
        for yi in range(ny):
            i = zi * ny + yi
            a0, a1 = row_first[i], row_first[i + 1]
            if a0 == a1:
                continue
            if yi > 0:
                _join_rows(parent, starts, ends, a0, a1, row_first[i - 1], row_first[i])
            if zi > 0:
                for dy in range(-1, 2):
                    if 0 <= yi + dy < ny:
                        j = i - ny + dy
                        _join_rows(parent, starts, ends, a0, a1, row_first[j], row_first[j + 1])
    size = np.zeros(n, np.int64)                             # voxels per part, at its root
    for r in range(n):
        parent[r] = _find(parent, r)
        size[parent[r]] += ends[r] - starts[r]
    best, best_voxels = -1, 0
    for r in range(n):                                       # roots in scan order: of equal parts the first wins
        if parent[r] == r and size[r] > best_voxels:
            best, best_voxels = r, size[r]
    sum_x, sum_y, sum_z = 0, 0, 0
    bx0, bx1, by0, by1, bz0, bz1 = labels.shape[0], 0, labels.shape[1], 0, labels.shape[2], 0
    for i in range(ny * nz):
        y, z = y0 + i % ny, z0 + i // ny
        for r in range(row_first[i], row_first[i + 1]):
            if parent[r] == best:
                length = ends[r] - starts[r]
                sum_x += (starts[r] + ends[r] - 1) * length // 2
                sum_y += y * length
                sum_z += z * length
                bx0, bx1 = min(bx0, starts[r]), max(bx1, ends[r])
                by0, by1 = min(by0, y), max(by1, y + 1)
                bz0, bz1 = min(bz0, z), max(bz1, z + 1)
    summary[0], summary[1], summary[2], summary[3] = best_voxels, sum_x, sum_y, sum_z
    summary[4], summary[5], summary[6], summary[7] = bx0, bx1, by0, by1
    summary[8], summary[9] = bz0, bz1


def largest_part(labels, k, box):
    """labels (X, Y, Z) uint8, k a label value, box [x0, x1, y0, y1, z0, z1) (label_boxes' row k) -> (voxels,
    centroid, part_box) of the largest 26-connected part of labels == k in the box (of equal parts, the first
    met scanning x fastest): its voxel count, its centroid (3,) float64 in labels' voxel coordinates (x, y, z),
    and its own box (6,) int64 (voxels 0, centroid NaN and an empty box, as label_boxes', when k is absent from
    the box)."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise ValueError(f"largest_part: labels must be a 3D uint8 array, got {labels.dtype} {labels.shape}")
    x0, x1, y0, y1, z0, z1 = _checked_box(box, labels.shape, "largest_part")
    summary = np.empty(10, np.int64)
    _largest_part_kernel(np.asfortranarray(labels), np.uint8(k), x0, x1, y0, y1, z0, z1, summary)
    voxels = int(summary[0])
    if not voxels:                                           # boxes of absent labels as label_boxes gives them
        return 0, np.full(3, np.nan), np.array([labels.shape[0], 0, labels.shape[1], 0, labels.shape[2], 0])
    return voxels, summary[1:4] / voxels, summary[4:10].copy()
