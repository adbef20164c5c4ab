"""`npunet explain CT -o report.html`: one axial slice of a CT followed through the network, as a page.

Reads the CT (a NIfTI file or a DICOM series folder, as `npunet segment` does), picks the slice (--slice, or
the one where the network predicts the most organ pixels), builds the page (npunet.explain) and writes it to
a temporary name beside the output, renamed into place, so a failure never leaves half a page. Bad input
(missing or unreadable CT, a folder of several cases, a slice out of range, an output that is not .html or
exists without --overwrite, bad weights) is a one-line error before the slow part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from npunet.errors import InputError, NpunetError

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


def check_report_path(output: str, overwrite: bool) -> Path:
    """The output page's path, or InputError: not .html/.htm, a folder, existing without overwrite, or in a
    folder that does not exist."""
    path = Path(output)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{output}: the report is an HTML page; give a name ending in .html")
    if path.is_dir():
        raise InputError(f"{output}: is a folder; give a file name ending in .html")
    if path.exists() and not overwrite:
        raise InputError(f"{output}: exists already; pass --overwrite to replace it")
    if not path.resolve().parent.is_dir():
        raise InputError(f"{output}: the folder {path.resolve().parent} does not exist")
    return path


def read_one_ct(input_path: str):
    """(case name, validated float32 image) of a NIfTI file or a DICOM series folder; InputError otherwise."""
    from npunet.io.cases import plan_jobs, read_job
    # plan_jobs decides what INPUT is (file, DICOM folder, folder of cases); the folder-shaped output name
    # only satisfies its checks, nothing is written there.
    jobs = plan_jobs(input_path, "unused-output/")
    if len(jobs) > 1 or (Path(input_path).is_dir() and jobs[0].kind == "nifti"):
        raise InputError(f"{input_path}: a folder of {len(jobs)} cases; explain one CT: give its file")
    return jobs[0].case, read_job(jobs[0])


def run(args: argparse.Namespace) -> int:
    from npunet.explain import explain_slice, organ_pixels_per_slice
    from npunet.io.nifti import atomic_write, hu_range_warning
    from npunet.preprocess import axial_axis

    t_start = time.perf_counter()

    def say(message: str) -> None:
        if not args.quiet:
            print(f"npunet explain: {message}", file=sys.stderr, flush=True)

    output = check_report_path(args.output, args.overwrite)
    if args.runs < 1:
        raise NpunetError(f"--runs must be at least 1, got {args.runs}")
    case, img = read_one_ct(args.input)
    volume = img.get_fdata(dtype=np.float32)
    nz = volume.shape[axial_axis(img.affine)]
    if args.slice is not None and not 0 <= args.slice < nz:
        raise InputError(f"--slice {args.slice} is out of range: {case} has {nz} axial slices (0 .. {nz - 1})")
    warning = hu_range_warning(volume)
    if warning:
        print(f"npunet explain: warning: {warning}", file=sys.stderr)
    import npunet
    net = npunet.load(args.weights)

    if args.slice is not None:
        z, reason = args.slice, "chosen with --slice"
    else:
        say(f"choosing the slice: the network over all {nz} slices")
        quarters = set()

        def progress(done: int, total: int) -> None:      # a line at each quarter, for long CTs
            quarter = 4 * done // total
            if total > 50 and quarter > 0 and quarter not in quarters:
                quarters.add(quarter)
                say(f"choosing the slice: {done}/{total}")
        counts = organ_pixels_per_slice(net, volume, img.affine, progress=progress)
        if counts.max() > 0:
            z = int(np.argmax(counts))
            reason = (f"the slice with the most organ pixels predicted ({int(counts[z]):,} of "
                      f"{net.preprocessing.get('input_size', 192)}² at the network's resolution)")
        else:
            z, reason = nz // 2, "the middle slice (no organ predicted on any slice)"
    page = explain_slice(net, volume, img.affine, z, case=case, source=str(args.input), reason=reason,
                         runs=args.runs, progress=say)
    data = page.encode("utf-8")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(output, write)
    say(f"wrote {output} ({len(data) / 2**20:.1f} MiB, slice {z}) in {time.perf_counter() - t_start:.1f} s")
    return 0
