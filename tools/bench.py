"""Benchmark npunet's network forward against its competitors, side by side in one run.

    python tools/bench.py                       # default model, batch 1 and 8, 5 rounds
    python tools/bench.py --batch 8 --rounds 7 --threads 2 --json out.json

Every engine gets the same weights (seeded random, or --weights FILE) and the same input. The engines are
interleaved within each round (npunet, torch NCHW, torch channels_last, ONNX Runtime, OpenVINO fp32, in
turn) so that a noisy neighbour slows all of them alike; the table gives the median time per call, the
time per slice, and the ratio to npunet. An engine that is not installed is skipped with a note.
First-call (Numba compilation or cache load) time is reported separately from the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_engines(weights_path: Path, threads: int, batch: int, notes: list) -> dict:
    """name -> callable(x) for every engine that is installed."""
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
        onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
        try:
            torch.onnx.export(model, torch.zeros(batch, 3, 192, 192), str(onnx_path), input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                              dynamo=False)
        except Exception as exc:  # exporter unavailable or broken
            notes.append(f"ONNX export failed: {str(exc).splitlines()[0]}")
            onnx_path = None
    except ImportError:
        notes.append("torch not installed: torch engines and ONNX export skipped")
        onnx_path = None
    if onnx_path is not None:
        try:
            import onnxruntime as ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            engines["ONNX Runtime"] = lambda x, s=sess: s.run(None, {"x": x})[0]
        except ImportError:
            notes.append("onnxruntime not installed: skipped")
        try:
            import openvino as ov
            core = ov.Core()
            compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "INFERENCE_NUM_THREADS": threads})
            engines["OpenVINO fp32"] = lambda x, c=compiled: c(x)[0]
        except ImportError:
            notes.append("openvino not installed: skipped")
    return engines


def bench_forward(weights_path: Path, batch: int, rounds: int, threads: int, repeat: int) -> dict:
    notes: list[str] = []
    engines = make_engines(weights_path, threads, batch, notes)
    x = np.random.default_rng(0).random((batch, 3, 192, 192), dtype=np.float32)
    first, times, outputs = {}, {name: [] for name in engines}, {}
    for name, fn in engines.items():   # first call: compilation / warm-up, timed separately
        t = time.perf_counter()
        outputs[name] = fn(x)
        first[name] = time.perf_counter() - t
    for _ in range(rounds):
        for name, fn in engines.items():
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
    return {"rows": rows, "notes": notes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--weights", help="npunet weights file (default: seeded random weights of the default spec)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are taken over them")
    p.add_argument("--repeat", type=int, default=1, help="calls per engine per round")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    weights = Path(args.weights) if args.weights else random_weights()
    results = []
    print(f"threads {args.threads}, rounds {args.rounds}, input 3x192x192, weights {weights.name}")
    print(f"{'engine':<22} {'batch':>5} {'median ms':>10} {'ms/slice':>9} {'x npunet':>9} {'first call s':>13} {'max|diff|':>10}")
    for batch in args.batch:
        res = bench_forward(weights, batch, args.rounds, args.threads, args.repeat)
        for r in res["rows"]:
            print(f"{r['engine']:<22} {r['batch']:>5} {1000 * r['median_s']:>10.1f} {r['ms_per_slice']:>9.1f} "
                  f"{r['ratio_to_npunet']:>9.2f} {r['first_call_s']:>13.2f} {r['max_abs_diff_vs_npunet']:>10.1e}")
        for note in res["notes"]:
            print(f"  note: {note}")
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def random_weights() -> Path:
    """Seeded random weights of the default spec, written once to a temporary weights file."""
    import torch  # noqa: F401  (random weights come from the torch mirror)
    from npunet.labels import LABELS
    from npunet.preprocess import DEFAULT_PREPROCESSING
    from npunet.weights import save_weights
    from tools.torch_model import build_model, init_random, load_spec
    spec = load_spec("dsconv_eca_unet")
    model = init_random(build_model(spec), seed=0)
    path = Path(tempfile.mkdtemp()) / "random.npuw"
    save_weights(path, spec, {k: v.numpy() for k, v in model.state_dict().items()}, LABELS, DEFAULT_PREPROCESSING)
    return path


if __name__ == "__main__":
    sys.exit(main())
