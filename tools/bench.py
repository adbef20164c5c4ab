"""Benchmark npunet's network forward against its competitors, side by side in one run.

    python -m tools.bench                       # default model, batch 1 and 8, 5 rounds
    python -m tools.bench --batch 8 --rounds 7 --threads 2 --json out.json
    python -m tools.bench --threads 1 2 4 8 16  # thread scaling: the whole table per thread count

Every run starts with a header saying where it ran (CPU model and family, Numba's CPU name and vector ISA,
the compile features, numba/llvmlite versions, threading layer, threads, npunet's kernel build tag and tuned
tiles); --json FILE writes that header and every figure, so runs on different machines can be compared.

Every engine gets the same weights (seeded random, or --weights FILE) and the same input; ONNX Runtime and
OpenVINO run the ONNX model that npunet exports itself (`npunet export onnx`: no torch needed for them). The
engines are interleaved within each round (npunet, torch NCHW, torch channels_last, ONNX Runtime, OpenVINO
fp32, in turn) so that a noisy neighbour slows all of them alike; before each engine's timed calls the benchmark waits
--gap seconds, because every engine's thread pool (OpenMP, TBB, ONNX Runtime's) spin-waits for a while after a
call, and on a 2-core machine a spinning pool takes a core from whichever engine runs next (at batch 1 that
slowed every engine by 30-70 %). The table gives the median time per call, the time per slice, and the ratio
to npunet. An engine that is not installed is skipped with a note.
First-call (Numba compilation or cache load) time is reported separately from the steady state.

    python -m tools.bench --case 100 300        # whole `npunet segment` file-to-file, 512x512xN CT
    python -m tools.bench --startup             # first run (empty kernel cache) vs warm start

--case builds a 512x512xN CT by tiling ts_chest_0000.nii.gz (512x512x20) along z (imagesTr/ of
$NPUNET_DATA, default ../shared/data), writes it to a temporary NIfTI, then runs `npunet segment` on it
in a fresh subprocess (tools/bench_children/npunet_case.py, which calls npunet.api.segment as the command
does and prints the case's own timings, npunet.case.CaseResult: read, segment, write and the pipeline's
stages), next to the same case through the torch forward (tools/bench_children/torch_case.py,
tools/torch_pipeline.py). For each npunet case it prints what the user waits for, stage by stage: the wall
time of the process, the network forward, the start-up (the wall time minus the stages: Python, imports,
weights, the kernel cache), the read, the upsample + argmax, the post-processing, the anatomy checks,
preprocess + write, the rest of segment, each with its share of the wall time, and the peak RSS (the child's own
getrusage(RUSAGE_SELF).ru_maxrss at exit). --runs N times N runs per size and shows the one of median wall
time. --startup times, in fresh subprocesses, the README's first command (`npunet segment` of ts_chest_0000)
with an empty NUMBA_CACHE_DIR (compilation), the bare start-up (import, weights loaded and verified, one
forward of one slice) with an empty cache (cold) and with that cache present (warm), and the floor of any warm
start built on Numba (tools/bench_children/numba_floor.py: import numpy and numba, one trivial function from
Numba's cache; with Numba's defaults, and set up as `npunet segment` sets it up). The header names the CPU;
--json keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def vector_isa(features: str) -> str:
    """The widest vector ISA in an LLVM feature string, and whether LLVM is told to prefer 256-bit vectors."""
    on = {f[1:] for f in features.split(",") if f.startswith("+")}
    isa = next((name for flag, name in [("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                         ("sse4.2", "SSE4.2")] if flag in on), "baseline")
    return isa + (" (prefer-256-bit)" if "prefer-256-bit" in on else "")


def machine_header(threads) -> dict:
    """Where the benchmark ran: what a figure from another machine must be compared with."""
    import llvmlite
    import numba
    from npunet import tuning
    from npunet.kernels import _numba
    from npunet.machine import cpu_model
    from npunet.version import __version__
    from npunet.kernels.conv import pointwise_conv
    pointwise_conv(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32))  # starts the pool
    features = _numba.cpu_features()
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "numba_cpu_name": _numba.cpu_name(),
            "vector_isa": vector_isa(features), "cpu_features": features,
            "numba": numba.__version__, "llvmlite": llvmlite.__version__, "npunet": __version__,
            "kernel_build_tag": _numba.BUILD_TAG, "threading_layer": numba.threading_layer(),
            "threads": threads, "tiles": tuning.describe(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def print_header(header: dict) -> None:
    for key, value in header.items():
        if key != "cpu_features":
            print(f"# {key}: {value}")


def make_engines(weights_path: Path, threads: int, notes: list) -> dict:
    """name -> callable(x) for every engine that is installed. ONNX Runtime and OpenVINO (fp32) run the ONNX
    model npunet exports itself (npunet.ports.onnx_export, no torch needed); the torch engines need torch."""
    import npunet
    engines = {}
    net = npunet.load(weights_path)
    engines["npunet"] = net
    try:
        import torch
        from tools.torch_pipeline import torch_model_from_weights
        torch.set_num_threads(threads)
        model, _ = torch_model_from_weights(weights_path)

        def torch_nchw(x, model=model):
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        engines["torch NCHW"] = torch_nchw
        model_cl = torch_model_from_weights(weights_path)[0].to(memory_format=torch.channels_last)

        def torch_cl(x, model=model_cl):
            with torch.no_grad():
                return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).contiguous().numpy()
        engines["torch channels_last"] = torch_cl
    except ImportError:
        notes.append("torch not installed: torch engines skipped")
    from npunet.errors import NpunetError
    from npunet.ports.onnx_export import export_onnx
    from npunet.ports.runtimes import OnnxEngine
    try:
        model = export_onnx(net.spec, net.tensors)
    except NpunetError as exc:                  # the onnx package is missing
        notes.append(f"ONNX Runtime and OpenVINO skipped: {exc}")
        return engines
    for name, runtime in (("ONNX Runtime", "onnxruntime"), ("OpenVINO fp32", "openvino")):
        try:
            engine = OnnxEngine(model, runtime, threads=threads)
            engines[name] = lambda x, e=engine: e.run(x)["logits"]
        except NpunetError as exc:              # that runtime is not installed
            notes.append(f"{name} skipped: {exc}")
    return engines


def bench_forward(weights_path: Path, batch: int, rounds: int, threads: int, repeat: int, gap: float) -> dict:
    notes: list[str] = []
    engines = make_engines(weights_path, threads, notes)
    x = np.random.default_rng(0).random((batch, 3, 192, 192), dtype=np.float32)
    first, times, outputs = {}, {name: [] for name in engines}, {}
    for name, fn in engines.items():   # first call: compilation / warm-up, timed separately
        t = time.perf_counter()
        outputs[name] = fn(x)
        first[name] = time.perf_counter() - t
    for _ in range(rounds):
        for name, fn in engines.items():
            time.sleep(gap)             # let the previous engine's worker threads stop spinning and sleep
            fn(x)                       # then wake this engine's threads and caches up (untimed)
            t = time.perf_counter()
            for _ in range(repeat):
                fn(x)
            times[name].append((time.perf_counter() - t) / repeat)
    ref = outputs["npunet"]
    rows = []
    base = statistics.median(times["npunet"])
    for name in engines:
        med = statistics.median(times[name])
        diff = float(np.abs(np.asarray(outputs[name]) - ref).max())
        rows.append({"engine": name, "batch": batch, "median_s": med, "ms_per_slice": 1000 * med / batch,
                     "ratio_to_npunet": med / base, "first_call_s": first[name], "max_abs_diff_vs_npunet": diff})
    return {"rows": rows, "notes": notes, "rounds": rounds, "repeat": repeat, "gap_s": gap}


# ---- whole case, file to file, in fresh subprocesses ----------------------------------------------------

def run_child(program: str, args: list[str], env: dict | None = None) -> dict:
    """Run `python -m tools.bench_children.PROGRAM args` fresh; its JSON record plus wall seconds and peak RSS
    (MiB)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"tools.bench_children.{program}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(REPO), env={**os.environ, **(env or {})}, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    rec = None
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            rec = json.loads(line[len("BENCH_JSON "):])
    if proc.returncode != 0 or rec is None:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{err[-3000:]}")
    rec["wall_s"] = wall
    rec["peak_rss_mib"] = rec.pop("maxrss_kib") / 1024.0
    return rec


def data_dir() -> Path:
    """The FLARE-layout data folder, as the tests find it: $NPUNET_DATA, else ../shared/data."""
    return Path(os.environ.get("NPUNET_DATA") or REPO.parent / "shared" / "data")


def make_case(nz: int, folder: Path) -> Path:
    """A 512x512xnz CT: ts_chest_0000 (512x512x20) tiled along z, written as NIfTI (affine kept)."""
    import nibabel as nib
    source = data_dir() / "imagesTr" / "ts_chest_0000.nii.gz"
    if not source.is_file():
        raise SystemExit(f"bench.py: --case needs {source} (set NPUNET_DATA to the FLARE-layout data folder)")
    src = nib.load(source)
    vol = np.asarray(src.dataobj)
    reps = -(-nz // vol.shape[2])
    tiled = np.concatenate([vol] * reps, axis=2)[:, :, :nz]
    path = folder / f"case_{nz}_0000.nii.gz"
    img = nib.Nifti1Image(tiled, src.affine, src.header)
    img.set_data_dtype(src.get_data_dtype())
    nib.save(img, path)
    return path


def bench_case(sizes: list[int], threads: int, torch_too: bool = True, runs: int = 1) -> list[dict]:
    """Per size: one run to warm the kernel cache, then `runs` timed runs of npunet (the one of median wall
    time is the row; every wall time is kept in "walls_s"), then the torch forward once."""
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="npunet_case_"))
    for nz in sizes:
        path = make_case(nz, folder)
        out = folder / f"labels_{nz}.nii.gz"
        run_child("npunet_case", [str(path), str(out), "--threads", str(threads)])   # warms the Numba cache
        recs = sorted((run_child("npunet_case", [str(path), str(out), "--threads", str(threads)])
                       for _ in range(runs)), key=lambda r: r["wall_s"])
        rec = recs[len(recs) // 2]
        rows.append({"engine": "npunet", "nz": nz, **rec, "stages": stage_table(rec),
                     "walls_s": [r["wall_s"] for r in recs]})
        if torch_too:
            try:
                rec = run_child("torch_case", [str(path), str(folder / f"torch_{nz}.nii.gz"), str(threads)])
                rows.append({"engine": "torch forward", "nz": nz, **rec})
            except RuntimeError as exc:
                rows.append({"engine": "torch forward", "nz": nz, "error": str(exc).splitlines()[-1]})
    return rows


STAGES = (("network", "network forward"),
          ("start-up", "start-up (python, import, weights, kernel cache load; wall minus the stages)"),
          ("read", "read (gzip, checks)"),
          ("upsample_argmax", "upsample + argmax"),
          ("postprocess", "post-processing (closing)"),
          ("anatomy", "anatomy checks (largest part of each organ, body midline)"),
          ("preprocess_write", "preprocess + write"),
          ("rest", "rest of segment (labels back to the input's order, checks, counts)"))


def stage_table(rec: dict) -> dict:
    """A whole-case record of tools/bench_children/npunet_case.py (the case's own timings, npunet.case.CaseResult:
    read, segment, write and the pipeline's stages, plus the process wall) -> seconds per stage of STAGES,
    "wall", and "outside_network_share" (the part of the wall time not in the network forward). Start-up is
    the wall time left after the stages; the read counts whole even where it overlapped the start-up (the
    CT is read in a background thread while the weights load), so start-up is, if anything, understated."""
    t = rec.get("timings", {})
    pipeline = sum(t.get(k, 0.0) for k in ("preprocess", "network", "upsample_argmax", "postprocess"))
    stages = {"network": t.get("network", 0.0), "read": rec["read"],
              "upsample_argmax": t.get("upsample_argmax", 0.0), "postprocess": t.get("postprocess", 0.0),
              "anatomy": t.get("anatomy", 0.0),
              "preprocess_write": t.get("preprocess", 0.0) + rec["write"],
              "rest": max(0.0, rec["segment"] - pipeline)}
    stages["start-up"] = rec["wall_s"] - sum(stages.values())
    return {"wall": rec["wall_s"], **stages,
            "outside_network_share": 1.0 - stages["network"] / rec["wall_s"]}


def print_case(rows: list[dict], cpu: str = "") -> None:
    """One stage table per npunet case (seconds and share of the wall time), then the torch-forward rows."""
    for r in rows:
        if r["engine"] != "npunet" or "error" in r:
            continue
        table = stage_table(r)
        shape = r.get("shape") or f"512x512x{r['nz']}"
        print(f"npunet, {shape}, fresh process, warm kernel cache"
              + (f", {cpu}" if cpu else ""))
        print(f"  {'stage':<80} {'s':>6} {'share':>6}")
        print(f"  {'wall':<80} {table['wall']:>6.2f} {100:>5.0f}%")
        for key, label in STAGES:
            print(f"  {label:<80} {table[key]:>6.2f} {100 * table[key] / table['wall']:>5.0f}%")
        print(f"  outside the network forward: {100 * table['outside_network_share']:.0f} % of the wall time; "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB")
        if len(r.get("walls_s", [])) > 1:
            print(f"  (the run of median wall time of {len(r['walls_s'])}: "
                  f"{', '.join(f'{w:.2f}' for w in r['walls_s'])} s)")
    others = [r for r in rows if r["engine"] != "npunet" or "error" in r]
    if others:
        print(f"{'engine':<14} {'slices':>6} {'wall s':>7} {'read':>6} {'segment':>8} {'write':>6} {'peak RSS MiB':>13}")
    for r in others:
        if "error" in r:
            print(f"{r['engine']:<14} {r['nz']:>6}  failed: {r['error']}")
            continue
        print(f"{r['engine']:<14} {r['nz']:>6} {r['wall_s']:>7.2f} {r['read']:>6.2f} {r['segment']:>8.2f} "
              f"{r['write']:>6.2f} {r['peak_rss_mib']:>13.0f}")
    if others:
        print("  (torch forward: 'segment' is its whole segment_array_torch, post-processing included)")


def bench_startup(threads: int, runs: int = 1) -> list[dict]:
    """In fresh processes: the README's first command (`npunet segment` of ts_chest_0000, 512x512x20) with an
    empty kernel cache, the bare start-up (import, load, first forward of one slice) with an empty cache
    (cold) and then three times with that cache (warm); `runs` times each cold one, each on a new cache."""
    rows = []
    ct = data_dir() / "imagesTr" / "ts_chest_0000.nii.gz"
    out = Path(tempfile.mkdtemp(prefix="npunet_first_")) / "labels.nii.gz"
    for i in range(runs):
        if ct.is_file():
            env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="npunet_numba_cache_")}
            rec = run_child("npunet_case", [str(ct), str(out), "--threads", str(threads)], env)
            rows.append({"run": f"first run of npunet segment ts_chest ({i + 1})", "kind": "first_run", **rec,
                         "import_load_s": None, "first_forward_s": None, "total_s": rec["in_process_s"]})
        env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="npunet_numba_cache_")}
        rows.append({"run": f"cold start, empty kernel cache ({i + 1})", "kind": "cold",
                     **run_child("startup", ["--threads", str(threads)], env)})
    for i in range(3):
        rows.append({"run": f"warm start {i + 1} (cache present)", "kind": "warm",
                     **run_child("startup", ["--threads", str(threads)], env)})
    floor_env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="npunet_numba_cache_")}
    for flag, what in (([], "its defaults"), (["--without-blas"], "no scipy.linalg")):
        run_child("numba_floor", flag, floor_env)                               # fills the cache
        for i in range(3):
            rec = run_child("numba_floor", flag, floor_env)
            rows.append({"run": f"floor {i + 1}: Numba alone, {what}", "kind": "floor", **rec,
                         "import_load_s": rec["numpy_s"] + rec["numba_s"],
                         "first_forward_s": rec["first_cached_call_s"]})
    # "start s" is the start-up itself: import, weights, kernels, first forward; the process wall adds the
    # interpreter's own start and exit (at exit, the final garbage collection of Numba's objects). The floor
    # rows: what any warm start built on Numba takes (import numpy and numba: "import+load"; Numba's first
    # cache load, of a trivial function: "first forward").
    print(f"{'run':<44} {'import+load s':>13} {'first forward s':>16} {'start s':>8} {'process wall s':>15}")

    def cell(value, width):
        return f"{value:>{width}.2f}" if value is not None else f"{'':>{width}}"
    for r in rows:
        print(f"{r['run']:<44} {cell(r['import_load_s'], 13)} {cell(r['first_forward_s'], 16)} "
              f"{cell(r['total_s'], 8)} {r['wall_s']:>15.2f}")
    from npunet.precompile import compile_processes
    for r in rows:
        if r["kind"] == "first_run":           # what compiling costs, whoever does it: the wall's floor
            print(f"  {r['run']}: {r['cpu_s']:.1f} s of CPU in the command and its compiling helper, at least "
                  f"{r['cpu_s'] / compile_processes():.1f} s of wall time on {compile_processes()} core(s)")
    if not ct.is_file():
        print(f"  (no first run of the README's CT: {ct} not found; set NPUNET_DATA)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--weights", help="npunet weights file (default: seeded random weights of the default spec)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are taken over them")
    p.add_argument("--repeat", type=int, help="calls per engine per round (default: 8 // batch, at least 1, so "
                   "that every timed block covers about 8 slices and a 10 ms call is not timed alone)")
    p.add_argument("--gap", type=float, default=0.2,
                   help="seconds of quiet before each engine's timed calls, so that the thread pool of the "
                        "engine before it has stopped spin-waiting (default: 0.2; 0 for back-to-back)")
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count()],
                   help="threads for every engine; several counts run the forward table once per count")
    p.add_argument("--json", help="also write the machine header and every figure as JSON here")
    p.add_argument("--case", type=int, nargs="+", metavar="N",
                   help="time whole `npunet segment` runs of 512x512xN CTs instead of the forward")
    p.add_argument("--no-torch", action="store_true", help="with --case: skip the torch-forward pipeline")
    p.add_argument("--startup", action="store_true", help="time the first run (compile) and the warm start instead")
    p.add_argument("--runs", type=int, default=1, help="with --case: timed runs per size (the median one is "
                   "shown); with --startup: first runs and cold starts, each on an empty kernel cache")
    args = p.parse_args(argv)
    import numba
    header = machine_header(args.threads)
    print_header(header)
    results = {"machine": header, "command": sys.argv[1:] if argv is None else list(argv)}
    if args.case or args.startup:
        if args.case:
            for threads in args.threads:
                print(f"threads {threads}; whole case file to file, fresh process each (second run: warm cache)")
                results.setdefault("case", []).extend(
                    {"threads": threads, **r} for r in bench_case(args.case, threads, not args.no_torch, args.runs))
                print_case([r for r in results["case"] if r["threads"] == threads], header["cpu"])
        if args.startup:
            results["startup"] = bench_startup(args.threads[0], args.runs)
    else:
        weights = Path(args.weights) if args.weights else random_weights()
        results["forward"] = []
        for threads in args.threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            print(f"threads {threads}, rounds {args.rounds}, repeat {args.repeat or '8 // batch'}, "
                  f"gap {args.gap} s, input 3x192x192, weights {weights.name}")
            print(f"{'engine':<22} {'batch':>5} {'median ms':>10} {'ms/slice':>9} {'x npunet':>9} "
                  f"{'first call s':>13} {'max|diff|':>10}")
            for batch in args.batch:
                repeat = args.repeat or max(1, 8 // batch)
                res = bench_forward(weights, batch, args.rounds, threads, repeat, args.gap)
                for r in res["rows"]:
                    print(f"{r['engine']:<22} {r['batch']:>5} {1000 * r['median_s']:>10.1f} "
                          f"{r['ms_per_slice']:>9.1f} {r['ratio_to_npunet']:>9.2f} {r['first_call_s']:>13.2f} "
                          f"{r['max_abs_diff_vs_npunet']:>10.1e}")
                for note in res["notes"]:
                    print(f"  note: {note}")
                results["forward"].append({"threads": threads, **res})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def random_weights() -> Path:
    """Seeded random weights of the default spec, written once to a temporary weights file: the torch mirror's
    init_random when torch is there (the figures so far used those), else npunet.ports.random_weights (the same
    scheme, other numbers; the file's name says which)."""
    from npunet.labels import LABELS
    from npunet.preprocess import DEFAULT_PREPROCESSING
    from npunet.spec import load_spec
    from npunet.weights import save_weights
    spec = load_spec("dsconv_eca_unet")
    try:
        from tools.torch_model import build_model, init_random
        model = init_random(build_model(spec), seed=0)
        tensors, name = {k: v.numpy() for k, v in model.state_dict().items()}, "random.npuw"
    except ImportError:
        from npunet.ports.random_weights import random_tensors
        tensors, name = random_tensors(spec, seed=0), "random_numpy_init.npuw"
    path = Path(tempfile.mkdtemp()) / name
    save_weights(path, spec, tensors, LABELS, DEFAULT_PREPROCESSING)
    return path


if __name__ == "__main__":
    sys.exit(main())
