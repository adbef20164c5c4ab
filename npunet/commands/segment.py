"""`npunet segment INPUT -o OUTPUT`: the command. CT in (NIfTI file, DICOM series folder, or folder of
cases), uint8 organ label map out, on the input's own grid; with --workers, --scheduler or --list, a cohort
run (npunet.cohort). The options are parsed here; the work is npunet.api's (segment, segment_many), which
plans the cases and runs each through the unit of work (npunet.case).
"""

from __future__ import annotations

import argparse
import sys

from npunet.api import is_folder_of_cases, segment, segment_many
from npunet.case import OUTPUT_TYPES
from npunet.cohort.planning import read_list
from npunet.cohort.runner import INSTALL_HINT
from npunet.commands.arguments import add_assume_orientation
from npunet.errors import NpunetError
from npunet.pipeline import segment_array

EPILOG = """\
outputs (beside OUTPUT, for CASE.nii.gz):
  CASE.nii.gz              uint8 labels on the input's grid (shape, affine, qform/sform codes kept)
  CASE.labels.json         label names, {"0": "background", "1": "liver", ...}
  CASE.statistics.csv/json per-organ voxels, volume (mL) and mean HU   (with --statistics)
  CASE.preview.png         axial + coronal slices with the labels       (with --preview)
  CASE.report.json         provenance: digests of input, weights and outputs, options, versions, CPU,
                           threads, batch size, timings, peak memory   (with --report; or --report FILE.json)
with --output-type dicom-seg: CASE.dcm, a DICOM Segmentation over the input series (one segment per organ
  found, SNOMED CT coded), instead of CASE.nii.gz and CASE.labels.json; the sidecars as above
with --output-type rtstruct: CASE.dcm, an RT Structure Set over the input series (one ROI per organ found,
  contours per slice on the images' planes), instead of CASE.nii.gz and CASE.labels.json
with --split: OUTPUT (or OUTPUT/CASE for a folder of cases) is a folder holding liver.nii.gz, spleen.nii.gz,
  ... (uint8 0/1, one per organ, empty ones too), labels.json, statistics.csv/json and preview.png

examples:
  npunet segment ct.nii.gz -o ct_labels.nii.gz
  npunet segment dicom/series_folder/ -o out/ --statistics --preview
  npunet segment dicom/series_folder/ -o organs.dcm --output-type dicom-seg
  npunet segment dicom/series_folder/ -o contours.dcm --output-type rtstruct
  npunet segment ct.nii.gz -o masks/ --split --organs liver,spleen,left_kidney,right_kidney
  npunet segment ct.nii.gz -o ct_labels.nii.gz --report ct.report.json   (then: npunet verify ct.report.json)
  npunet segment imagesTs/ -o predictions/ --threads 8      (CASE_0000.nii.gz -> predictions/CASE.nii.gz)
  npunet segment imagesTs/ -o predictions/ --workers 2      (a local Dask cluster; resumable; a manifest)
  npunet segment --list cases.txt -o predictions/ --scheduler tcp://10.0.0.1:8786

a header without orientation (qform and sform codes 0) is refused unless --assume-orientation says how the
voxel axes run (e.g. RAS: i to the right, j anterior, k superior; LPS: left, posterior, superior); the output
keeps the input's header as it is.

cohort runs (--workers, --scheduler or --list; NIfTI label maps; see docs/cohort.md):
  OUTPUT/npunet_manifest.csv/.json  one row per case: status (done, skipped, failed, busy, pending), error,
                                    seconds, worker, slices, organ volumes in mL
  OUTPUT/.npunet/                   per-case locks and completion records; a re-run skips complete cases

exit codes: 0 success; 1 some cases of a folder failed; 2 bad input, weights or output (nothing written);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): temporary files are removed either way.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("input", metavar="INPUT", nargs="?",
                   help="a CT as a NIfTI file (.nii/.nii.gz, in Hounsfield units), a folder holding one DICOM "
                        "series, a folder of cases named CASE_0000.nii.gz, or a folder of DICOM series folders")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="the label map to write (.nii.gz or .nii); a folder (existing, or ending with '/') "
                        "receives CASE.nii.gz; required to be a folder when INPUT is a folder of cases")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="npunet weights file (default: $NPUNET_WEIGHTS, else the shipped weights)")
    p.add_argument("--threads", type=int, metavar="N", default=None,
                   help="number of CPU threads for the network (1 .. the number Numba sees; default: all)")
    p.add_argument("--batch-size", type=int, metavar="N", default=8,
                   help="axial slices per network call (default 8); larger uses more memory, rarely faster")
    p.add_argument("--tta", action="store_true",
                   help="test-time mirroring: also segment each slice's left-right mirror and average the class "
                        "probabilities (the mirror's left and right organs swapped back); twice the network time")
    p.add_argument("--no-postprocess", action="store_true",
                   help="skip the per-organ 3x3x3 closing (fills small holes and gaps between slices)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (default: refuse and stop before any work)")
    p.add_argument("--statistics", action="store_true",
                   help="also write per-organ voxel counts, volumes in mL and mean HU as "
                        "OUTPUT_STEM.statistics.csv and OUTPUT_STEM.statistics.json")
    p.add_argument("--preview", action="store_true",
                   help="also write OUTPUT_STEM.preview.png: axial and coronal CT slices with the labels "
                        "blended in")
    p.add_argument("--output-type", choices=OUTPUT_TYPES, default="nifti",
                   help="nifti (default): a uint8 label map; dicom-seg: a DICOM Segmentation object (.dcm) "
                        "that references the input series, for OHIF, 3D Slicer or a PACS (needs highdicom: pip "
                        "install 'npunet[dicom]'); rtstruct: a DICOM RT Structure Set (.dcm), one ROI of contours "
                        "per organ on the series' slices, for radiotherapy planning systems (needs rt-utils: pip "
                        "install 'npunet[rtstruct]'); both need a DICOM series folder as INPUT")
    p.add_argument("--split", action="store_true",
                   help="OUTPUT is a folder with one uint8 mask per organ (liver.nii.gz, ...; organs not found "
                        "are written empty) and labels.json, written whole or not at all")
    p.add_argument("--organs", metavar="LIST", default=None,
                   help="keep only these organs, by name or label id (e.g. liver,spleen,2), in every output "
                        "and in the statistics; the others become background")
    p.add_argument("--report", metavar="FILE.json", nargs="?", const=True, default=False,
                   help="also write a provenance report: SHA-256 of the input files, the weights and every output, "
                        "the options, versions, CPU, threads, batch size, timings and peak memory "
                        "(docs/provenance.md); FILE.json for one case, or alone for CASE.report.json beside "
                        "each output (a folder of cases, a cohort); `npunet verify` checks it")
    p.add_argument("--quiet", action="store_true",
                   help="no progress messages (warnings, errors and a folder's failure summary still show)")
    add_assume_orientation(p)
    g = p.add_argument_group(
        "cohort runs", "With any of these, OUTPUT is a folder that also receives npunet_manifest.csv/.json; "
        "a re-run skips the cases already complete (see docs/cohort.md).")
    g.add_argument("--workers", type=int, metavar="N", default=None,
                   help="segment the cases on a local Dask cluster of N worker processes, each using --threads "
                        f"threads (default: the cores / N); needs {INSTALL_HINT}")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                   help="segment on a running Dask cluster (`dask scheduler`, and `dask worker` on each machine, "
                        "all seeing INPUT and OUTPUT at the same paths); each worker uses --threads threads "
                        "(default: all its cores)")
    g.add_argument("--list", metavar="FILE", dest="list_file", default=None,
                   help="segment the inputs named in FILE, one NIfTI file or DICOM series folder per line "
                        "(relative to FILE's folder; blank lines and # comments skipped), instead of INPUT")



def run(args: argparse.Namespace, load_model=None, segment_volume=segment_array) -> int:
    """Exit code: 0 success; 1 when some cases of a folder (or a cohort) failed. load_model and
    segment_volume stand in for npunet.api.load and npunet.pipeline.segment_array (tests)."""
    if args.workers is not None or args.scheduler or args.list_file:
        return run_cohort(args, load_model, segment_volume)
    if args.input is None:
        raise NpunetError("give the INPUT to segment (a file or folder), or --list FILE")
    results = segment(args.input, args.output, weights=args.weights, load_model=load_model, threads=args.threads,
                      batch_size=args.batch_size, postprocess=not args.no_postprocess, tta=args.tta,
                      overwrite=args.overwrite,
                      statistics=args.statistics, preview=args.preview, output_type=args.output_type,
                      split=args.split, organs=args.organs, quiet=args.quiet,
                      assume_orientation=args.assume_orientation, report=args.report, segment_volume=segment_volume)
    failed = [r for r in results if not r.ok]
    if is_folder_of_cases(args.input, results[0].input) and (failed or not args.quiet):
        names = f" ({', '.join(r.case for r in failed)})" if failed else ""
        print(f"{len(results)} cases: {len(results) - len(failed)} segmented, {len(failed)} failed{names}",
              file=sys.stderr)
    return 1 if failed else 0


def run_cohort(args: argparse.Namespace, load_model=None, segment_volume=segment_array) -> int:
    if args.input is not None and args.list_file:
        raise NpunetError("give INPUT or --list FILE, not both")
    if isinstance(args.report, str):
        raise NpunetError(f"--report {args.report}: a cohort run writes one report per case (OUTPUT/CASE.report.json); "
                          f"give --report without a file name")
    chosen = [o for o, on in ((f"--output-type {args.output_type}", args.output_type != "nifti"),
                              ("--split", args.split),
                              ("--organs", args.organs is not None)) if on]
    if chosen:
        raise NpunetError(f"{chosen[0]} is for serial runs; a cohort run (--workers, --scheduler, --list) "
                          f"writes NIfTI label maps of every organ")
    inputs = read_list(args.list_file) if args.list_file else args.input
    rows = segment_many(inputs, args.output, workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                        weights=args.weights, batch_size=args.batch_size, postprocess=not args.no_postprocess,
                        tta=args.tta, statistics=args.statistics, preview=args.preview, overwrite=args.overwrite,
                        quiet=args.quiet, assume_orientation=args.assume_orientation, report=bool(args.report),
                        load_model=load_model, segment_volume=segment_volume)
    line, ok = cohort_summary(rows)
    if not ok or not args.quiet:
        print(line, file=sys.stderr)
    return 0 if ok else 1


def cohort_summary(rows: list[dict]) -> tuple[str, bool]:
    """('N cases: a segmented, b skipped (complete already), c failed (names)', whether all are complete)."""
    by = {s: [r["case"] for r in rows if r["status"] == s] for s in ("done", "skipped", "failed", "busy", "pending")}

    def names(cases: list[str]) -> str:
        return f" ({', '.join(cases[:10])}{' ...' if len(cases) > 10 else ''})" if cases else ""
    parts = [f"{len(by['done'])} segmented", f"{len(by['skipped'])} skipped (complete already)",
             f"{len(by['failed'])} failed{names(by['failed'])}"]
    if by["busy"]:
        parts.append(f"{len(by['busy'])} busy in another run{names(by['busy'])}")
    if by["pending"]:
        parts.append(f"{len(by['pending'])} not run")
    return f"{len(rows)} cases: {', '.join(parts)}", not (by["failed"] or by["busy"] or by["pending"])
