"""`npunet goldens -o DIR`: a pack of test vectors for a port (npunet.ports.goldens); `npunet goldens --check
DIR --runtime R`: a runtime checked against a pack (npunet.ports.golden_check)."""

from __future__ import annotations

import argparse
import sys

from npunet.api import load
from npunet.errors import InputError, NpunetError
from npunet.io.ct import load_ct
from npunet.io.paths import check_output_folder
from npunet.machine import check_threads, use_threads
from npunet.ports.ct_slices import prepare
from npunet.ports.golden_check import check_pack, format_check
from npunet.ports.goldens import MANIFEST, is_pack, kernel_cases, network_case, write_pack
from npunet.ports.onnx_export import DEFAULT_OPSET, check_opset
from npunet.ports.runtimes import RUNTIMES

EPILOG = """\
The pack (read it in any language: .npy files and one JSON manifest):
  manifest.json    per case: op, ONNX op and attributes, the torch call it mirrors, inputs and outputs (file,
                   shape, dtype, SHA-256) and the tolerance
  CASE/*.npy       inputs and expected outputs: depthwise and dense 3x3 at odd and even sizes and 1x1, an exact
                   impulse case, pointwise with and without bias, ConvTranspose 2x2, GroupNorm with 1 to 32
                   channels per group and on a mean of 1000, ECA for each kernel size of the spec, max-pool at
                   odd sizes, bilinear x2 with align_corners false and true, bilinear to a size, the skip-first
                   concat, the fused upsample + argmax
  network/         with --ct: the whole network on one real slice, its weights and every layer's output
The same npunet version, weights and CT give the same bytes.

examples:
  npunet goldens -o goldens/ --ct ct.nii.gz --slice 40
  npunet goldens --check goldens/ --runtime openvino

exit codes: 0 written, or every output within tolerance; 1 an output beyond it; 2 bad input or options.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-o", "--output", metavar="DIR", help="write a pack into this (new or empty) folder")
    mode.add_argument("--check", metavar="DIR", help="check --runtime against the pack in this folder")
    p.add_argument("--ct", metavar="CT", help="with -o: a CT for the whole-network case (without it the pack has the "
                                              "kernel cases only)")
    p.add_argument("--slice", type=int, metavar="Z", default=None,
                   help="with --ct: the slice, along the file's own slice axis (default: the middle one)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="with -o: npunet weights file (default: $NPUNET_WEIGHTS, else the shipped weights)")
    p.add_argument("--overwrite", action="store_true", help="with -o: replace a pack that is there")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="with --check: what runs the one-op models (default: onnxruntime)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"with --check: ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all)")


def run(args: argparse.Namespace) -> int:
    threads = check_threads(args.threads)
    use_threads(threads)
    if args.check:
        if args.ct or args.slice is not None or args.weights or args.overwrite:
            raise NpunetError("--ct, --slice, --weights and --overwrite are for making a pack (-o), not --check")
        rows = check_pack(args.check, args.runtime, check_opset(args.opset), threads)
        print(f"pack {args.check}, checked by {args.runtime} at opset {args.opset}")
        print(format_check(rows))
        return 0 if all(row.ok for row in rows) else 1
    if args.slice is not None and not args.ct:
        raise NpunetError("--slice needs --ct (the CT to take the slice from)")
    output = check_output_folder(args.output, (args.ct, args.weights), args.overwrite, may_replace=is_pack,
                                 kind="golden packs", marker=MANIFEST)
    net = load(args.weights)
    cases = kernel_cases(net.spec)
    if args.ct:
        ct = load_ct(args.ct)
        z = ct.slices // 2 if args.slice is None else args.slice
        if not 0 <= z < ct.slices:
            raise InputError(f"--slice {z} is out of range: {ct.name} has {ct.slices} axial slices "
                             f"(0 .. {ct.slices - 1})")
        chosen = prepare(ct, [z], net.preprocessing)
        cases.append(network_case(net, chosen.x, {"ct": ct.name, "slice": z, "slices": ct.slices}))
    else:
        print("npunet goldens: note: no --ct, so the pack has the kernel cases only; give a CT for the whole network "
              "on one real slice", file=sys.stderr)
    folder, size = write_pack(output, cases, overwrite=args.overwrite)
    print(f"wrote {folder}: {len(cases)} cases ({', '.join(c.name for c in cases[:3])}, ...), {size / 1e6:.1f} MB")
    return 0
