"""Cohort throughput: cases per minute of `npunet segment FOLDER` serially and on a local Dask cluster, and
what the cluster costs per case.

    python -m tools.bench_cohort                       # 6 cases of 512x512x100, 3 interleaved rounds
    python -m tools.bench_cohort --cases 8 --slices 100 --rounds 5 --json cohort.json

Throughput. Each round runs, in turn and each in a fresh process as a user would (start-up included):
  serial      npunet segment IN -o OUT --threads C
  workers 1   npunet segment IN -o OUT --workers 1 --threads C
  workers 2   npunet segment IN -o OUT --workers 2 --threads C/2
(C: --cores, default all). Cases per minute = cases / wall seconds x 60, median over the rounds; the modes
alternate within a round so that a noisy neighbour slows them alike. Every output is compared with the
serial run's, byte for byte.

Overhead. In this process, on a warm LocalCluster of one worker with C threads (its worker plugin loaded by a
first, untimed run), segment_many runs the folder, one case at a time. Between two cases' completions the
worker ran the later case: what is left of that interval after the case's own seconds (the time a serial
run spends on it) is the overhead per case, set against the median case time. What is left of the run's wall
time after the cases and those gaps is paid once per run (weights checked, cases planned, first manifest).
On the cluster that overhead is the scheduler, the transfer and the worker's bookkeeping (claim, completion
record); the client's own work (progress, manifest) overlaps the next case. Measured the same way for an
in-process run (no Dask), it is the bookkeeping and the client's work, which there run between the cases.

The cases are 512x512xN CTs tiled from ts_chest (python -m tools.bench --case), one file linked under several names.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench import REPO, make_case


def make_cohort(folder: Path, cases: int, slices: int) -> Path:
    """`cases` copies (hard links) of one 512x512xslices CT, named case01_0000.nii.gz, ..."""
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    source = make_case(slices, folder)
    for i in range(1, cases + 1):
        os.link(source, inputs / f"case{i:02d}_0000.nii.gz")
    return inputs


def run_command(inputs: Path, out: Path, options: list[str]) -> float:
    """Wall seconds of `npunet segment inputs -o out OPTIONS --quiet` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "npunet", "segment", str(inputs), "-o", str(out) + os.sep,
                           *options, "--quiet"], capture_output=True, text=True, cwd=str(REPO))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"npunet segment {' '.join(options)} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    return bool(names) and names == sorted(p.name for p in b.glob("*.nii.gz")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def bench_throughput(inputs: Path, work: Path, cores: int, rounds: int) -> dict:
    modes = {"serial": ["--threads", str(cores)],
             "workers 1": ["--workers", "1", "--threads", str(cores)],
             "workers 2": ["--workers", "2", "--threads", str(max(1, cores // 2))]}
    walls = {m: [] for m in modes}
    identical = True
    for r in range(rounds):
        for mode, options in modes.items():
            out = work / mode.replace(" ", "")
            walls[mode].append(run_command(inputs, out, options))
            if mode != "serial":
                identical &= same_outputs(out, work / "serial")
            print(f"  round {r + 1} {mode:<10} {walls[mode][-1]:7.1f} s", flush=True)
    n = len(list(inputs.iterdir()))
    return {m: {"options": modes[m], "wall_s": w, "median_wall_s": statistics.median(w),
                "cases_per_min": n / statistics.median(w) * 60} for m, w in walls.items()} | \
        {"outputs_identical_to_serial": identical}


def bench_overhead(inputs: Path, work: Path, cores: int, rounds: int) -> dict:
    from npunet.api import segment_many
    from npunet.cohort import cluster
    warm = work / "warm_in"
    warm.mkdir()
    os.link(next(inputs.iterdir()), warm / "warm_0000.nii.gz")
    t0 = time.perf_counter()
    client, close = cluster.connect(workers=1)
    segment_many(warm, work / "warm_cluster", client=client, threads=cores)
    start_up = time.perf_counter() - t0
    segment_many(warm, work / "warm_here", threads=cores)
    rows = {"cluster": [], "in-process": []}
    try:
        for r in range(rounds):
            for where in rows:
                finished = []
                t0 = time.perf_counter()
                result = segment_many(inputs, work / f"over_{where}_{r}", threads=cores,
                                      client=client if where == "cluster" else None,
                                      on_case=lambda row: finished.append((time.perf_counter(), row["seconds"])))
                wall = time.perf_counter() - t0
                assert all(row["status"] == "done" for row in result), result
                # one worker, one case at a time: between two completions the worker ran the later case, and
                # what is left of that interval is the per-case overhead (scheduling, transfer, bookkeeping)
                gaps = [t - t_prev - s for (t_prev, _), (t, s) in zip(finished, finished[1:])]
                rec = {"wall_s": wall, "case_s": [s for _, s in finished], "gaps_s": gaps,
                       "fixed_s": wall - sum(s for _, s in finished) - sum(gaps)}
                rows[where].append(rec)
                print(f"  round {r + 1} {where:<10} wall {wall:6.1f} s, cases {sum(rec['case_s']):6.1f} s, "
                      f"per case {1000 * statistics.median(gaps):5.0f} ms, per run {rec['fixed_s']:5.2f} s",
                      flush=True)
    finally:
        close()
    summary = {}
    for where, rs in rows.items():
        case_median = statistics.median(s for r in rs for s in r["case_s"])
        per_case = statistics.median(g for r in rs for g in r["gaps_s"])
        summary[where] = {"runs": rs, "median_case_s": case_median, "overhead_per_case_s": per_case,
                          "overhead_percent_of_case": 100 * per_case / case_median,
                          "fixed_per_run_s": statistics.median(r["fixed_s"] for r in rs)}
    summary["cluster_start_and_first_case_s"] = start_up
    summary["worker_over_in_process"] = summary["cluster"]["median_case_s"] / summary["in-process"]["median_case_s"]
    return summary


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_cohort", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cases", type=int, default=6, help="cases in the folder (default 6)")
    p.add_argument("--slices", type=int, default=100, help="axial slices per case, 512x512 each (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (default 3)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="threads in all (default: all cores)")
    p.add_argument("--skip-throughput", action="store_true", help="only the overhead")
    p.add_argument("--skip-overhead", action="store_true", help="only the throughput")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    results = {"cpu": cpu_name(), "cores": args.cores, "cases": args.cases, "slices": args.slices,
               "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()}
    print(f"{results['cpu']}, {args.cores} threads in all; {args.cases} cases of 512x512x{args.slices}, "
          f"{args.rounds} rounds; load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="npunet-bench-cohort-") as tmp:
        work = Path(tmp)
        inputs = make_cohort(work, args.cases, args.slices)
        if not args.skip_throughput:
            results["throughput"] = t = bench_throughput(inputs, work, args.cores, args.rounds)
            print(f"\n{'mode':<10} {'median wall s':>14} {'cases/min':>10}   (fresh process each, start-up included)")
            for mode in ("serial", "workers 1", "workers 2"):
                print(f"{mode:<10} {t[mode]['median_wall_s']:>14.1f} {t[mode]['cases_per_min']:>10.2f}")
            print(f"every cluster output byte-identical to the serial one: {t['outputs_identical_to_serial']}")
        if not args.skip_overhead:
            print()
            results["overhead"] = o = bench_overhead(inputs, work, args.cores, args.rounds)
            for where in ("cluster", "in-process"):
                print(f"{where:<10}: median case {o[where]['median_case_s']:.2f} s, overhead "
                      f"{o[where]['overhead_per_case_s'] * 1000:.0f} ms per case "
                      f"({o[where]['overhead_percent_of_case']:.1f} % of a case) and "
                      f"{o[where]['fixed_per_run_s']:.2f} s per run")
            print(f"a case on the worker takes {o['worker_over_in_process']:.3f}x its in-process time (medians)")
            print(f"cluster start-up and its first case (warm Numba cache): "
                  f"{o['cluster_start_and_first_case_s']:.1f} s")
    results["load_after"] = os.getloadavg()
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
