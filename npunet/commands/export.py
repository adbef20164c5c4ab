"""`npunet export onnx -o model.onnx`: the network as an ONNX model, built from the spec and the weights by the
`onnx` package alone, no torch (npunet.ports.onnx_export)."""

from __future__ import annotations

import argparse

from npunet.io.paths import check_output_file, make_parent
from npunet.ports.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, check_opset, export_onnx, write_onnx
from npunet.weights import default_weights_path, read_weights

EPILOG = """\
The graph is the spec's (npunet/specs/*.json, stored in the weights file): depthwise convs as grouped Conv,
GroupNorm + ReLU as a two-pass decomposition (docs/ports.md says why not GroupNormalization), ECA as
ReduceMean + Conv 1D + Sigmoid + Mul, MaxPool, Resize (linear, half_pixel for align_corners False) or
ConvTranspose, Concat [skip, upsampled], the 1x1 head. Input `input` (batch, 3, height, width), output `logits`
(batch, 14, height, width); batch, height and width dynamic (height and width multiples of 16 for the
default). Every value and node is named after npunet's layers (the torch module paths), so `npunet parity`
compares any runtime with npunet layer by layer; --layers makes each layer's output a graph output too.

examples:
  npunet export onnx -o model.onnx
  npunet export onnx --weights my.npuw -o my.onnx --opset 18 --layers

exit codes: 0 written; 2 bad weights, opset or output, or the onnx package missing (nothing written).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("format", choices=["onnx"], help="the format to write (onnx)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="the model file to write")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="npunet weights file (default: $NPUNET_WEIGHTS, else the shipped weights)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--layers", action="store_true", help="make every layer's output a graph output as well")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def run(args: argparse.Namespace) -> int:
    opset = check_opset(args.opset)
    weights = args.weights or default_weights_path()
    output = check_output_file(args.output, (weights,), args.overwrite, suffixes=(".onnx",), what="the model")
    header, tensors = read_weights(weights)
    model = export_onnx(header["spec"], tensors, opset=opset, layers=args.layers,
                        preprocessing=header["preprocessing"], weights_sha256=header["file_sha256"])
    make_parent(output)
    write_onnx(model, output, overwrite=args.overwrite)
    outputs = len(model.graph.output)
    print(f"wrote {output}: {header['spec']['name']}, opset {opset}, {len(model.graph.node)} nodes, "
          f"{outputs} output{'s' if outputs > 1 else ''}, {output.stat().st_size / 1e6:.1f} MB")
    return 0
