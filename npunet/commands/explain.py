"""`npunet explain CT -o report.html`: one axial slice of a CT followed through the network, as a page.

Reads the CT with the reader `npunet segment` uses (npunet.io.ct: NIfTI file or DICOM series folder, the same
checks, warnings and --assume-orientation), picks the slice (--slice, or the one where the network predicts
the most organ pixels), builds the page (npunet.explain) and publishes it (npunet.publish: never half a page;
exclusively unless --overwrite). Bad input (missing or unreadable CT, a folder of several cases, a slice out
of range, an output that is not .html, is the input or exists without --overwrite, bad weights) is a
one-line error before the slow part.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from npunet.api import load, say_if_first_run
from npunet.commands.arguments import add_assume_orientation
from npunet.errors import InputError, NpunetError
from npunet.explain import explain_slice, organ_pixels_per_slice
from npunet.io.ct import check_assumed_orientation, load_ct
from npunet.io.paths import check_output_file, make_parent
from npunet.progress import Log
from npunet.publish import atomic_write

EPILOG = """\
The page (one HTML file, images inline, no script, nothing fetched) shows: the input channels after the HU
window; per encoder stage the feature maps before and after, the depthwise filters beside their outputs, the
pointwise mixing and the block's cost against dense convs; ECA's gates; GroupNorm's statistics; the decoder's
upsampled maps and skips, the per-organ probabilities and the labels; and a per-layer table of shapes,
parameters, multiply-adds and measured times.

examples:
  npunet explain ct.nii.gz -o ct_explained.html
  npunet explain ct.nii.gz -o slice40.html --slice 40 --weights my.npuw

exit codes: 0 success; 2 bad input, slice, weights or output (nothing written).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("input", metavar="CT", help="a CT as a NIfTI file (.nii/.nii.gz, in Hounsfield units) or a "
                                                "folder holding one DICOM series")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="the page to write (.html)")
    p.add_argument("--slice", type=int, metavar="Z", default=None,
                   help="the axial slice to follow, counted along the file's own slice axis from 0 (default: "
                        "the slice where the network predicts the most organ pixels; the middle one if none)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="npunet weights file (default: $NPUNET_WEIGHTS, else the shipped weights)")
    p.add_argument("--runs", type=int, metavar="N", default=7,
                   help="timed forward passes for the per-layer times (default 7; the median is shown)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    add_assume_orientation(p)



REPORT_SUFFIXES = (".html", ".htm")


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    log = Log(args.quiet, prefix="npunet explain")
    output = check_output_file(args.output, (args.input,), args.overwrite, suffixes=REPORT_SUFFIXES,
                               what="the report")
    if args.runs < 1:
        raise NpunetError(f"--runs must be at least 1, got {args.runs}")
    ct = load_ct(args.input, check_assumed_orientation(args.assume_orientation))
    nz = ct.slices
    if args.slice is not None and not 0 <= args.slice < nz:
        raise InputError(f"--slice {args.slice} is out of range: {ct.name} has {nz} axial slices (0 .. {nz - 1})")
    for warning in ct.warnings:
        print(f"npunet explain: warning: {warning}", file=sys.stderr)
    say_if_first_run(log)
    net = load(args.weights)

    if args.slice is not None:
        z, reason = args.slice, "chosen with --slice"
    else:
        log.say(f"choosing the slice: the network over all {nz} slices")
        counts = organ_pixels_per_slice(net, ct.volume, ct.affine, progress=log.progress("choosing the slice"))
        log.end_progress()
        if counts.max() > 0:
            z = int(np.argmax(counts))
            reason = (f"the slice with the most organ pixels predicted ({int(counts[z]):,} of "
                      f"{net.preprocessing.get('input_size', 192)}² at the network's resolution)")
        else:
            z, reason = nz // 2, "the middle slice (no organ predicted on any slice)"
    page = explain_slice(net, ct.volume, ct.affine, z, case=ct.name, source=str(args.input), reason=reason,
                         runs=args.runs, progress=log.say)
    data = page.encode("utf-8")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    make_parent(output)
    atomic_write(output, write, overwrite=args.overwrite)
    log.say(f"wrote {output} ({len(data) / 2**20:.1f} MiB, slice {z}) in {time.perf_counter() - t_start:.1f} s")
    return 0
