"""`npunet segment INPUT -o OUTPUT`: CT in (NIfTI file, DICOM series folder, or folder of cases), uint8
organ label map out, on the input's own grid. Also the Python entry points `segment` (the command as a
function) and `segment_image` (a nibabel image in, a nibabel label image out).

Output types: a NIfTI label map (default); a DICOM Segmentation over the input series (--output-type
dicom-seg, DICOM input only; npunet.io.dicom_seg); a folder of one NIfTI mask per organ (--split), filled
under a temporary name and published whole (npunet.publish.staged_folder). --organs keeps the listed
organs in every output and in the statistics, the others become background. Every file and folder is
published the same way (npunet.publish): exclusively without --overwrite, never half-written, taken back
if the case fails or is interrupted.

Order of work, so that mistakes surface before the slow part: plan the jobs (npunet.io.cases), check every
output path (writable folder, not the input, not existing unless --overwrite), load the weights, then per
case: read and validate the image, run the network (npunet.pipeline.segment_array), write the label map,
and optionally the statistics and preview. A case that fails leaves none of its output files behind.
With a folder of cases, a failing case is reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npunet.errors import InputError, NpunetError
from npunet.io.cases import Job, plan_jobs, read_job
from npunet.io.dicom_seg import SEG_SUFFIX
from npunet.labels import keep_organs, parse_organs
from npunet.preprocess import axial_axis
from npunet.statistics import label_counts, voxel_volume_mm3
from npunet.io.nifti import (MASKS_MARKER, check_output_folder, check_output_path, is_masks_folder, labels_image,
                             labels_json_path, sidecar_path, validate_image, write_labels, write_organ_masks)
from npunet.io.validate import image_warnings, orientation_affine, parse_axcodes
from npunet.publish import staged_folder, unpublish

OUTPUT_TYPES = ("nifti", "dicom-seg")

EPILOG = """\
outputs (beside OUTPUT, for CASE.nii.gz):
  CASE.nii.gz              uint8 labels on the input's grid (shape, affine, qform/sform codes kept)
  CASE.labels.json         label names, {"0": "background", "1": "liver", ...}
  CASE.statistics.csv/json per-organ voxels, volume (mL) and mean HU   (with --statistics)
  CASE.preview.png         axial + coronal slices with the labels       (with --preview)
with --output-type dicom-seg: CASE.dcm, a DICOM Segmentation over the input series (one segment per organ
  found, SNOMED CT coded), instead of CASE.nii.gz and CASE.labels.json; the sidecars as above
with --split: OUTPUT (or OUTPUT/CASE for a folder of cases) is a folder holding liver.nii.gz, spleen.nii.gz,
  ... (uint8 0/1, one per organ, empty ones too), labels.json, statistics.csv/json and preview.png

examples:
  npunet segment ct.nii.gz -o ct_labels.nii.gz
  npunet segment dicom/series_folder/ -o out/ --statistics --preview
  npunet segment dicom/series_folder/ -o organs.dcm --output-type dicom-seg
  npunet segment ct.nii.gz -o masks/ --split --organs liver,spleen,left_kidney,right_kidney
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
                        "that references the input series, for OHIF, 3D Slicer or a PACS (INPUT must be a "
                        "DICOM series folder; needs highdicom: pip install 'npunet[dicom]')")
    p.add_argument("--split", action="store_true",
                   help="OUTPUT is a folder with one uint8 mask per organ (liver.nii.gz, ...; organs not found "
                        "are written empty) and labels.json, written whole or not at all")
    p.add_argument("--organs", metavar="LIST", default=None,
                   help="keep only these organs, by name or label id (e.g. liver,spleen,2), in every output "
                        "and in the statistics; the others become background")
    p.add_argument("--quiet", action="store_true",
                   help="no progress messages (warnings, errors and a folder's failure summary still show)")
    p.add_argument("--assume-orientation", metavar="AXES", type=_axcodes, default=None,
                   help="for a NIfTI header without orientation (qform and sform codes 0, otherwise refused): "
                        "how its voxel axes run, as three axis codes (RAS, LPS, LAS, ...); ignored, with a "
                        "warning, for images whose header has its own orientation")
    from npunet import cohort
    cohort.add_arguments(p)


def _axcodes(text: str) -> str:
    try:
        return parse_axcodes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from npunet import cohort
    if cohort.wanted(args):
        return cohort.run(args)
    if args.input is None:
        raise NpunetError("give the INPUT to segment (a file or folder), or --list FILE")
    results, batch = segment(args.input, args.output, weights=args.weights, threads=args.threads,
                             batch_size=args.batch_size, postprocess=not args.no_postprocess,
                             overwrite=args.overwrite, statistics=args.statistics, preview=args.preview,
                             output_type=args.output_type, split=args.split, organs=args.organs,
                             quiet=args.quiet, return_mode=True, assume_orientation=args.assume_orientation)
    failed = [r for r in results if not r.ok]
    if batch and (failed or not args.quiet):
        names = f" ({', '.join(r.case for r in failed)})" if failed else ""
        print(f"{len(results)} cases: {len(results) - len(failed)} segmented, {len(failed)} failed{names}",
              file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------- monkeypatch points --

def load_model(weights=None):
    """The network from a weights file (None: the default weights); raises WeightsError."""
    import npunet
    return npunet.load(weights)


def segment_array(volume_hu: np.ndarray, affine: np.ndarray, model, batch_size: int = 8, postprocess: bool = True,
                  progress=None, timings: dict | None = None) -> np.ndarray:
    """npunet.pipeline.segment_array, imported late (tests substitute a fast fake here)."""
    from npunet.pipeline import segment_array as _segment_array
    return _segment_array(volume_hu, affine, model, batch_size=batch_size, postprocess=postprocess,
                          progress=progress, timings=timings)


# ------------------------------------------------------------------------------------------ Python API --

def segment_image(img, model=None, *, weights=None, batch_size: int = 8, postprocess: bool = True,
                  progress=None, assume_orientation: str | None = None, organs=None):
    """A nibabel CT image (3D, HU) -> a uint8 label image with the input's shape, affine and qform/sform.

    model: a loaded network (default: load `weights`, or the default weights). organs: keep only these
    (names or label ids, as --organs), the others become 0. Raises InputError for images that cannot be
    segmented (2D, several volumes, NaN/Inf, no orientation without `assume_orientation`, ...),
    NpunetError for an unknown organ; warns (UserWarning) when the intensities do not look like Hounsfield
    units, and for the other warnings of npunet.io.validate.image_warnings.
    """
    organ_ids = parse_organs(organs) if organs is not None else None
    ct = validate_image(img, "image", assume_orientation)
    volume = ct.get_fdata(dtype=np.float32)
    for message in image_warnings(ct, volume, assume_orientation):
        warnings.warn(message, stacklevel=2)
    if model is None:
        model = load_model(weights)
    labels = segment_array(volume, orientation_affine(ct, assume_orientation), model, batch_size=batch_size,
                           postprocess=postprocess, progress=progress)
    _check_labels(labels, volume.shape)
    if organ_ids is not None:
        labels = keep_organs(labels, organ_ids)
    return labels_image(labels, ct)


@dataclass
class CaseResult:
    case: str
    output: Path
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)
    slices: int | None = None                                   # axial slices segmented
    volumes_ml: dict[str, float] = field(default_factory=dict)  # organ name -> volume in mL


def output_files(output: str | os.PathLike, statistics: bool = False, preview: bool = False,
                 output_type: str = "nifti", split: bool = False) -> dict[str, Path]:
    """Every file written for a case whose output is `output`, keyed by role: the label map CASE.nii.gz
    ("labels", with "names"), the DICOM SEG CASE.dcm ("seg"), or with split the folder CASE/ ("masks": the
    organ masks go in it, with "names" and the other files)."""
    output = Path(output)

    def beside(suffix: str) -> Path:     # `.statistics.csv` -> where that file of the case goes
        if split:
            return output / suffix.lstrip(".")
        if output_type == "dicom-seg":
            return output.with_name(output.name[:-len(SEG_SUFFIX)] + suffix
                                    if output.name.lower().endswith(SEG_SUFFIX) else output.name + suffix)
        return sidecar_path(output, suffix)

    if split:
        files = {"masks": output, "names": output / MASKS_MARKER}
    elif output_type == "dicom-seg":
        files = {"seg": output}
    else:
        files = {"labels": output, "names": labels_json_path(output)}
    if statistics:
        files["statistics_csv"] = beside(".statistics.csv")
        files["statistics_json"] = beside(".statistics.json")
    if preview:
        files["preview"] = beside(".preview.png")
    return files


def segment(input_path, output_path, *, weights=None, model=None, threads: int | None = None,
            batch_size: int = 8, postprocess: bool = True, overwrite: bool = False, statistics: bool = False,
            preview: bool = False, output_type: str = "nifti", split: bool = False, organs=None,
            quiet: bool = True, return_mode: bool = False, assume_orientation: str | None = None):
    """`npunet segment` as a function; returns a list of CaseResult (with return_mode: (results, is_folder)).

    output_type: "nifti" or "dicom-seg"; split: a folder of one mask per organ per case; organs: names or
    label ids to keep ("liver,spleen" or ["liver", 3]), None for all. Raises NpunetError, before any output
    is written, for a bad INPUT/OUTPUT pair, bad options, bad output paths or bad weights; for a single
    image, also for a bad image. For a folder of cases, a bad case is recorded in its CaseResult (ok=False,
    error=message) and the other cases still run.
    """
    assume_orientation = check_options(batch_size, assume_orientation)
    if output_type not in OUTPUT_TYPES:
        raise NpunetError(f"--output-type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if split and output_type != "nifti":
        raise NpunetError(f"--split writes NIfTI masks; it does not combine with --output-type {output_type}")
    organ_ids = parse_organs(organs) if organs is not None else None
    suffix = "" if split else SEG_SUFFIX if output_type == "dicom-seg" else ".nii.gz"
    if split and str(output_path).lower().endswith((".nii", ".nii.gz", ".dcm")):
        raise NpunetError(f"{output_path}: with --split the output is a folder of masks; give a folder name")
    jobs = plan_jobs(input_path, output_path, suffix=suffix)
    batch = Path(input_path).is_dir() and jobs[0].input != Path(input_path)   # a folder of cases, not one series
    name_suffixes = (".nii.gz", ".nii")
    if output_type == "dicom-seg":
        if jobs[0].kind != "dicom":
            raise InputError(f"{input_path}: --output-type dicom-seg needs a DICOM series folder as INPUT (a "
                             f"DICOM SEG references the source images; NIfTI has none): use --output-type nifti")
        from npunet.io.dicom_seg import import_highdicom
        import_highdicom()
        name_suffixes = (SEG_SUFFIX,)
    log = _Log(quiet)

    problems = []
    for job in jobs:
        files = output_files(job.output, statistics, preview, output_type, split)
        try:
            if split:
                check_output_folder(job.output, job.input, overwrite)
            else:
                check_output_path(job.output, job.input, overwrite, also=tuple(files.values())[1:],
                                  suffixes=name_suffixes)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more output problems)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)

    # The first image is read (decompressed, mostly outside the GIL) while Numba and the weights load.
    first_read = _in_background(_read_volume, jobs[0], assume_orientation)
    _set_threads(threads)
    if model is None:
        log.say(f"loading weights {weights or '(default)'}")
        model = load_model(weights)
    label_names = _label_names(model)
    if organ_ids is not None:
        label_names = {k: v for k, v in label_names.items() if k == 0 or k in organ_ids}
    output = _Output(output_type, split, organ_ids, label_names, model)
    from npunet.pipeline import start_warm_up
    warm_up = start_warm_up(model)          # kernels load while the first CT is read

    results = []
    for i, job in enumerate(jobs, start=1):
        result = segment_case(job, model, output=output, log=log,
                              prefix=f"[{i}/{len(jobs)}] {job.case}" if batch else job.case, batch_size=batch_size,
                              postprocess=postprocess, overwrite=overwrite, statistics=statistics, preview=preview,
                              before_segmenting=warm_up.join, prefetched=first_read if i == 1 else None,
                              assume_orientation=assume_orientation, raise_errors=not batch)
        if not result.ok:
            print(f"npunet segment: {job.case}: error: {result.error}", file=sys.stderr)
        results.append(result)
    return (results, batch) if return_mode else results


def check_options(batch_size, assume_orientation: str | None) -> str | None:
    """NpunetError for a batch size that is not a positive integer or unknown axis codes; returns the
    axis codes normalised (or None)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise NpunetError(f"--batch-size must be an integer of at least 1, got {batch_size}")
    if assume_orientation is None:
        return None
    try:
        return parse_axcodes(assume_orientation)
    except ValueError as exc:
        raise NpunetError(f"--assume-orientation: {exc}") from None


def segment_case(job: Job, model, *, output: "_Output | None" = None, log=None, prefix: str | None = None,
                 batch_size: int = 8, postprocess: bool = True, overwrite: bool = False, statistics: bool = False,
                 preview: bool = False, before_segmenting=lambda: None, prefetched=None,
                 assume_orientation: str | None = None, raise_errors: bool = False) -> CaseResult:
    """One case, start to finish: read the job's image, segment it, write its outputs.

    This is the unit of work of a folder run and of a cohort task (npunet.cohort calls it on a Dask worker),
    so that both write the same bytes. output: what to write (default: a NIfTI label map with all the
    model's organs). A case that fails leaves none of its files behind (nor do KeyboardInterrupt and
    SystemExit, which are re-raised); its error comes back as result.error, one line, or is re-raised when
    raise_errors. The numba thread count is the caller's (_set_threads). prefetched: a future of
    _read_volume(job) already under way.
    """
    if output is None:
        output = _Output("nifti", False, None, _label_names(model), model)
    result = CaseResult(job.case, job.output, ok=False)
    t0 = time.perf_counter()
    try:
        _segment_job(job, model, output, log or _Log(quiet=True), prefix or job.case, batch_size=batch_size,
                     postprocess=postprocess, overwrite=overwrite, statistics=statistics, preview=preview,
                     result=result, before_segmenting=before_segmenting, prefetched=prefetched,
                     assume_orientation=assume_orientation)
        result.ok = True
    except BaseException as exc:
        for p in result.written:  # a failed (or interrupted) case leaves nothing of its own behind
            unpublish(p)          # (a file, or the --split folder; one another run put there stays)
        result.written.clear()
        if raise_errors or not isinstance(exc, Exception):
            raise
        message = str(exc) if isinstance(exc, NpunetError) else f"{type(exc).__name__}: {exc}"
        result.error = " ".join(message.split())
    result.seconds = time.perf_counter() - t0
    return result


def _read_volume(job: Job, assume_orientation: str | None = None):
    """(image, float32 voxels) of a job."""
    img = read_job(job, assume_orientation)
    return img, img.get_fdata(dtype=np.float32)


def _in_background(function, *args) -> Future:
    """function(*args) in a daemon thread, as a Future: an interrupted run exits without waiting for it."""
    future: Future = Future()

    def work():
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except BaseException as exc:      # raised again by future.result() in the caller's thread
            future.set_exception(exc)
    threading.Thread(target=work, name="npunet-read", daemon=True).start()
    return future


@dataclass
class _Output:
    """What to write for every case: the output type, split or not, the organs kept (None: all) and their
    names (background and the kept organs), and the model (named in a DICOM SEG)."""
    output_type: str
    split: bool
    organ_ids: tuple | None
    label_names: dict
    model: object


def _segment_job(job: Job, model, output: _Output, log, prefix, *, batch_size, postprocess, overwrite,
                 statistics, preview, result: CaseResult, before_segmenting=lambda: None, prefetched=None,
                 assume_orientation: str | None = None) -> None:
    """One case; fills result (written files, slices, organ volumes); prefetched: a future of
    _read_volume(job) already under way (its errors raise here)."""
    written = result.written
    t0 = time.perf_counter()
    log.say(f"{prefix}: reading {job.input}")
    img, volume = prefetched.result() if prefetched is not None else _read_volume(job, assume_orientation)
    affine = orientation_affine(img, assume_orientation)      # the header's, or the assumed one
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    log.say(f"{prefix}: {'x'.join(map(str, volume.shape))} voxels of "
            f"{' x '.join(f'{z:.3g}' for z in zooms)} mm, read in {time.perf_counter() - t0:.1f} s")
    for message in image_warnings(img, volume, assume_orientation):
        print(f"npunet segment: {job.case}: warning: {message}", file=sys.stderr)

    before_segmenting()
    t1 = time.perf_counter()
    timings: dict = {}
    labels = segment_array(volume, affine, model, batch_size=batch_size, postprocess=postprocess,
                           progress=log.progress(f"{prefix}: segmenting"), timings=timings)
    log.end_progress()
    _check_labels(labels, volume.shape)
    if output.organ_ids is not None:
        labels = keep_organs(labels, output.organ_ids)
    counts = label_counts(labels)
    result.slices = int(volume.shape[axial_axis(affine)])
    voxel_ml = voxel_volume_mm3(affine) / 1000.0
    result.volumes_ml = {name: round(int(counts[k]) * voxel_ml, 4) for k, name in sorted(output.label_names.items())
                         if 0 < k < len(counts)}
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if v) if timings else ""
    log.say(f"{prefix}: segmented in {time.perf_counter() - t1:.1f} s" + (f" ({detail})" if detail else ""))

    if output.split:     # everything goes into a folder that is published whole, or not at all
        written.append(job.output)          # taken back on failure only if it is still ours (unpublish)
        with staged_folder(job.output, overwrite=overwrite, may_replace=is_masks_folder) as folder:
            _write_outputs(labels, volume, img, affine, output_files(folder, statistics, preview, split=True),
                           output, job, log, prefix, overwrite=True)     # a new folder: nothing to refuse in it
        log.say(f"{prefix}: wrote the folder {job.output}")
    else:
        _write_outputs(labels, volume, img, affine,
                       output_files(job.output, statistics, preview, output.output_type), output, job, log, prefix,
                       overwrite=overwrite, written=written)
    log.say(f"{prefix}: done in {time.perf_counter() - t0:.1f} s")


def _write_outputs(labels, volume, img, affine, files: dict, output: _Output, job: Job, log, prefix, *,
                   overwrite: bool, written: list | None = None) -> None:
    """Write the files of output_files() for one case, each published by npunet.publish (without overwrite,
    exclusively). Each path is added to `written` before its writing starts, so that a failure can take
    back (unpublish) what this run published, and only that."""
    written = [] if written is None else written
    label_names = output.label_names
    found = int(np.count_nonzero(label_counts(labels)[1:]))
    if "masks" in files:
        write_organ_masks(labels, img, files["masks"], {k: v for k, v in label_names.items() if k != 0})
        log.say(f"{prefix}: wrote {len(label_names) - 1} organ masks ({found} organs found)")
    elif "seg" in files:
        import npunet
        from npunet.io.dicom import DICOM_HEADERS
        from npunet.io.dicom_seg import write_dicom_seg
        written.append(files["seg"])
        notes = write_dicom_seg(labels, img.extra[DICOM_HEADERS], files["seg"], label_names,
                                version=npunet.__version__, overwrite=overwrite,
                                weights_sha256=getattr(output.model, "weights_sha256", None),
                                model_name=getattr(output.model, "spec", {}).get("name"))
        for note in notes:
            print(f"npunet segment: {job.case}: warning: {note}", file=sys.stderr)
        log.say(f"{prefix}: wrote {files['seg']} ({found} organs found, one segment each)")
    else:
        written += [files["labels"], files["names"]]
        write_labels(labels, img, files["labels"], overwrite=overwrite, label_names=label_names)
        log.say(f"{prefix}: wrote {files['labels']} ({found} organs found)")
    if "statistics_csv" in files:
        from npunet.statistics import organ_statistics, write_statistics
        rows = organ_statistics(labels, volume, affine, label_names)
        written += [files["statistics_csv"], files["statistics_json"]]
        write_statistics(rows, files["statistics_csv"], files["statistics_json"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['statistics_csv']} and .json")
    if "preview" in files:
        from npunet.preview import write_preview
        written.append(files["preview"])
        write_preview(volume, labels, affine, files["preview"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['preview']}")


def _check_labels(labels, shape) -> None:
    if not isinstance(labels, np.ndarray) or labels.shape != tuple(shape) or labels.dtype != np.uint8:
        got = (getattr(labels, "shape", None), getattr(labels, "dtype", type(labels).__name__))
        raise RuntimeError(f"segment_array returned {got}, expected a uint8 array of shape {tuple(shape)}")


def _label_names(model) -> dict[int, str]:
    names = getattr(model, "labels", None)
    if names:
        return {int(k): str(v) for k, v in names.items()}
    from npunet.labels import LABELS
    return dict(LABELS)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import numba
    most = int(numba.config.NUMBA_NUM_THREADS)
    if not 1 <= int(threads) <= most:
        raise NpunetError(f"--threads must be between 1 and {most} (the threads Numba can use), got {threads}")
    numba.set_num_threads(int(threads))


class _Log:
    """Progress lines on stderr (nothing when quiet). Slice progress rewrites one line on a terminal and
    prints every 25 % otherwise, so logs stay short."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self._open = False

    def say(self, text: str) -> None:
        if not self.quiet:
            self.end_progress()
            print(text, file=sys.stderr, flush=True)

    def progress(self, label: str):
        if self.quiet:
            return None
        last = [-1]

        def report(done: int, total: int) -> None:
            if self.tty:
                print(f"\r{label}: slice {done}/{total}", end="", file=sys.stderr, flush=True)
                self._open = True
            else:
                quarter = (4 * done) // max(total, 1)
                if quarter != last[0] and (quarter > 0 or done == total):
                    last[0] = quarter
                    print(f"{label}: slice {done}/{total}", file=sys.stderr, flush=True)
        return report

    def end_progress(self) -> None:
        if self._open:
            print(file=sys.stderr, flush=True)
            self._open = False
