"""One case, start to finish: read the CT, check it, segment it, write its outputs, publish them, and take
them back if anything fails. The unit of work of `npunet segment`, of the Python API, of a folder of cases
and of every cohort task (npunet.cohort runs it on Dask workers), so all of them write the same bytes.

    outputs = Outputs(statistics=True)                 # what to write for each case
    result = run_case(job, model, outputs)              # a CaseResult: ok or its one-line error, files, seconds

Output types: a NIfTI label map (default); a DICOM Segmentation over the input series (output_type
"dicom-seg", DICOM input only; npunet.io.dicom_seg); a folder of one NIfTI mask per organ (split), filled
under a temporary name and published whole (npunet.publish.staged_folder). `organs` keeps the listed organs
in every output and in the statistics, the others become background. Every file and folder is published
the same way (npunet.publish): exclusively without overwrite, never half-written, taken back (unpublished)
if the case fails or is interrupted.

What a case needs from outside comes in through arguments: the model, `segment_volume` (the volume ->
labels function, npunet.pipeline.segment_array unless a test or a benchmark gives another), `read` (the CT reader,
npunet.io.ct.load_ct) and `clock`, so tests and tools/bench.py replace them without patching this module.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npunet.errors import NpunetError
from npunet.io.cases import Job
from npunet.io.ct import CT, load_ct
from npunet.io.dicom_seg import SEG_SUFFIX
from npunet.io.nifti import (MASKS_MARKER, is_masks_folder, labels_json_path, sidecar_path, write_labels,
                             write_organ_masks)
from npunet.io.statistics import label_counts, voxel_volume_mm3
from npunet.labels import LABELS, keep_organs
from npunet.pipeline import segment_array
from npunet.progress import Log
from npunet.publish import staged_folder, unpublish
from npunet.version import __version__

OUTPUT_TYPES = ("nifti", "dicom-seg")


@dataclass(frozen=True)
class Outputs:
    """What to write for every case of a run: the output type, one mask per organ (split) or not, the organs
    kept (label ids; None: all the model's), and the optional statistics and preview."""
    output_type: str = "nifti"
    split: bool = False
    organs: tuple[int, ...] | None = None
    statistics: bool = False
    preview: bool = False

    def files(self, output: str | os.PathLike) -> dict[str, Path]:
        """Every file written for a case whose output is `output`, keyed by role (see output_files)."""
        return output_files(output, self.statistics, self.preview, self.output_type, self.split)

    @property
    def suffix(self) -> str:
        """The per-case output's name ending: .nii.gz, .dcm, or "" for a folder (split)."""
        return "" if self.split else SEG_SUFFIX if self.output_type == "dicom-seg" else ".nii.gz"


@dataclass
class CaseResult:
    case: str
    input: Path
    output: Path
    ok: bool = False
    error: str | None = None
    seconds: float = 0.0                                        # the whole case
    read_seconds: float = 0.0
    segment_seconds: float = 0.0
    write_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)     # segment's stages (npunet.pipeline)
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


def label_names(model, organs: tuple[int, ...] | None = None) -> dict[int, str]:
    """The model's label names (npunet.labels.LABELS when it carries none), only background and `organs`
    when given."""
    names = getattr(model, "labels", None)
    names = {int(k): str(v) for k, v in names.items()} if names else dict(LABELS)
    return names if organs is None else {k: v for k, v in names.items() if k == 0 or k in organs}


def run_case(job: Job, model, outputs: Outputs = Outputs(), *, batch_size: int = 8, postprocess: bool = True,
             tta: bool = False, overwrite: bool = False, assume_orientation: str | None = None, log: Log | None = None,
             prefix: str | None = None, prefetched=None, before_segmenting=lambda: None,
             raise_errors: bool = False, segment_volume=segment_array, read=load_ct,
             clock=time.perf_counter) -> CaseResult:
    """One case: read job.input, segment it with `model`, write `outputs` for it; a CaseResult.

    A case that fails leaves none of its files behind (nor do KeyboardInterrupt and SystemExit, which are
    re-raised); its error comes back as result.error, one line, or is re-raised when raise_errors. The
    kernels' thread count is the caller's (npunet.machine.use_threads). prefetched: a Future of read(job)
    already under way; before_segmenting() is called once the CT is read (a warm-up to join)."""
    result = CaseResult(job.case, Path(job.input), Path(job.output))
    log = log or Log(quiet=True)
    prefix = prefix or job.case
    t0 = clock()
    try:
        log.say(f"{prefix}: reading {job.input}")
        ct = prefetched.result() if prefetched is not None else read(job, assume_orientation)
        result.read_seconds = ct.seconds            # the read's own time (a prefetched one overlapped start-up)
        log.say(f"{prefix}: {'x'.join(map(str, ct.volume.shape))} voxels of "
                f"{' x '.join(f'{z:.3g}' for z in ct.voxel_sizes)} mm, read in {result.read_seconds:.1f} s")
        for message in ct.warnings:
            print(f"npunet segment: {job.case}: warning: {message}", file=sys.stderr)

        before_segmenting()
        t = clock()
        labels = segment_volume(ct.volume, ct.affine, model, batch_size=batch_size, postprocess=postprocess,
                                progress=log.progress(f"{prefix}: segmenting"), timings=result.timings, tta=tta)
        log.end_progress()
        check_labels(labels, ct.volume.shape)
        if outputs.organs is not None:
            labels = keep_organs(labels, outputs.organs)
        counts = label_counts(labels)                 # once: the volumes and the written files' messages
        result.segment_seconds = clock() - t
        names = label_names(model, outputs.organs)
        result.slices = ct.slices
        voxel_ml = voxel_volume_mm3(ct.affine) / 1000.0
        result.volumes_ml = {name: round(int(counts[k]) * voxel_ml, 4) for k, name in sorted(names.items())
                             if 0 < k < len(counts)}
        detail = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if v)
        log.say(f"{prefix}: segmented in {result.segment_seconds:.1f} s" + (f" ({detail})" if detail else ""))

        t = clock()
        _write(labels, ct, job, model, outputs, names, overwrite, result.written, log, prefix, counts)
        result.write_seconds = clock() - t
        result.ok = True
        log.say(f"{prefix}: done in {clock() - t0:.1f} s")
    except BaseException as exc:
        for p in result.written:  # a failed (or interrupted) case leaves nothing of its own behind
            unpublish(p)          # (a file, or the --split folder; one another run put there stays)
        result.written.clear()
        if raise_errors or not isinstance(exc, Exception):
            raise
        message = str(exc) if isinstance(exc, NpunetError) else f"{type(exc).__name__}: {exc}"
        result.error = " ".join(message.split())
    result.seconds = clock() - t0
    return result


def check_labels(labels, shape) -> None:
    """What a segment function returned must be a uint8 label map of the CT's shape (a broken one is a bug,
    not the user's mistake: RuntimeError)."""
    if not isinstance(labels, np.ndarray) or labels.shape != tuple(shape) or labels.dtype != np.uint8:
        got = (getattr(labels, "shape", None), getattr(labels, "dtype", type(labels).__name__))
        raise RuntimeError(f"segment_array returned {got}, expected a uint8 array of shape {tuple(shape)}")


def _write(labels, ct: CT, job: Job, model, outputs: Outputs, names: dict, overwrite: bool, written: list,
           log: Log, prefix: str, counts) -> None:
    """Write and publish a case's files; each path joins `written` before its writing starts, so that a
    failure takes back (unpublishes) what this run published, and only that."""
    if outputs.split:     # everything goes into a folder that is published whole, or not at all
        written.append(job.output)          # taken back on failure only if it is still ours (unpublish)
        with staged_folder(job.output, overwrite=overwrite, may_replace=is_masks_folder) as folder:
            _write_files(labels, ct, output_files(folder, outputs.statistics, outputs.preview, split=True),
                         job, model, names, overwrite=True, written=[], log=log, prefix=prefix, counts=counts)
        log.say(f"{prefix}: wrote the folder {job.output}")
    else:
        _write_files(labels, ct, outputs.files(job.output), job, model, names, overwrite=overwrite,
                     written=written, log=log, prefix=prefix, counts=counts)


def _write_files(labels, ct: CT, files: dict, job: Job, model, names: dict, *, overwrite: bool, written: list,
                 log: Log, prefix: str, counts) -> None:
    found = int(np.count_nonzero(counts[1:]))           # label_counts(labels), computed once by run_case
    if "masks" in files:
        write_organ_masks(labels, ct.image, files["masks"], {k: v for k, v in names.items() if k != 0})
        log.say(f"{prefix}: wrote {len(names) - 1} organ masks ({found} organs found)")
    elif "seg" in files:
        from npunet.io.dicom import DICOM_HEADERS
        from npunet.io.dicom_seg import write_dicom_seg
        written.append(files["seg"])
        notes = write_dicom_seg(labels, ct.image.extra[DICOM_HEADERS], files["seg"], names, version=__version__,
                                overwrite=overwrite, weights_sha256=getattr(model, "weights_sha256", None),
                                model_name=getattr(model, "spec", {}).get("name"))
        for note in notes:
            print(f"npunet segment: {job.case}: warning: {note}", file=sys.stderr)
        log.say(f"{prefix}: wrote {files['seg']} ({found} organs found, one segment each)")
    else:
        written += [files["labels"], files["names"]]
        write_labels(labels, ct.image, files["labels"], overwrite=overwrite, label_names=names)
        log.say(f"{prefix}: wrote {files['labels']} ({found} organs found)")
    if "statistics_csv" in files:
        from npunet.io.statistics import organ_statistics, write_statistics
        rows = organ_statistics(labels, ct.volume, ct.affine, names)
        written += [files["statistics_csv"], files["statistics_json"]]
        write_statistics(rows, files["statistics_csv"], files["statistics_json"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['statistics_csv']} and .json")
    if "preview" in files:
        from npunet.io.preview import write_preview
        written.append(files["preview"])
        write_preview(ct.volume, labels, ct.affine, files["preview"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['preview']}")
