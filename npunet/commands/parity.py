"""`npunet parity CT --against ENGINE`: npunet and another engine on the same preprocessed CT slices, layer by
layer (the comparison itself: npunet.ports.parity; the engines: npunet.ports.runtimes).

Exit 0 when every figure is within its tolerance, 1 when one is beyond (so a port's CI can call it), 2 for bad
input (a missing CT or engine file, a bad option, a missing optional package: one line).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from npunet.api import load
from npunet.errors import NpunetError
from npunet.io.ct import load_ct
from npunet.io.paths import check_output_file, make_parent
from npunet.machine import check_threads, use_threads
from npunet.ports.ct_slices import DEFAULT_COUNT, parse_slices, prepare, spread_slices
from npunet.ports.parity import Tolerances, compare, format_report, report_json
from npunet.ports.runtimes import RUNTIMES, open_engine
from npunet.publish import atomic_write

EPILOG = f"""\
ENGINE is one of:
  MODEL.onnx     run by --runtime (onnxruntime, openvino in fp32, or reference: onnx's ReferenceEvaluator);
                 every value named after one of npunet's layers (as `npunet export onnx` names them) is
                 compared, else only the logits
  CKPT.pt        a torch checkpoint of tools/torch_model.py ({{"spec", "state_dict"}}): needs torch and the
                 repository's tools package (run from the repository root)
  ACTS.npz       activations another port wrote for the same slices: npunet layer names and "logits" (and
                 "input", the port's own preprocessing of them), float32 (N, C, H, W)

The slices (default: {DEFAULT_COUNT} spread over the CT; --slices to choose) are preprocessed once, by npunet,
with the weights' parameters; --write-input saves them (.npy) for a port to run.

tolerances (see docs/ports.md for why):
  --layer-tol     each layer's max |diff| over its scale (npunet's largest |value| there), default 1e-4
  --logits-tol    the logits' max |diff|, default 1e-4
  --labels-min    the % of pixels whose label (argmax) agrees, default 99.99

examples:
  npunet export onnx -o model.onnx && npunet parity ct.nii.gz --against model.onnx
  npunet parity ct.nii.gz --against model.onnx --runtime openvino --json parity.json
  npunet parity ct.nii.gz --slices 40 --write-input slices.npy     (then: --against port.npz)

exit codes: 0 within tolerance; 1 beyond it; 2 bad input or options (nothing compared).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("input", metavar="CT", help="a CT (NIfTI file or DICOM series folder) to take the slices from")
    p.add_argument("--against", metavar="ENGINE", help="the engine to compare: MODEL.onnx, CKPT.pt or ACTS.npz")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="what runs an ONNX model (default: onnxruntime)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="npunet weights file, the reference (default: $NPUNET_WEIGHTS, else the shipped weights)")
    p.add_argument("--slices", metavar="Z,Z,...", default=None,
                   help=f"slices along the file's own slice axis, from 0 (default: {DEFAULT_COUNT} spread over the CT)")
    p.add_argument("--layer-tol", type=float, default=Tolerances.layer, metavar="R",
                   help=f"largest max |diff| / scale per layer (default {Tolerances.layer:g})")
    p.add_argument("--logits-tol", type=float, default=Tolerances.logits, metavar="D",
                   help=f"largest max |diff| of the logits (default {Tolerances.logits:g})")
    p.add_argument("--labels-min", type=float, default=Tolerances.labels, metavar="PERCENT",
                   help=f"least %% of pixels whose labels agree (default {Tolerances.labels:g})")
    p.add_argument("--json", metavar="OUT.json", help="also write every figure, with the full histograms, here")
    p.add_argument("--write-input", metavar="SLICES.npy",
                   help="write the preprocessed slices (N, C, H, W) float32, for a port to run")
    p.add_argument("--threads", type=int, default=None, help="threads for npunet and the engine (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace --json / --write-input files that exist")


def check_tolerances(args) -> Tolerances:
    for option, value, most in (("--layer-tol", args.layer_tol, None), ("--logits-tol", args.logits_tol, None),
                                ("--labels-min", args.labels_min, 100.0)):
        if not (np.isfinite(value) and value >= 0 and (most is None or value <= most)):
            raise NpunetError(f"{option} must be {f'between 0 and {most:g}' if most else 'at least 0'}, got {value:g}")
    return Tolerances(args.layer_tol, args.logits_tol, args.labels_min)


def run(args: argparse.Namespace) -> int:
    tolerances = check_tolerances(args)
    threads = check_threads(args.threads)
    if args.against is None and args.write_input is None:
        raise NpunetError("give --against ENGINE (an .onnx model, a torch checkpoint or an .npz of activations)")
    outputs = {}
    for option, path, suffix in (("--json", args.json, ".json"), ("--write-input", args.write_input, ".npy")):
        if path:
            outputs[option] = check_output_file(path, (args.input, args.against), args.overwrite, suffixes=(suffix,),
                                                what=f"{option}'s file")
    use_threads(threads)
    ct = load_ct(args.input)
    for warning in ct.warnings:
        print(f"npunet parity: warning: {warning}", file=sys.stderr)
    z = parse_slices(args.slices, ct.slices) if args.slices else spread_slices(ct.slices)
    net = load(args.weights)
    engine = (open_engine(args.against, args.runtime, [layer.name for layer in net.plan], threads)
              if args.against else None)
    chosen = prepare(ct, z, net.preprocessing)
    if "--write-input" in outputs:
        _publish(outputs["--write-input"], lambda f: np.save(f, chosen.x, allow_pickle=False), args.overwrite)
    if engine is None:
        print(f"wrote {outputs['--write-input']}: slices {', '.join(map(str, z))} of {ct.name}, "
              f"{'x'.join(map(str, chosen.x.shape))} float32")
        return 0
    layers = [(step.layer, step.output) for step in net.run_layers(chosen.x, keep=True)]
    got = engine.run(chosen.x)
    report = compare(layers, got, tolerances, x=chosen.x, about=_about(ct, chosen, net, engine, args),
                     slice_numbers=chosen.z)
    print(format_report(report))
    if "--json" in outputs:
        text = report_json(report)
        _publish(outputs["--json"], lambda f: f.write(text.encode("utf-8")), args.overwrite)
    return 0 if report.within else 1


def _about(ct, chosen, net, engine, args) -> dict:
    weights = f"weights {args.weights}" if args.weights else "the shipped weights"
    about = {"CT": f"{ct.name}, slices {', '.join(map(str, chosen.z))} of {chosen.slices} (along the file's slice "
                   f"axis), input {'x'.join(map(str, chosen.x.shape))}",
             "npunet": f"{weights} (SHA-256 {net.weights_sha256[:12]}...)",
             "engine": engine.description}
    exported_from = engine.metadata.get("npunet.weights_sha256")
    if exported_from and exported_from != net.weights_sha256:
        about["note"] = (f"the model was exported from other weights (SHA-256 {exported_from[:12]}...): "
                         f"give those with --weights")
    ignored = getattr(engine, "ignored", [])
    if ignored:
        about["note"] = f"keys not named after npunet's layers, ignored: {', '.join(ignored[:5])}"
    return about


def _publish(path, write_to, overwrite: bool) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            write_to(f)
    make_parent(path)
    atomic_write(path, write, overwrite=overwrite)
