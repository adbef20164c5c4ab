"""A whole CT volume -> a 13-organ label volume on the same grid.

    labels = segment_array(volume_hu, affine, model)      # (X, Y, Z) float -> (X, Y, Z) uint8

Per batch of axial slices: 2.5D stack, HU window, pad to square, resize to the network size
(npunet.preprocess), the network, then the fused bilinear-upsample + argmax straight back to the native
slice (npunet.kernels.upsample_argmax): the 14-class logits are never materialised at full size.
Then the per-label 3x3x3 closing (npunet.postprocess). Every parameter comes from the model's weights file.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from npunet.errors import NpunetError, ResourceError
from npunet.kernels import upsample_argmax
from npunet.machine import check_batch_size
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, check_preprocessing, prepare_slices
from npunet.resources import available_memory, format_bytes


def logits_to_labels(logits: np.ndarray, window) -> np.ndarray:
    """(B, C, S, S) logits -> (B, height, width) uint8 labels of the native slices: bilinear upsampling to
    the padded square, crop, argmax, fused (npunet.kernels.upsample_argmax)."""
    return upsample_argmax(logits, window.side, window.side, window.y0, window.x0, window.height, window.width)


def mirror_axis(params: dict) -> int:
    """The axis of a network input (B, C, H, W) that runs across the body (left-right): H when the canonical
    orientation's first axis is R or L, W when its second is; ValueError when the slice holds no left-right
    axis (a sagittal orientation)."""
    orientation = params["orientation"]
    for axis, code in ((2, orientation[0]), (3, orientation[1])):
        if code in "RL":
            return axis
    raise ValueError(f"orientation {orientation}: the axial slice has no left-right axis to mirror")


def mirror_slices(x: np.ndarray, params: dict) -> np.ndarray:
    """x (B, C, H, W) mirrored left-right (a contiguous copy)."""
    return np.ascontiguousarray(np.flip(x, axis=mirror_axis(params)))


def mirror_average(logits: np.ndarray, mirrored_logits: np.ndarray, params: dict, labels=None) -> np.ndarray:
    """Test-time mirroring: the class probabilities of the slices (softmax of `logits`, (B, K, H, W)) averaged
    with those of their left-right mirrors, flipped back and with each left/right organ channel swapped
    with its partner (npunet.labels.mirror_labels: the mirror's left kidney is the slice's right kidney).
    Returns the averaged probabilities, float32 (B, K, H, W), which the bilinear upsample + argmax takes as
    it takes logits."""
    from npunet.labels import mirror_labels
    order = np.asarray(mirror_labels({int(k): v for k, v in labels.items()} if labels else None))
    if len(order) != logits.shape[1]:
        raise NpunetError(f"test-time mirroring needs a label name per class: {logits.shape[1]} classes, "
                          f"{len(order)} labels")
    back = np.flip(softmax(mirrored_logits), axis=mirror_axis(params))[:, order]
    out = softmax(logits)
    out += back
    out *= np.float32(0.5)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (B, K, H, W) float32, shifted by the maximum (no overflow)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e.astype(np.float32, copy=False)


def slice_batches(volume: np.ndarray, params: dict, batch_size: int, prepare=prepare_slices):
    """The one loop over a canonical (X, Y, Z) volume's axial slices: yields (zs, x, window) per batch of at
    most batch_size slices, x = prepare(volume, zs, params) the network input (B, C, S, S) and window where
    the native slice sits in its padded square (npunet.preprocess.prepare_slices; a port can pass its own)."""
    nz = volume.shape[2]
    for start in range(0, nz, batch_size):
        zs = np.arange(start, min(start + batch_size, nz))
        x, window = prepare(volume, zs, params)
        yield zs, x, window


def segment_array(volume_hu: np.ndarray, affine: np.ndarray, model, batch_size: int = 8,
                  postprocess: bool = True, progress=None, timings: dict | None = None, *,
                  prepare=prepare_slices, to_labels=logits_to_labels, tta: bool = False) -> np.ndarray:
    """(X, Y, Z) HU volume with its affine -> uint8 labels of the same shape, in the same axis order (the array
    in Fortran memory order, as nibabel reads and writes NIfTI).

    model(x) maps a batch (B, C, S, S) float32 to logits (B, classes, S, S) (an npunet Network, or any
    callable: tools/torch_pipeline.py runs the torch mirror through this same loop, with its own `prepare`
    and `to_labels`). progress(done, total) is called after each batch of slices; `timings`, if given,
    receives the seconds spent per stage ("preprocess", "network", "upsample_argmax", "postprocess"). The batch is at most the
    number of slices; the memory it needs is checked against what is available before anything is
    allocated (ResourceError naming the largest batch that fits), the model's preprocessing values are
    checked (npunet.preprocess.check_preprocessing), and NaN/Inf logits stop the run (NpunetError) rather
    than being turned into labels. tta: also run each slice's left-right mirror and average the two
    (mirror_average; the network runs twice).
    """
    batch_size = check_batch_size(batch_size)
    spec = getattr(model, "spec", None)
    params = check_preprocessing({**DEFAULT_PREPROCESSING, **getattr(model, "preprocessing", {})},
                                 "the model's preprocessing", NpunetError,
                                 in_channels=spec["in_channels"] if spec else None)
    clock = timings if timings is not None else {}
    for stage in ("preprocess", "network", "upsample_argmax", "postprocess"):
        clock.setdefault(stage, 0.0)
    view = canonical(volume_hu, affine, params["orientation"])
    nx, ny, nz = view.data.shape
    batch_size = min(int(batch_size), nz)
    check_batch_memory((nx, ny, nz), batch_size, params, spec)
    # The label map on the input's grid and in Fortran order, like the CT nibabel reads: each axial slice is
    # one contiguous block, which NIfTI stores as is (a C-ordered map made nibabel gather every byte across
    # slices when writing: 0.5 s against 0.08 s for 512x512x100), and which the closing and the counts read
    # in order. The batches are written through its canonical view, so it is never copied or reoriented.
    out = np.empty(volume_hu.shape, dtype=np.uint8, order="F")
    labels = view.of(out)                                           # (nx, ny, nz), a view of `out`
    t0 = time.perf_counter()
    for zs, x, win in slice_batches(view.data, params, batch_size, prepare):
        t1 = time.perf_counter()
        logits = model(x)
        if tta:
            logits = mirror_average(logits, model(mirror_slices(x, params)), params, getattr(model, "labels", None))
        with np.errstate(over="ignore", invalid="ignore"):
            total = logits.sum()
        if not np.isfinite(total):             # NaN/Inf anywhere (weights that overflow): never argmax them
            raise NpunetError(f"the network produced NaN or Inf logits for slices {zs[0]}..{zs[-1]}: the weights "
                              f"overflow on this input (are they broken?)")
        t2 = time.perf_counter()
        labels[:, :, zs[0]:zs[-1] + 1] = to_labels(logits, win).transpose(1, 2, 0)
        t3 = time.perf_counter()
        clock["preprocess"] += t1 - t0
        clock["network"] += t2 - t1
        clock["upsample_argmax"] += t3 - t2
        if progress is not None:
            progress(int(zs[-1]) + 1, nz)
        t0 = time.perf_counter()
    if postprocess and int(params.get("closing_radius", 0)) > 0:
        from npunet.postprocess import close_labels
        t0 = time.perf_counter()
        out = close_labels(out, radius=int(params["closing_radius"]), in_place=True)     # our own array
        clock["postprocess"] += time.perf_counter() - t0
    return out


def batch_memory(shape: tuple[int, int, int], params: dict, spec: dict | None) -> tuple[int, int]:
    """(fixed bytes, bytes per slice of batch) that segment_array allocates for a canonical volume of
    `shape` = (X, Y, Z): the label volume (twice: slice-major, then back in the input's order, plus the
    closing's masks), and per slice the 2.5D slab, its normalised copy, the padded square, the resized
    input, the network's layer outputs (npunet.spec.activation_elements), the logits and the labels. The
    2*context_slices extra slices a batch reads count as fixed."""
    nx, ny, nz = shape
    side, size, context = max(nx, ny), int(params["input_size"]), int(params["context_slices"])
    channels, classes = (spec["in_channels"], spec["num_classes"]) if spec else (2 * context + 1, 14)
    slab = 4 * (2 * nx * ny + side * side + size * size)                # one slice through steps 2-5
    from npunet.spec import activation_elements
    network = 4 * (activation_elements(spec, size, size) if spec else 0)
    per_slice = slab + 4 * channels * size * size + network + 4 * classes * size * size + nx * ny
    return 2 * context * slab + 3 * nx * ny * nz, per_slice


def check_batch_memory(shape: tuple[int, int, int], batch: int, params: dict, spec: dict | None) -> None:
    """ResourceError, with the numbers and the largest batch that fits, when segmenting a canonical volume
    of `shape` `batch` slices at a time needs more memory than is available (see batch_memory)."""
    fixed, per_slice = batch_memory(shape, params, spec)
    need, available = fixed + batch * per_slice, available_memory()
    if available is None or need <= available:
        return
    fits = (available - fixed) // per_slice
    advice = (f"use a batch size of {fits} or less (--batch-size)" if 1 <= fits < batch
              else "the slices are too large for this machine")
    raise ResourceError(f"segmenting {'x'.join(map(str, shape))} voxels {batch} slice{'s' * (batch > 1)} at a "
                        f"time ({format_bytes(per_slice)} per slice) needs {format_bytes(need)} of memory, "
                        f"{format_bytes(available)} is available; {advice}")


def kernels_cached() -> bool:
    """Whether this build's kernels have been compiled and cached on this machine before (warm_up leaves a
    mark in the kernel cache folder when it has run; npunet.kernels._numba keeps one folder per build)."""
    from npunet.kernels import _numba
    return (Path(_numba._CACHE_DIR) / WARM_MARK).is_file()


WARM_MARK = "warm"


def warm_up(model) -> None:
    """Load (or, on the very first run, compile) every kernel that segment_array uses, by running the
    network, the resize, the upsample+argmax, the closing and the label counts once on tiny inputs. Numba loads a kernel from
    its cache on the first call, and the first such load also sets Numba itself up: most of a warm start (see
    tools/bench.py --startup). Done here, it can overlap reading the CT."""
    from npunet.kernels import resize_bilinear
    from npunet.network import Network
    from npunet.kernels.morphology import label_counts
    from npunet.postprocess import close_labels
    if not isinstance(model, Network):
        return
    side = 2 * model.downsampling
    x = resize_bilinear(np.zeros((1, model.spec["in_channels"], side + 1, side + 1), np.float32), side, side)
    upsample_argmax(model(x), side, side)
    labels = np.zeros((3, 3, 3), np.uint8, order="F")        # Fortran order, as segment_array makes it
    labels[1, 1, 1] = 1
    label_counts(close_labels(labels, 1))
    if not kernels_cached():
        from npunet.kernels import _numba
        try:
            (Path(_numba._CACHE_DIR) / WARM_MARK).write_text("the kernels of this build were compiled here\n")
        except OSError:
            pass                        # a read-only cache: the message shows again, nothing else changes


def start_warm_up(model) -> threading.Thread:
    """warm_up(model) in a background thread; join it before calling any kernel from this thread (the
    threading layer may not accept parallel kernels launched from two threads at once)."""
    def quiet_warm_up():
        try:
            warm_up(model)
        except Exception:   # no traceback from the thread: segmenting meets the same error and reports it
            pass
    thread = threading.Thread(target=quiet_warm_up, name="npunet-warm-up", daemon=True)
    thread.start()
    return thread
