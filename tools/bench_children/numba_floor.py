"""The least any warm start built on Numba can take, in a fresh process, printing `BENCH_JSON {...}`: import
numpy, import numba, then call one trivial function from Numba's cache (the first cache load sets Numba's
compiler up, as npunet's first kernel load does). With --without-blas, Numba is set up as npunet's segmenting
commands set it up (npunet.third_party.set_up_numba_without_blas: no scipy.linalg). Run it once to fill the
cache ($NUMBA_CACHE_DIR), then time it.

    python -m tools.bench_children.numba_floor [--without-blas]
"""

import json
import resource
import sys
import time

t0 = time.perf_counter()

import numpy  # noqa: E402,F401

t1 = time.perf_counter()

import numba  # noqa: E402

t2 = time.perf_counter()
if "--without-blas" in sys.argv:
    from npunet.third_party import set_up_numba_without_blas
    set_up_numba_without_blas()


@numba.njit(cache=True)
def one():
    return 1


one()
t3 = time.perf_counter()
print("BENCH_JSON " + json.dumps({"numpy_s": t1 - t0, "numba_s": t2 - t1, "first_cached_call_s": t3 - t2,
                                 "total_s": t3 - t0, "scipy_linalg": "scipy.linalg" in sys.modules,
                                 "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
import gc  # noqa: E402
gc.freeze()
