"""`npunet verify REPORT.json`: run the case of a provenance report again and check every output (npunet.verification).

Exit codes: 0 every output reproduced (byte for byte; a DICOM SEG or RTSTRUCT by its decoded content); 1 an
output differs, or a file written then has changed since (the lines say which, by how many voxels and of
which organs); 2 an input or the weights are missing or no longer match their digests (nothing is run), or
the report cannot be read.
"""

from __future__ import annotations

import argparse

from npunet.pipeline import segment_array
from npunet.verification import verify_report

EPILOG = """\
where verify looks for the files a report names: relative to the report's folder first (so a folder holding
the report, its outputs and its input can move), then at the absolute paths it records (a shared data folder
seen at the same path on another machine); the weights also as this checkout's default weights file when the
report's run used the default. --input and --weights name them where they are now. A file is used only if
its SHA-256 is the report's.

exit codes: 0 reproduced; 1 an output differs (or was changed since the run); 2 an input or the weights
changed or missing (nothing run), or the report unreadable.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("report", metavar="REPORT.json",
                   help="a report written by `npunet segment --report` (or a cohort run's CASE.report.json)")
    p.add_argument("--input", metavar="PATH", default=None,
                   help="the input (NIfTI file or DICOM series folder) where it is now, if it has moved")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="the weights file where it is now, if it has moved")
    p.add_argument("--quiet", action="store_true", help="only the verdict line (and what differs)")


def run(args: argparse.Namespace, load_model=None, segment_volume=segment_array) -> int:
    def log(line: str) -> None:
        if not args.quiet or line.startswith(("verified", "NOT verified")) or ": DIFFERS: " in line:
            print(line, flush=True)
    outcome = verify_report(args.report, input=args.input, weights=args.weights, log=log, load_model=load_model,
                            segment_volume=segment_volume)
    return 0 if outcome.ok else 1
