"""Small pictures of arrays for the explain report: a 2D array in, an RGB image or a PNG data: URI out.

Three colour scales, each for one kind of value:
    grey(a)        activations: black at the lowest value, white at the highest (or at lo / hi when given)
    diverging(a)   weights: blue for negative, white for 0, red for positive, symmetric around 0
    heat(a)        probabilities in [0, 1]: an inferno-like ramp from black through purple and orange to
                   pale yellow (perceptually ordered, readable in grey print)
`radiological(plane)` turns a slice of the canonical RAS volume (X, Y), or any network map of it, into the
way radiologists look at an axial slice: the patient's right on the image's left, anterior at the top (as
npunet.io.preview does). PNGs are written by npunet.io.preview.encode_png (standard library only).
"""

from __future__ import annotations

import base64

import numpy as np

from npunet.io.preview import encode_png

# (position, RGB) anchors of the ramps; colours between anchors are interpolated linearly.
DIVERGING_ANCHORS = ((0.0, (59, 76, 192)), (0.5, (247, 247, 247)), (1.0, (180, 4, 38)))
HEAT_ANCHORS = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
                (1.0, (252, 255, 164)))


def radiological(plane: np.ndarray) -> np.ndarray:
    """(X, Y) in RAS order (or (..., X, Y)) -> (Y, X) rows anterior first, columns patient's right first."""
    return np.swapaxes(plane[..., ::-1, ::-1], -1, -2)


def _ramp(t: np.ndarray, anchors) -> np.ndarray:
    """t in [0, 1] (any shape) -> (..., 3) uint8 along the piecewise-linear ramp through `anchors`."""
    where = np.array([a[0] for a in anchors])
    rgb = np.array([a[1] for a in anchors], dtype=np.float64)
    t = np.clip(np.nan_to_num(np.asarray(t, np.float64), nan=0.0), 0.0, 1.0)
    out = np.stack([np.interp(t, where, rgb[:, k]) for k in range(3)], axis=-1)
    return np.round(out).astype(np.uint8)


def grey(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8, lo (default: a's minimum) black and hi (default: its maximum) white."""
    a = np.asarray(a, np.float64)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    t = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return _ramp(t, ((0.0, (0, 0, 0)), (1.0, (255, 255, 255))))


def diverging(a: np.ndarray, limit: float | None = None) -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8: -limit blue, 0 white, +limit red (limit default: max |a|)."""
    a = np.asarray(a, np.float64)
    limit = float(np.abs(a).max()) if limit is None else float(limit)
    t = 0.5 + 0.5 * a / limit if limit > 0 else np.full_like(a, 0.5)
    return _ramp(t, DIVERGING_ANCHORS)


def heat(a: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 on the heat ramp (values outside are clipped)."""
    return _ramp(a, HEAT_ANCHORS)


def heat_colour(t: float) -> tuple[int, int, int]:
    """The heat ramp's colour at t in [0, 1] (for legends)."""
    return tuple(int(c) for c in _ramp(np.array([t]), HEAT_ANCHORS)[0])


def png_data_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> "data:image/png;base64,..." for an <img src>."""
    return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode("ascii")
