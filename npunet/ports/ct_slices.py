"""The CT slices a port check runs, chosen along the file's own axial axis and preprocessed exactly as
`npunet segment` preprocesses them (npunet.preprocess.prepare_slices, with the weights' parameters).

    z = spread_slices(ct.slices)              # DEFAULT_COUNT slices spread over the CT
    z = parse_slices("10,20,30", ct.slices)   # --slices
    chosen = prepare(ct, z, net.preprocessing)       # .x (N, C, S, S) float32, the network input

Slice indices count along the file's own slice axis from 0, as `npunet explain --slice` does, whatever the
orientation the network reads the volume in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npunet.errors import NpunetError
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, file_slice_order, prepare_slices

DEFAULT_COUNT = 5


@dataclass
class ChosenSlices:
    case: str              # the CT's name
    z: list[int]           # the slices, along the file's own axial axis
    slices: int            # how many axial slices the CT has
    x: np.ndarray          # (len(z), in_channels, S, S) float32: the network input, one slice per row


def spread_slices(slices: int, count: int = DEFAULT_COUNT) -> list[int]:
    """`count` slices spread evenly over a CT of `slices`: the middle of each of `count` equal parts (all of
    them when it has fewer)."""
    if slices <= count:
        return list(range(slices))
    return [int((k + 0.5) * slices / count) for k in range(count)]


def parse_slices(text: str, slices: int) -> list[int]:
    """'10,20,30' -> [10, 20, 30], each in 0 .. slices-1 and given once; NpunetError otherwise."""
    try:
        z = [int(part) for part in text.split(",")]
    except ValueError:
        raise NpunetError(f"--slices must be slice numbers separated by commas (e.g. 10,20,30), got {text!r}") from None
    bad = [v for v in z if not 0 <= v < slices]
    if bad:
        raise NpunetError(f"--slices {text}: {bad[0]} is out of range: the CT has {slices} axial slices "
                          f"(0 .. {slices - 1})")
    if len(set(z)) != len(z):
        raise NpunetError(f"--slices {text}: a slice is given twice")
    return z


def prepare(ct, z: list[int], preprocessing: dict) -> ChosenSlices:
    """The network input of the CT's slices `z` (file order), with the weights' `preprocessing`."""
    params = {**DEFAULT_PREPROCESSING, **preprocessing}
    view = canonical(ct.volume, ct.affine, params["orientation"])
    order = file_slice_order(ct.volume.shape, ct.affine, params["orientation"])
    canonical_z = [int(np.flatnonzero(order == v)[0]) for v in z]
    x, _ = prepare_slices(view.data, canonical_z, params)
    return ChosenSlices(ct.name, list(z), int(len(order)), x)
