"""The first run on a machine: Numba compiles the kernels (about 20 s of one core's time on a 2-core Xeon or
EPYC), and a second core can do half of it.

Numba's compiler holds one lock per process, so two threads compile no faster than one; two processes do,
and a kernel compiled by one is read from the per-build cache folder (npunet.kernels._numba) by the other. So
`ensure(names)` starts one helper process (`python -m npunet.precompile`) and both take the kernels from one
list, most expensive first, each claiming a kernel by creating a file in a shared folder (O_EXCL: exactly one
process compiles each kernel). When both are done, this process loads every kernel (the other's from the
cache; one whose compilation failed or never happened there is compiled here), and leaves a mark per kernel
in the cache folder, so that later starts skip all of this. The results do not depend on who compiled what:
the same source, options and CPU give the same machine code (tests/test_precompile.py checks the logits).

Each kernel is compiled by running its public op once on tiny inputs of the argument types the network and
the pipeline pass (EXERCISES), so that Numba compiles the very specialisation they use; a network names the
kernels it needs (npunet.network.Network.kernels). Helpers (npunet.kernels._numba.helper) are not cached on
their own, so the two processes never write the same cache index.

With one core, a read-only cache, NUMBA_DISABLE_JIT, or a helper process that cannot start, everything is
compiled here, as before: slower, never different.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HELPER_TIMEOUT_SECONDS = 600     # a helper still compiling then is stopped; this process compiles the rest


def _x(*shape):
    return np.zeros(shape, np.float32)


def _winograd():
    from npunet.kernels import conv3x3_winograd
    x = _x(1, 8, 8, 8)
    conv3x3_winograd(x, _x(4, 8, 3, 3))
    conv3x3_winograd(x, _x(4, 8, 3, 3), norm_relu=_x(1, 8, 4))
    conv3x3_winograd(x, _x(4, 12, 3, 3), low=_x(1, 4, 4, 4))


def _pointwise():
    from npunet.kernels import pointwise_conv
    pointwise_conv(_x(1, 8, 4, 4), _x(4, 8, 1, 1))
    pointwise_conv(_x(1, 8, 4, 4), _x(4, 8, 1, 1), _x(4), norm_relu=_x(1, 8, 4))


def _conv3x3_direct():
    from npunet.kernels import conv3x3
    conv3x3(_x(1, 3, 8, 8), _x(4, 3, 3, 3))


def _upsample_argmax():
    from npunet.kernels import upsample_argmax
    upsample_argmax(_x(1, 3, 4, 4), 8, 8, 1, 1, 6, 6)


def _bilinear():
    from npunet.kernels import resize_bilinear, upsample_concat
    resize_bilinear(_x(1, 1, 9, 9), 8, 8)
    upsample_concat(_x(1, 2, 8, 8), _x(1, 2, 4, 4))


def _depthwise():
    from npunet.kernels import depthwise_conv3x3
    depthwise_conv3x3(_x(1, 4, 8, 8), _x(4, 1, 3, 3))


def _group_norm():
    from npunet.kernels import group_norm
    x = _x(1, 8, 4, 4)
    group_norm(x, np.ones(8, np.float32), _x(8), 4, 1e-5, relu=True, out=x)


def _group_norm_coefficients():
    from npunet.kernels import group_norm_coefficients
    group_norm_coefficients(_x(1, 8, 4, 4), np.ones(8, np.float32), _x(8), 4, 1e-5)


def _eca():
    from npunet.kernels import eca
    x = _x(1, 8, 4, 4)
    eca(x, _x(1, 1, 3), out=x)


def _max_pool():
    from npunet.kernels import max_pool2x2
    max_pool2x2(_x(1, 4, 8, 8))


def _conv_transpose2x2():
    from npunet.kernels import conv_transpose2x2
    conv_transpose2x2(_x(1, 8, 4, 4), _x(8, 4, 2, 2), _x(4))


def _label_map():                  # as npunet.postprocess.close_labels, npunet.io.statistics and npunet.anatomy
    from npunet.kernels.morphology import close_label_box, label_boxes, label_counts, largest_part
    labels = np.zeros((3, 3, 3), np.uint8, order="F")        # Fortran order, as npunet.pipeline makes it
    labels[1, 1, 1] = 1
    close_label_box(labels, labels.copy(order="F"), 1, label_boxes(labels)[1], 1)
    label_counts(labels)
    largest_part(labels, 1, label_boxes(labels)[1])


def _concat():
    from npunet.kernels import concat_channels
    concat_channels(_x(1, 2, 4, 4), _x(1, 3, 4, 4))


# name -> a call of the public op(s) on tiny inputs, with the argument types the network and the pipeline
# pass, so that Numba compiles (or loads) the kernel specialisation they run. In the order to compile them:
# most expensive first (seconds to compile each in turn in one process on an empty NUMBA_CACHE_DIR, Intel Xeon
# family 6 model 167, 2026-12-06 23:30 UTC), so that the two processes finish at about the same time.
EXERCISES = {
    "winograd": _winograd,                                  # 9.5 s
    "conv3x3": _conv3x3_direct,                             # 3.2
    "label_map": _label_map,                                # 2.8: the closing, the label counts, the largest parts
    "upsample_argmax": _upsample_argmax,                    # 2.1 with its sure labels (2026-12-07 01:40 UTC)
    "pointwise": _pointwise,                                # 1.8 (its tile helper: 0.9 more, when alone)
    "conv_transpose2x2": _conv_transpose2x2,                # 1.8
    "depthwise": _depthwise,                                # 1.4
    "bilinear": _bilinear,                                  # 1.3
    "eca": _eca,                                            # 1.1
    "group_norm_coefficients": _group_norm_coefficients,    # 1.1
    "group_norm": _group_norm,                              # 1.0
    "concat": _concat,                                      # 0.6
    "max_pool": _max_pool,                                  # 0.6
}


def _cache_dir() -> Path:
    from npunet.kernels import _numba
    return Path(_numba._CACHE_DIR)


def _mark(name: str) -> Path:
    return _cache_dir() / f"compiled-{name}"


def ensure(names, processes: int | None = None) -> list[str]:
    """Compile (or load) the kernels of `names` (keys of EXERCISES), sharing the work with a helper process
    when there are two cores or more and a first run needs it; returns the names this call compiled or
    loaded (none when all were marked as compiled). Never raises for a helper that fails: this process then
    compiles what is missing itself."""
    import numba
    unknown = set(names) - set(EXERCISES)
    if unknown:
        raise ValueError(f"no kernel exercise named {sorted(unknown)}; known: {', '.join(EXERCISES)}")
    names = [n for n in EXERCISES if n in set(names)]         # most expensive first
    todo = [n for n in names if not _mark(n).is_file()]
    if not todo or numba.config.DISABLE_JIT:
        return []
    if processes is None:
        processes = compile_processes()
    helper = None
    with tempfile.TemporaryDirectory(prefix="npunet-compile-") as claims:
        if processes > 1 and len(todo) > 1 and _writable(_cache_dir()):
            helper = _start_helper(claims, todo)
        try:
            _compile_claimed(claims, todo)
            if helper is not None:
                try:
                    helper.wait(timeout=HELPER_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    helper.kill()
                    helper.wait()
        finally:
            if helper is not None and helper.poll() is None:
                helper.kill()
                helper.wait()
    for name in todo:                      # the helper's kernels from the cache (or compiled here if missing)
        EXERCISES[name]()
        try:
            _mark(name).write_text("compiled on this machine for this build\n")
        except OSError:
            pass                           # a read-only cache: compiled again by the next process
    return todo


def compile_processes() -> int:
    """How many processes share a first run's compilation: two where this process may run on two cores or
    more (its affinity mask where the OS has one), else one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cores)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _claim(claims: str, name: str) -> bool:
    """True for the one process that creates claims/name first."""
    try:
        os.close(os.open(os.path.join(claims, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _compile_claimed(claims: str, names) -> None:
    for name in names:
        if _claim(claims, name):
            EXERCISES[name]()


def _start_helper(claims: str, names) -> subprocess.Popen | None:
    """`python -m npunet.precompile CLAIMS BUILD_TAG NAME...`, run from the folder that holds this npunet
    package (so that it imports this very package), with this process's kernel cache folder."""
    from npunet.kernels import _numba
    package_root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    if _numba.numba.config.CACHE_DIR:                 # else the package's __pycache__, as here
        env["NUMBA_CACHE_DIR"] = str(_numba.numba.config.CACHE_DIR)
    try:
        return subprocess.Popen([sys.executable, "-m", "npunet.precompile", claims, _numba.BUILD_TAG, *names],
                                cwd=str(package_root), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def main(argv: list[str]) -> int:
    """The helper process: compile the kernels of argv[2:] that it claims in argv[0], if its build tag and
    cache folder are the caller's (argv[1]); otherwise nothing (the caller then compiles them)."""
    claims, tag, names = argv[0], argv[1], argv[2:]
    from npunet.third_party import set_up_numba_without_blas
    set_up_numba_without_blas()            # as the command that started this process (npunet.cli)
    from npunet.kernels import _numba
    if tag != _numba.BUILD_TAG or not os.path.isdir(claims):
        return 1
    _compile_claimed(claims, [n for n in names if n in EXERCISES])
    import gc
    gc.freeze()             # exit at once: the caller waits for this process, and collecting the objects that
    return 0                # Numba's compiler leaves behind took 0.2-0.4 s (as in the `npunet` command, npunet.cli)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
