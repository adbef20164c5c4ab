"""The machine npunet runs on: its CPU's name, and the threads the kernels may use.

`cpu_model()` names the CPU the way every speed figure and stored tuning must (tools/bench.py's header, the
tuning file's key, the explain page, a run's report). `check_threads` / `use_threads` are the one check and
the one setter of the kernels' thread count, for every command and API that takes --threads.
"""

from __future__ import annotations

from pathlib import Path

from npunet.errors import NpunetError


def cpu_model() -> str:
    """'AMD EPYC (family 26, model 2)' from /proc/cpuinfo's first processor (platform.processor() where
    there is no /proc/cpuinfo)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():                  # the first processor's block is enough
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        import platform
        return platform.processor() or platform.machine()
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def max_threads() -> int:
    """The most threads the kernels can use (Numba's NUMBA_NUM_THREADS: the cores, unless set lower)."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def check_threads(threads, here: bool = True) -> int | None:
    """`threads` (None: all) as an int >= 1, or NpunetError; with `here` (the threads run on this machine, not
    on a cluster's workers) also at most max_threads()."""
    if threads is None:
        return None
    import numpy as np
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise NpunetError(f"--threads must be at least 1, got {threads}")
    most = max_threads() if here else threads
    if threads > most:
        raise NpunetError(f"--threads must be between 1 and {most} (the threads Numba can use), got {threads}")
    return int(threads)


def use_threads(threads) -> None:
    """Set the kernels' thread count for the calling thread (Numba keeps it per thread); None leaves it."""
    threads = check_threads(threads)
    if threads is not None:
        import numba
        numba.set_num_threads(threads)


def current_threads() -> int:
    """The kernels' thread count for the calling thread (what a run records in its report)."""
    import numba
    return int(numba.get_num_threads())


def check_batch_size(batch_size) -> int:
    """`batch_size` as an int >= 1 (slices per network call), or NpunetError."""
    import numpy as np
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise NpunetError(f"--batch-size must be an integer of at least 1, got {batch_size!r}")
    return int(batch_size)
