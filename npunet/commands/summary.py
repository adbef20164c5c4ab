"""`npunet summary`: per-layer shapes, parameters and multiply-adds of a network, from a spec or a weights
file (the counting itself: npunet.summary)."""

from __future__ import annotations

from npunet.errors import NpunetError
from npunet.spec import load_spec
from npunet.summary import format_summary
from npunet.weights import read_weights


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--spec", default="dsconv_eca_unet",
                     help="built-in spec name or JSON file (default: dsconv_eca_unet)")
    src.add_argument("--weights", help="read the spec stored in this weights file instead")
    p.add_argument("--size", type=int, nargs=2, default=(192, 192), metavar=("H", "W"),
                   help="input height and width (default: 192 192)")
    p.add_argument("--compare", choices=["standard"],
                   help="'standard': beside each conv, the cost of a standard 3x3 conv and the ratio")


MAX_SIZE = 16384


def run(args) -> int:
    """Print the summary; a bad spec, weights file or size is a one-line NpunetError (SpecError and
    WeightsError are ones): the spec goes through npunet.spec.check_spec either way."""
    if args.weights:
        spec = read_weights(args.weights)[0]["spec"]
    else:
        spec = load_spec(args.spec)
    h, w = args.size
    d = 2 ** (len(spec["encoder"]) - 1)
    if not (d <= h <= MAX_SIZE and d <= w <= MAX_SIZE) or h % d or w % d:
        raise NpunetError(f"--size {h} {w}: height and width must be multiples of {d} (the downsampling of "
                          f"{len(spec['encoder'])} encoder stages) between {d} and {MAX_SIZE}")
    print(format_summary(spec, h, w, compare=args.compare == "standard"))
    return 0
