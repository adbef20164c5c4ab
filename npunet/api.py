"""npunet's Python API, the functions `import npunet` offers (the package root forwards to them):

    net = load()                                   # the shipped weights (or load("my.npuw")), verified
    labels_img = segment_image(img)                # a nibabel CT image -> a uint8 label image on its grid
    results = segment("ct.nii.gz", "out/")         # `npunet segment` as a function: files in, files out
    rows = segment_many("imagesTs/", "out/", workers=2)   # a cohort, resumable, on Dask or in this process

`segment` plans the cases (npunet.io.cases), checks every output path before any work, loads the weights
while the first CT is read in a background thread, then runs each case through the unit of work
(npunet.case.run_case). The command line (npunet.commands.segment) calls these functions and nothing else.
Tests and benchmarks give `model=` (a loaded network, or a stand-in), `load_model=` (how weights are loaded)
and `segment_volume=` (the volume -> labels function) as arguments.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path

from npunet.errors import InputError, NpunetError
from npunet.labels import keep_organs, parse_organs
from npunet.machine import check_batch_size, check_threads, use_threads
from npunet.network import from_file
from npunet.pipeline import kernels_cached, segment_array, start_warm_up
from npunet.progress import Log
from npunet.weights import default_weights_path

# The files side (npunet.case, npunet.io: nibabel, and through it pydicom when installed), the cohort runner and
# verification are imported by the functions that need them, not here: `import npunet; npunet.load()` and a
# forward need neither, and they took about half of a warm start's import time (tests/test_api_imports.py).

def load(path=None):
    """The network stored in an npunet weights file (default: the shipped weights), verified, with this
    machine's kernel work sizes in place. Raises npunet.errors.WeightsError with a one-line message if the
    file is missing or does not verify."""
    return from_file(default_weights_path() if path is None else path)


def segment_image(img, model=None, *, weights=None, batch_size: int = 8, postprocess: bool = True,
                  tta: bool = False, progress=None, assume_orientation: str | None = None, organs=None,
                  segment_volume=segment_array):
    """A nibabel CT image (3D, HU) -> a uint8 label image with the input's shape, affine and qform/sform.

    model: a loaded network (default: load `weights`, or the default weights). organs: keep only these
    (names or label ids, as --organs), the others become 0. Raises InputError for images that cannot be
    segmented (2D, several volumes, NaN/Inf, no orientation without `assume_orientation`, ...),
    NpunetError for an unknown organ; warns (UserWarning) when the intensities do not look like Hounsfield
    units, and for the other warnings of npunet.io.validate.image_warnings.
    """
    from npunet.case import check_labels
    from npunet.io.ct import check_assumed_orientation, ct_from_image
    from npunet.io.nifti import labels_image
    organ_ids = parse_organs(organs) if organs is not None else None
    batch_size = check_batch_size(batch_size)
    ct = ct_from_image(img, "image", check_assumed_orientation(assume_orientation))
    for message in ct.warnings:
        warnings.warn(message, stacklevel=2)
    if model is None:
        model = load(weights)
    labels = segment_volume(ct.volume, ct.affine, model, batch_size=batch_size, postprocess=postprocess,
                            progress=progress, tta=tta)
    check_labels(labels, ct.volume.shape)
    if organ_ids is not None:
        labels = keep_organs(labels, organ_ids)
    return labels_image(labels, ct.image)


def segment(input_path, output_path, *, weights=None, model=None, threads: int | None = None,
            batch_size: int = 8, postprocess: bool = True, tta: bool = False, overwrite: bool = False,
            statistics: bool = False,
            preview: bool = False, output_type: str = "nifti", split: bool = False, organs=None,
            quiet: bool = True, assume_orientation: str | None = None, report: bool | str = False,
            load_model=None, segment_volume=segment_array) -> list:
    """`npunet segment` as a function; returns one CaseResult per case, in case order.

    tta: average each slice's class probabilities with those of its left-right mirror (the network runs
    twice; npunet.pipeline.mirror_average). output_type: "nifti", "dicom-seg" or "rtstruct"; split: a folder
    of one mask per organ per case; organs: names or label ids to keep ("liver,spleen" or ["liver", 3]), None
    for all; report: True writes each case's provenance report beside its output (CASE.report.json;
    report.json in a --split folder), a path (.json) writes a single case's report there (npunet.io.report;
    `npunet verify` checks it). Raises NpunetError, before any output is written, for a bad INPUT/OUTPUT
    pair, bad options, bad output paths or bad weights; for a single image, also for a bad image. For a
    folder of cases, a bad case is recorded in its CaseResult (ok=False,
    error=message) and the other cases still run. model: a loaded network (else load_model(weights) loads
    one, npunet.api.load by default); segment_volume: the volume -> labels function.
    """
    from npunet.case import OUTPUT_TYPES, Outputs, run_case
    from npunet.io.cases import plan_jobs
    from npunet.io.ct import check_assumed_orientation, load_ct
    from npunet.io.nifti import check_output_folder, check_output_path
    from npunet.io.paths import check_output_file
    batch_size = check_batch_size(batch_size)
    threads = check_threads(threads)
    assume_orientation = check_assumed_orientation(assume_orientation)
    if output_type not in OUTPUT_TYPES:
        raise NpunetError(f"--output-type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if split and output_type != "nifti":
        raise NpunetError(f"--split writes NIfTI masks; it does not combine with --output-type {output_type}")
    report = check_report_option(report)
    outputs = Outputs(output_type, split, parse_organs(organs) if organs is not None else None, statistics, preview,
                      report)
    if split and str(output_path).lower().endswith((".nii", ".nii.gz", ".dcm")):
        raise NpunetError(f"{output_path}: with --split the output is a folder of masks; give a folder name")
    jobs = plan_jobs(input_path, output_path, suffix=outputs.suffix)
    folder_of_cases = is_folder_of_cases(input_path, jobs[0].input)
    if isinstance(report, str) and folder_of_cases:
        raise NpunetError(f"--report {report}: a folder of cases gets one report per case (CASE.report.json "
                          f"beside each output); give --report without a file name")
    name_suffixes = (".nii.gz", ".nii")
    if output_type in ("dicom-seg", "rtstruct"):
        what = "a DICOM SEG" if output_type == "dicom-seg" else "an RTSTRUCT"
        if jobs[0].kind != "dicom":
            raise InputError(f"{input_path}: --output-type {output_type} needs a DICOM series folder as INPUT "
                             f"({what} references the source images; NIfTI has none): use --output-type nifti")
        from npunet.io.dicom_seg import SEG_SUFFIX, import_highdicom
        if output_type == "dicom-seg":
            import_highdicom()
        else:
            from npunet.io.rtstruct import import_rt_utils
            import_rt_utils()
        name_suffixes = (SEG_SUFFIX,)
    log = Log(quiet)

    problems = []
    for job in jobs:
        files = outputs.files(job.output)
        try:
            if split:
                check_output_folder(job.output, job.input, overwrite)
            else:
                check_output_path(job.output, job.input, overwrite, also=tuple(files.values())[1:],
                                  suffixes=name_suffixes)
            if isinstance(report, str):
                check_output_file(report, (job.input, job.output), overwrite, suffixes=(".json",),
                                  what="the report (--report)")
                if Path(report).absolute() in {Path(f).absolute() for role, f in files.items() if role != "report"}:
                    raise InputError(f"{report}: the report would replace another output of the case; choose "
                                     f"another name")
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more output problems)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)

    # The first image is read (decompressed, mostly outside the GIL) while Numba and the weights load.
    first_read = in_background(load_ct, jobs[0], assume_orientation)
    use_threads(threads)
    say_if_first_run(log)
    if model is None:
        log.say(f"loading weights {weights or '(default)'}")
        model = (load_model or load)(weights)
    if report and not getattr(model, "weights_path", None):
        raise NpunetError("--report names the weights file the model came from, and this model was not loaded "
                          "from a file (give weights=, not model=)")
    if tta and trained_without_mirrors(model):
        print("npunet segment: warning: --tta: these weights were trained without left-right mirrors (their "
              "training_config: p_flip 0), so every mirrored slice is new to them; on held-out patients --tta "
              "lowered such weights' liver and spleen (weights/MODEL_CARD.md)", file=sys.stderr)
    warm_up = start_warm_up(model)               # kernels load (or compile, once) while the first CT is read

    results = []
    for i, job in enumerate(jobs, start=1):
        result = run_case(job, model, outputs, batch_size=batch_size, postprocess=postprocess, tta=tta,
                          overwrite=overwrite,
                          assume_orientation=assume_orientation, log=log,
                          prefix=f"[{i}/{len(jobs)}] {job.case}" if folder_of_cases else job.case,
                          prefetched=first_read if i == 1 else None, before_segmenting=warm_up.join,
                          raise_errors=not folder_of_cases, segment_volume=segment_volume)
        if not result.ok:
            print(f"npunet segment: {job.case}: error: {result.error}", file=sys.stderr)
        results.append(result)
    return results


def trained_without_mirrors(model) -> bool:
    """True when the weights' metadata records a training run (tools/train.py's training_config) that never
    mirrored a slice left-right (augmentation off, or its p_flip 0 or absent: train.py had no flips before
    --flip); False when it mirrored, or when the metadata says nothing (weights from elsewhere)."""
    config = (getattr(model, "metadata", None) or {}).get("training_config")
    if not isinstance(config, dict):
        return False
    augmentation = config.get("augmentation")
    return not isinstance(augmentation, dict) or not augmentation.get("p_flip")


def check_report_option(report) -> bool | str:
    """--report: False (none), True (CASE.report.json beside each output) or a .json path; NpunetError else."""
    if report is None or report is False:
        return False
    if report is True:
        return True
    if isinstance(report, (str, os.PathLike)) and str(report).lower().endswith(".json"):
        return str(report)
    raise NpunetError(f"--report {report}: the report must be a .json file name (or give --report alone for "
                      f"CASE.report.json beside the output)")


def say_if_first_run(log: Log) -> None:
    """On the first run of this build on this machine, say in one line that the kernels are being compiled:
    the one long wait a new user meets (npunet.pipeline.kernels_cached)."""
    if not kernels_cached():
        log.say("compiling the kernels for this CPU (first run only; they are cached for the next runs)")


def is_folder_of_cases(input_path, first_case_input) -> bool:
    """Whether INPUT is a folder of cases (each planned as its own job, the first reading
    `first_case_input`), rather than one CT."""
    return Path(input_path).is_dir() and Path(first_case_input) != Path(input_path)


def verify(report, *, input=None, weights=None, log=None, load_model=None, segment_volume=segment_array):
    """Run the case of a provenance report (`segment(..., report=...)`) again and check every output; a
    npunet.verification.Verification (.ok, .lines). Raises npunet.verification.MismatchError, before running
    anything, when an input or the weights no longer match the report's digests (see npunet.verification)."""
    from npunet.verification import verify_report
    return verify_report(report, input=input, weights=weights, log=log or (lambda line: None),
                         load_model=load_model, segment_volume=segment_volume)


def segment_many(inputs, output_dir, *, client=None, **options) -> list[dict]:
    """Segment a cohort (a folder, or a list of NIfTI files and DICOM series folders) into `output_dir`,
    resumably, on a Dask cluster or in this process; returns the manifest rows (options and rows: see
    npunet.cohort.runner.segment_many)."""
    from npunet.cohort.runner import segment_many as run_cohort
    return run_cohort(inputs, output_dir, client=client, **options)


def label_names(model, organs: tuple[int, ...] | None = None) -> dict[int, str]:
    """The model's label names, only background and `organs` when given (npunet.case.label_names)."""
    from npunet.case import label_names as names
    return names(model, organs)


def in_background(function, *args) -> Future:
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


__all__ = ["load", "default_weights_path", "segment", "segment_image", "segment_many", "verify", "label_names"]
