"""One whole case through npunet in a fresh process, as `npunet segment CT -o OUT --overwrite --quiet ...`
does it (npunet.api.segment, the function the command calls), printing `BENCH_JSON {...}`: the case's read,
segment and write seconds and the pipeline's stages (npunet.case.CaseResult), the seconds in this process,
its peak resident memory, and the CPU seconds of this process and its children (on a first run, the helper
that compiles half of the kernels: npunet.precompile)."""

import json
import resource
import sys
import time

t_start = time.perf_counter()

from npunet.resources import small_pages_for_large_arrays  # noqa: E402

small_pages_for_large_arrays()          # as the `npunet` command, before NumPy is imported

from npunet.third_party import import_nibabel_without_pydicom, set_up_numba_without_blas  # noqa: E402

import_nibabel_without_pydicom()        # as the `npunet` command (npunet.cli.main)
set_up_numba_without_blas()             # as `npunet segment` (npunet.cli.main)

from npunet import api, signals  # noqa: E402


def main(argv) -> int:
    ct, out, options = argv[0], argv[1], argv[2:]
    threads = int(options[options.index("--threads") + 1]) if "--threads" in options else None
    signals.install()
    [result] = api.segment(ct, out, overwrite=True, quiet=True, threads=threads)
    record = {"rc": 0 if result.ok else 1, "read": result.read_seconds, "segment": result.segment_seconds,
              "write": result.write_seconds, "timings": result.timings,
              "in_process_s": time.perf_counter() - t_start,
              "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              "cpu_s": sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                             resource.getrusage(resource.RUSAGE_CHILDREN)))}
    print("BENCH_JSON " + json.dumps(record), flush=True)
    import gc
    gc.freeze()                         # as the `npunet` command: no final collection of Numba's objects
    return record["rc"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
