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

import numpy as np

from npunet.kernels import upsample_argmax
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, prepare_slices


def segment_array(volume_hu: np.ndarray, affine: np.ndarray, model, batch_size: int = 8,
                  postprocess: bool = True, progress=None, timings: dict | None = None) -> np.ndarray:
    """(X, Y, Z) HU volume with its affine -> uint8 labels of the same shape, in the same array order.

    progress(done, total) is called after each batch of slices; `timings`, if given, receives the seconds
    spent per stage ("preprocess", "network", "upsample_argmax", "postprocess").
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = {**DEFAULT_PREPROCESSING, **getattr(model, "preprocessing", {})}
    clock = timings if timings is not None else {}
    for stage in ("preprocess", "network", "upsample_argmax", "postprocess"):
        clock.setdefault(stage, 0.0)
    view = canonical(volume_hu, affine, params["orientation"])
    nx, ny, nz = view.data.shape
    labels = np.empty((nz, nx, ny), dtype=np.uint8)          # slice-major while filling
    for start in range(0, nz, batch_size):
        zs = np.arange(start, min(start + batch_size, nz))
        t0 = time.perf_counter()
        x, win = prepare_slices(view.data, zs, params)
        t1 = time.perf_counter()
        logits = model(x)
        t2 = time.perf_counter()
        labels[zs] = upsample_argmax(logits, win.side, win.side, win.y0, win.x0, win.height, win.width)
        t3 = time.perf_counter()
        clock["preprocess"] += t1 - t0
        clock["network"] += t2 - t1
        clock["upsample_argmax"] += t3 - t2
        if progress is not None:
            progress(int(zs[-1]) + 1, nz)
    out = np.ascontiguousarray(view.back(labels.transpose(1, 2, 0)))
    if postprocess and int(params.get("closing_radius", 0)) > 0:
        from npunet.postprocess import close_labels
        t0 = time.perf_counter()
        out = close_labels(out, radius=int(params["closing_radius"]))
        clock["postprocess"] += time.perf_counter() - t0
    return out


def warm_up(model) -> None:
    """Load (or, on the very first run, compile) every kernel that segment_array uses, by running the
    network, the resize and the upsample+argmax once on tiny inputs. Numba loads a kernel from its cache on
    the first call, and the first such load also sets Numba itself up: most of a warm start (see
    tools/bench.py --startup). Done here, it can overlap reading the CT. Also imports the closing's
    scipy.ndimage, another slow import."""
    import npunet.postprocess  # noqa: F401
    from npunet.kernels import resize_bilinear
    from npunet.network import Network
    if not isinstance(model, Network):
        return
    side = 2 * model.downsampling
    x = resize_bilinear(np.zeros((1, model.spec["in_channels"], side + 1, side + 1), np.float32), side, side)
    upsample_argmax(model(x), side, side)


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
