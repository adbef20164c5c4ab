"""npunet's start-up in a fresh process, printing `BENCH_JSON {...}`: import and load the shipped weights
(verified; the kernels' work sizes stored or measured), then one forward of one slice (kernels loaded from the
Numba cache, or compiled on a first run), and peak resident memory."""

import json
import resource
import time

t0 = time.perf_counter()

import numpy as np  # noqa: E402

import npunet  # noqa: E402

net = npunet.load()
t1 = time.perf_counter()
net(np.zeros((1, 3, 192, 192), np.float32))
t2 = time.perf_counter()
print("BENCH_JSON " + json.dumps({"import_load_s": t1 - t0, "first_forward_s": t2 - t1, "total_s": t2 - t0,
                                 "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
