"""npunet's start-up in a fresh process, printing `BENCH_JSON {...}`: import and load the shipped weights
(verified; the kernels' work sizes stored or measured), then one forward of one slice (kernels loaded from the
Numba cache, or compiled on a first run), peak resident memory, and the modules that were imported by then
(whether nibabel, scipy or pydicom were: a warm start needs none of them).

    python -m tools.bench_children.startup [--threads N]
"""

import json
import resource
import sys
import time

t0 = time.perf_counter()

import numpy as np  # noqa: E402

import npunet  # noqa: E402

if "--threads" in sys.argv:
    from npunet.machine import use_threads
    use_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
net = npunet.load()
t1 = time.perf_counter()
net(np.zeros((1, 3, 192, 192), np.float32))
t2 = time.perf_counter()
print("BENCH_JSON " + json.dumps({"import_load_s": t1 - t0, "first_forward_s": t2 - t1, "total_s": t2 - t0,
                                 "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                 "imported": sorted(m for m in ("nibabel", "scipy", "pydicom", "scipy.ndimage")
                                                    if m in sys.modules)}), flush=True)
import gc  # noqa: E402
gc.freeze()                         # as the `npunet` command: no final collection of Numba's objects
