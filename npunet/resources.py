"""How much memory npunet may still allocate, and the one check that every user-controlled size goes through.

Sizes that come from the user or from a file (an image header's shape, --batch-size, a weights file's
input_size, a spec's channels) are checked before anything is allocated: `check_memory(nbytes, what)`
raises ResourceError, with both numbers, when the allocation would not fit in the memory available now.

Available memory is the least of: /proc/meminfo's MemAvailable; the container's limit minus its usage
(cgroup v2 memory.max / memory.current, or v1); the address-space limit (ulimit -v) minus what the process
already maps; and $NPUNET_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix: "4G"), the most a user lets npunet
plan for one step (reading an image, segmenting a batch of slices), to keep it within a share of a machine.
Where none of these can be read, the check passes: the operating system then has the last word.
"""

from __future__ import annotations

import os
import re

from npunet.errors import ResourceError

MEMORY_LIMIT_ENV = "NPUNET_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; 3 * 2**30 -> '3.0 GiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def parse_bytes(text: str) -> int:
    """'4G' -> 4 * 2**30, '512M', '1000000' -> bytes; ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (write e.g. 4G, 512M or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kib_field(path: str, key: str) -> int | None:
    """Bytes in a "Key:   1234 kB" line of /proc/meminfo or /proc/self/status."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_free() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return max(limit - usage, 0)
    return None


def _address_space_free() -> int | None:
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return max(soft - (_kib_field("/proc/self/status", "VmSize") or 0), 0)


def _user_limit_free() -> int | None:
    text = os.environ.get(MEMORY_LIMIT_ENV)
    if not text:
        return None
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise ResourceError(f"${MEMORY_LIMIT_ENV}: {exc}") from None


def available_memory() -> int | None:
    """Bytes this process may still allocate (see the module doc), or None when nothing says."""
    candidates = [_kib_field("/proc/meminfo", "MemAvailable"), _cgroup_free(), _address_space_free(),
                  _user_limit_free()]
    known = [c for c in candidates if c is not None]
    if not known:
        try:
            known = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(known)


def check_memory(nbytes: float, what: str, advice: str = "") -> None:
    """Raise ResourceError when `nbytes` (about to be allocated for `what`) exceed the available memory.

    The message reads: "<what> needs 4.1 GiB of memory, 2.0 GiB is available[; <advice>]"."""
    available = available_memory()
    if available is not None and nbytes > available:
        tail = f"; {advice}" if advice else ""
        raise ResourceError(f"{what} needs {format_bytes(nbytes)} of memory, {format_bytes(available)} "
                            f"is available{tail}")


def peak_memory() -> int | None:
    """The most resident memory this process has held so far, in bytes (getrusage's ru_maxrss), or None
    where it cannot be read."""
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError, ValueError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024     # bytes on macOS, KiB on Linux


# glibc's malloc: mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(environ=os.environ) -> bool:
    """Undo a small MALLOC_TRIM_THRESHOLD_ in this process's environment, which Dask's nanny sets (65536) in every
    worker it starts so that freed memory goes back to the system at once. Setting it also switches off glibc's
    adaptive mmap threshold, so every array above 128 KiB is mapped fresh and page-faulted again at each batch:
    a 512x512x100 case then took 14x the page faults and ran 1.2-1.4x slower in a Dask worker than in-process
    (docs/cohort.md). Restores glibc's steady state for large arrays instead: arrays up to 32 MiB come from
    the heap and are reused (mmap threshold 32 MiB, trim threshold 64 MiB). Returns whether it changed
    anything (only on glibc, and only when MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ is set)."""
    if not (environ.get("MALLOC_TRIM_THRESHOLD_") or environ.get("MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):
        return False


HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def small_pages_for_large_arrays(environ=os.environ) -> bool:
    """Ask NumPy not to advise the kernel to back its large arrays with transparent huge pages
    ($NUMPY_MADVISE_HUGEPAGE=0, read once when NumPy is imported), unless the user has set that variable. On a
    Linux whose THP setting is "madvise" with defrag "madvise" (Ubuntu's default, and these cloud VMs'), a page
    fault in such an array may wait for the kernel to compact memory into a 2 MiB page, the longer the longer the
    machine has run: a 512x512x300 case spent 0.85-1.0 s more reading its CT into fresh float32 memory (1.86-2.02
    s against 1.01-1.02) and 0.9 s more in all (Intel Xeon family 6 model 167, after 12 hours of uptime,
    2026-12-06). The network's layer buffers, reused by every batch and 5-8 % faster on huge pages, ask for them
    themselves (advise_huge_pages). Called by the `npunet` command before anything imports NumPy; returns
    whether the setting is in effect (False when NumPy was imported first or the user chose otherwise)."""
    import sys
    if "numpy" in sys.modules:
        return environ.get(HUGEPAGE_ENV) == "0"
    environ.setdefault(HUGEPAGE_ENV, "0")
    return environ[HUGEPAGE_ENV] == "0"


_MADV_HUGEPAGE = 14                 # Linux's madvise advice (asm-generic/mman-common.h)


def advise_huge_pages(array) -> bool:
    """Ask Linux to back a large array that will be reused many times with transparent huge pages
    (madvise(MADV_HUGEPAGE) on its page-aligned part), as NumPy does for every large array unless
    $NUMPY_MADVISE_HUGEPAGE=0 (small_pages_for_large_arrays). Call it before the array is first written. The
    network's layer buffers (npunet.network.Network._buffer) are written and read by every batch: with huge
    pages a batch of 8 512x512 slices ran 5-8 % faster (fewer TLB misses), while one-shot arrays such as the
    CT as read are better off without. Returns whether the advice was given (False off Linux, for arrays under
    2 MiB, or if madvise refuses)."""
    import sys
    if not sys.platform.startswith("linux") or array.nbytes < (2 << 20):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        start = -(-array.ctypes.data // page) * page
        length = (array.ctypes.data + array.nbytes - start) // page * page
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError, ValueError):
        return False
