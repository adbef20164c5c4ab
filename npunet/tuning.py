"""Per-CPU work sizes of the convolutions, chosen by measurement on this machine and stored (like FFTW's wisdom).

Two knobs decide how much data a kernel task works on, and their best value follows the CPU's caches (Intel's
2 MB L2 and 48 KB L1d per core against Zen 4's 1 MB and 32 KB), not its vendor name:
- winograd.SCRATCH_FLOATS: the transformed input and product tiles of one Winograd task (sets its band of rows);
- conv.TILE: the pixels per channel of one pointwise / depthwise task.
Results do not depend on either (each output element sums its inputs in the same order whatever the split;
tests/test_tuning.py checks every candidate bit for bit), only the speed does.

At first use (`tiles()`, called when a network is loaded from its file, npunet.network.from_file) the choice is read from tiles.json beside Numba's
kernel cache, which is already per build tag (CPU name and features, kernel sources, numba and llvmlite
versions; npunet.kernels._numba); the file is also keyed by the CPU model and npunet's version. When it is
missing or keyed otherwise, a short pass (about a second) times each candidate on a decoder-sized conv and
stores the fastest; not on a first run, which has just compiled the kernels and keeps the built-in values
(the next run measures), so that a new user waits for the compilation alone. `npunet tune` redoes the pass;
$NPUNET_TILES=default skips it and keeps the built-in values.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from npunet.errors import InputError
from npunet.machine import cpu_model
from npunet.publish import atomic_write
from npunet.version import __version__

CANDIDATES = {
    "winograd_scratch_floats": (1 << 18, 1 << 19, 1 << 20, 1 << 21),
    "tile": (1024, 2048, 4096),
}
DEFAULTS = {"winograd_scratch_floats": 1 << 20, "tile": 1024}

_chosen: dict | None = None       # what this process uses, once tiles() has run


def wisdom_path() -> Path:
    """tiles.json in the kernels' Numba cache folder for this build."""
    from npunet.kernels import _numba
    return Path(_numba._CACHE_DIR) / "tiles.json"


def wisdom_key() -> dict:
    """What a stored choice is valid for."""
    from npunet.kernels import _numba
    return {"cpu": cpu_model(), "numba_cpu_name": _numba.cpu_name(), "build_tag": _numba.BUILD_TAG,
            "npunet": __version__}




def apply(choice: dict) -> None:
    """Set the kernels' work sizes (the wrappers read them at each call)."""
    from npunet.kernels import conv, winograd
    winograd.SCRATCH_FLOATS = int(choice["winograd_scratch_floats"])
    conv.TILE = int(choice["tile"])


def describe() -> str:
    """The work sizes in use, and where they came from, in one line (tools/bench.py prints it)."""
    choice = tiles()
    return (f"winograd_scratch_floats={choice['winograd_scratch_floats']} tile={choice['tile']} "
            f"({choice.get('source', '?')})")


def tiles(defer: bool = False) -> dict:
    """The work sizes for this machine, applied: stored ones, else measured now and stored. Once per process.
    defer (a first run, which has just compiled the kernels): with none stored, the built-in defaults for this
    process, the measurement (0.5 s on a 2-core Xeon) left to the next run; the results are the same bits
    whatever the sizes (tests/test_tuning.py), only the speed can differ a little."""
    global _chosen
    if _chosen is None:
        if os.environ.get("NPUNET_TILES") == "default":
            choice = dict(DEFAULTS, source="built-in defaults ($NPUNET_TILES=default)")
        else:
            choice = _load() or (dict(DEFAULTS, source="built-in defaults (a first run: measured on the next)")
                                 if defer else tune())
        apply(choice)
        _chosen = choice
    return _chosen


def _load() -> dict | None:
    try:
        stored = json.loads(wisdom_path().read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != wisdom_key() or any(stored.get(k) not in v for k, v in CANDIDATES.items()):
        return None
    return {k: stored[k] for k in CANDIDATES} | {"source": f"measured {stored.get('date', '?')}, {wisdom_path()}"}


def tune(repeats: int = 5, store: bool = True) -> dict:
    """Time every candidate of each knob (the others at their defaults) on the layer shapes where the knob
    matters, keep the fastest, store it in wisdom_path() when `store` (silently not, if the folder is not
    writable), apply it, and return it with the seconds measured ('times')."""
    global _chosen
    from npunet import kernels as K
    from npunet.precompile import ensure
    ensure(["winograd", "pointwise", "depthwise"])              # a first run: compiled in two processes
    rng = np.random.default_rng(0)
    # decoder conv 96 -> 32 at 96x96, and a pointwise 32 -> 64 / depthwise at 96x96, batch 8 (what segment runs)
    x = rng.standard_normal((8, 96, 96, 96), dtype=np.float32)
    u = K.winograd_weights(rng.standard_normal((32, 96, 3, 3)))
    w3 = rng.standard_normal((32, 96, 3, 3), dtype=np.float32)
    xp = rng.standard_normal((8, 32, 96, 96), dtype=np.float32)
    wp = rng.standard_normal((64, 32, 1, 1), dtype=np.float32)
    wd = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)
    out3, outp, outd = (np.empty((8, 32, 96, 96), np.float32), np.empty((8, 64, 96, 96), np.float32),
                        np.empty_like(xp))
    runs = {"winograd_scratch_floats": lambda: K.conv3x3_winograd(x, w3, out=out3, u=u),
            "tile": lambda: (K.pointwise_conv(xp, wp, out=outp), K.depthwise_conv3x3(xp, wd, out=outd))}
    choice, times = dict(DEFAULTS), {}
    for knob, run in runs.items():
        times[knob] = {}
        for value in CANDIDATES[knob]:
            apply(dict(choice, **{knob: value}))
            run()                                               # compile or load, first touch
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            times[knob][value] = best
        choice[knob] = min(times[knob], key=times[knob].get)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    choice["source"] = f"measured {date}" + (f", {wisdom_path()}" if store else "")
    if store:
        _store({"key": wisdom_key(), "date": date, **{k: choice[k] for k in CANDIDATES},
                "seconds": {k: {str(v): s for v, s in t.items()} for k, t in times.items()}})
    apply(choice)
    _chosen = choice
    return dict(choice, times=times)


def _store(record: dict) -> None:
    """Write tiles.json whole (npunet.publish.atomic_write), or nothing if the folder is not writable."""
    path = wisdom_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    except (OSError, InputError):
        pass
