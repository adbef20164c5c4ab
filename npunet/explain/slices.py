"""Choosing the slice to explain and making it ready for the network, in the file's own slice order.

    counts = organ_pixels_per_slice(net, volume, affine)    # organ pixels the network predicts per slice
    si = slice_input(net, volume, affine, z)                 # the network input of slice z, and what to show
    seconds, whole = measure_layers(net, si.x, runs=7)       # median time per layer of the fused forward
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from npunet.network import Network
from npunet.pipeline import slice_batches
from npunet.preprocess import (DEFAULT_PREPROCESSING, canonical, canonical_voxel_sizes, file_slice_order,
                                prepare_slices)


def organ_pixels_per_slice(net: Network, volume_hu: np.ndarray, affine: np.ndarray, batch_size: int = 8,
                           progress=None) -> np.ndarray:
    """Pixels predicted as an organ (argmax > 0, at the network's resolution) per axial slice, in the file's
    own slice order: (Z,) int. progress(done, total) after each batch."""
    params = {**DEFAULT_PREPROCESSING, **net.preprocessing}
    view = canonical(volume_hu, affine, params["orientation"])
    nz = view.data.shape[2]
    counts = np.zeros(nz, np.int64)
    for zs, x, _ in slice_batches(view.data, params, batch_size):
        counts[zs] = np.count_nonzero(net(x).argmax(axis=1), axis=(1, 2))
        if progress is not None:
            progress(int(zs[-1]) + 1, nz)
    out = np.empty_like(counts)
    out[file_slice_order(volume_hu.shape, affine, params["orientation"])] = counts
    return out


@dataclass
class SliceInput:
    """One slice made ready for the network, with what the input section shows."""
    x: np.ndarray            # (1, C, S, S) float32, the network input
    hu: np.ndarray           # (X, Y) canonical HU slice, native resolution
    z_file: int              # the slice index along the file's axial axis
    channel_files: list      # the file slice index of each input channel
    zooms: tuple             # canonical voxel size (mm) along X, Y, Z
    side: int                # the padded square's side, before the resize
    window: object           # npunet.preprocess.SquareWindow: where the native slice sits in the square
    params: dict             # the preprocessing parameters used


def slice_input(net: Network, volume_hu: np.ndarray, affine: np.ndarray, z_file: int) -> SliceInput:
    params = {**DEFAULT_PREPROCESSING, **net.preprocessing}
    view = canonical(volume_hu, affine, params["orientation"])
    order = file_slice_order(volume_hu.shape, affine, params["orientation"])
    z = int(np.flatnonzero(order == z_file)[0])
    x, win = prepare_slices(view.data, [z], params)
    context = int(params["context_slices"])
    taps = np.clip(np.arange(z - context, z + context + 1), 0, len(order) - 1)
    zooms = canonical_voxel_sizes(affine, params["orientation"])
    return SliceInput(x, np.asarray(view.data[:, :, z], np.float32), int(z_file), [int(order[t]) for t in taps],
                      tuple(float(v) for v in zooms), win.side, win, params)


def measure_layers(net: Network, x: np.ndarray, runs: int = 7) -> tuple[np.ndarray, float]:
    """Median wall seconds per layer over `runs` passes of net.run_layers(x) (the fused path net(x) runs),
    and the median of as many whole net(x) calls, interleaved with them; one warm-up pass first."""
    net(x)
    per_layer, whole = [], []
    for _ in range(max(int(runs), 1)):
        per_layer.append([step.seconds for step in net.run_layers(x)])
        t0 = time.perf_counter()
        net(x)
        whole.append(time.perf_counter() - t0)
    return np.median(np.array(per_layer), axis=0), float(np.median(whole))
