"""One case, start to finish: read the CT, check it, segment it, write its outputs, publish them, and take
them back if anything fails. The unit of work of `npunet segment`, of the Python API, of a folder of cases
and of every cohort task (npunet.cohort runs it on Dask workers), so all of them write the same bytes.

    outputs = Outputs(statistics=True)                 # what to write for each case
    result = run_case(job, model, outputs)              # a CaseResult: ok or its one-line error, files, seconds

Output types: a NIfTI label map (default); a DICOM Segmentation over the input series (output_type
"dicom-seg", DICOM input only; npunet.io.dicom_seg); an RT Structure Set of contours over it (output_type
"rtstruct", DICOM input only; npunet.io.rtstruct); a folder of one NIfTI mask per organ (split), filled
under a temporary name and published whole (npunet.publish.staged_folder). `organs` keeps the listed organs
in every output and in the statistics, the others become background. `report` adds the case's provenance
report (npunet.io.report), written last, once every other output is in place and digested. Every file and
folder is published the same way (npunet.publish): exclusively without overwrite, never half-written, taken
back (unpublished) if the case fails or is interrupted; the report too.

Once the labels are made, the anatomy checks (npunet.anatomy: laterality, the liver above the kidneys, organs
touching the image's edge) run on them: a failed one is a warning line, and all of them go into the
statistics and the report. They never change the labels.

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

from npunet.anatomy import check_anatomy, warning_line
from npunet.errors import NpunetError
from npunet.io.cases import Job
from npunet.io.ct import CT, load_ct
from npunet.io.dicom_seg import SEG_SUFFIX
from npunet.io.nifti import (MASKS_MARKER, is_masks_folder, labels_json_path, organ_mask_path, sidecar_path,
                             write_labels, write_organ_masks)
from npunet.io.report import REPORT_SUFFIX, write_report
from npunet.io.statistics import label_counts, voxel_volume_mm3
from npunet.labels import LABELS, keep_organs
from npunet.machine import current_threads
from npunet.pipeline import segment_array
from npunet.progress import Log
from npunet.publish import staged_folder, unpublish
from npunet.resources import peak_memory
from npunet.version import __version__

OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")


@dataclass(frozen=True)
class Outputs:
    """What to write for every case of a run: the output type, one mask per organ (split) or not, the organs
    kept (label ids; None: all the model's), the optional statistics and preview, and the provenance report
    (report: False, True for CASE.report.json beside the output, or the report's path for a single case)."""
    output_type: str = "nifti"
    split: bool = False
    organs: tuple[int, ...] | None = None
    statistics: bool = False
    preview: bool = False
    report: bool | str = False

    def files(self, output: str | os.PathLike) -> dict[str, Path]:
        """Every file written for a case whose output is `output`, keyed by role (see output_files)."""
        return output_files(output, self.statistics, self.preview, self.output_type, self.split, self.report)

    def options(self) -> dict:
        """The options that change what is written (a report records them; verify runs with them)."""
        return {"output_type": self.output_type, "split": self.split,
                "organs": None if self.organs is None else list(self.organs), "statistics": self.statistics,
                "preview": self.preview}

    @property
    def suffix(self) -> str:
        """The per-case output's name ending: .nii.gz, .dcm, or "" for a folder (split)."""
        return "" if self.split else SEG_SUFFIX if self.output_type in ("dicom-seg", "rtstruct") else ".nii.gz"


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
    timings: dict[str, float] = field(default_factory=dict)     # the pipeline's stages, then "anatomy"
    written: list[Path] = field(default_factory=list)
    slices: int | None = None                                   # axial slices segmented
    volumes_ml: dict[str, float] = field(default_factory=dict)  # organ name -> volume in mL
    anatomy: list[dict] = field(default_factory=list)           # npunet.anatomy's checks, as dicts
    report: Path | None = None                                  # the provenance report, when written


def output_files(output: str | os.PathLike, statistics: bool = False, preview: bool = False,
                 output_type: str = "nifti", split: bool = False, report: bool | str = False) -> dict[str, Path]:
    """Every file written for a case whose output is `output`, keyed by role: the label map CASE.nii.gz
    ("labels", with "names"), the DICOM SEG CASE.dcm ("seg"), or with split the folder CASE/ ("masks": the
    organ masks go in it, with "names" and the other files); the "report" last (True: CASE.report.json
    beside the output, report.json inside a --split folder; a path: there)."""
    output = Path(output)

    def beside(suffix: str) -> Path:     # `.statistics.csv` -> where that file of the case goes
        if split:
            return output / suffix.lstrip(".")
        if output_type in ("dicom-seg", "rtstruct"):
            return output.with_name(output.name[:-len(SEG_SUFFIX)] + suffix
                                    if output.name.lower().endswith(SEG_SUFFIX) else output.name + suffix)
        return sidecar_path(output, suffix)

    if split:
        files = {"masks": output, "names": output / MASKS_MARKER}
    elif output_type == "dicom-seg":
        files = {"seg": output}
    elif output_type == "rtstruct":
        files = {"rtstruct": output}
    else:
        files = {"labels": output, "names": labels_json_path(output)}
    if statistics:
        files["statistics_csv"] = beside(".statistics.csv")
        files["statistics_json"] = beside(".statistics.json")
    if preview:
        files["preview"] = beside(".preview.png")
    if report:
        files["report"] = beside(REPORT_SUFFIX) if report is True else Path(report)
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
             clock=time.perf_counter, warn=None) -> CaseResult:
    """One case: read job.input, segment it with `model`, write `outputs` for it; a CaseResult.

    A case that fails leaves none of its files behind (nor do KeyboardInterrupt and SystemExit, which are
    re-raised); its error comes back as result.error, one line, or is re-raised when raise_errors. The
    kernels' thread count is the caller's (npunet.machine.use_threads). prefetched: a Future of read(job)
    already under way; before_segmenting() is called once the CT is read (a warm-up to join). warn(message)
    shows a warning about the case (default: a line "npunet segment: CASE: warning: ..." on stderr)."""
    result = CaseResult(job.case, Path(job.input), Path(job.output))
    if warn is None:
        def warn(message: str) -> None:
            print(f"npunet segment: {job.case}: warning: {message}", file=sys.stderr)
    log = log or Log(quiet=True)
    prefix = prefix or job.case
    t0, started = clock(), time.time()
    try:
        log.say(f"{prefix}: reading {job.input}")
        ct = prefetched.result() if prefetched is not None else read(job, assume_orientation)
        result.read_seconds = ct.seconds            # the read's own time (a prefetched one overlapped start-up)
        log.say(f"{prefix}: {'x'.join(map(str, ct.volume.shape))} voxels of "
                f"{' x '.join(f'{z:.3g}' for z in ct.voxel_sizes)} mm, read in {result.read_seconds:.1f} s")
        for message in ct.warnings:
            warn(message)
        if outputs.output_type == "rtstruct":
            from npunet.io.rtstruct import check_geometry
            check_geometry(ct.image, job.input)      # before the network: a series RTSTRUCT cannot describe

        before_segmenting()
        t = clock()
        threads = current_threads()
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
        t_checks = clock()
        checks = check_anatomy(labels, ct.volume, ct.affine, names)
        result.timings["anatomy"] = clock() - t_checks
        result.anatomy = [c.as_dict() for c in checks]
        line = warning_line(checks)
        if line:
            warn(line)

        def report(at: dict, final: dict, path: Path) -> dict:
            """The case's report: `at` the outputs where they are now (a --split folder's are still in
            its staging folder), `final` where they will be."""
            from npunet.io import report as rp
            from npunet.weights import default_weights_path
            weights = getattr(model, "weights_path", None)
            if not weights:
                raise NpunetError("a report names the weights file, and this model was not loaded from one")
            extra = (("pydicom",) if job.kind == "dicom" else ()) + {
                "dicom-seg": ("highdicom",), "rtstruct": ("rt-utils", "opencv-python")}.get(outputs.output_type, ())
            return rp.build_report(
                case=job.case, started=started, finished=time.time(),
                input=rp.input_record(job.kind, job.input, ct.input_files, path),
                weights=rp.weights_record(weights, model.weights_sha256, getattr(model, "spec", {}).get("name"),
                                          default_weights_path(), path),
                options={**outputs.options(), "postprocess": bool(postprocess), "tta": bool(tta),
                         "assume_orientation": assume_orientation},
                threads=threads, batch_size=batch_size, outputs=_output_records(at, final, names, path),
                timings={"read_seconds": round(result.read_seconds, 4),
                         "segment_seconds": round(result.segment_seconds, 4),
                         "write_seconds": round(clock() - t, 4),
                         "stages": {k: round(v, 4) for k, v in result.timings.items()}},
                software=rp.software_versions(extra),
                result={"shape": [int(n) for n in labels.shape], "slices": int(ct.slices),
                        "organs_found": [n for k, n in sorted(names.items()) if 0 < k < len(counts) and counts[k]],
                        "volumes_ml": result.volumes_ml},
                anatomy=result.anatomy, peak_memory=peak_memory())

        t = clock()
        _write(labels, ct, job, model, outputs, names, overwrite, result.written, log, prefix, checks, report, warn,
               counts)
        result.write_seconds = clock() - t
        if "report" in outputs.files(job.output):
            result.report = outputs.files(job.output)["report"]
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


def _output_records(at: dict, final: dict, names: dict, report_path: Path) -> list[dict]:
    """The report's outputs: every file of `at` but the report, a --split folder's masks one by one (role
    "mask", organ named), with the decoded content's digest for a DICOM SEG or RTSTRUCT."""
    from npunet.io.report import output_record
    records = []
    for role, path in at.items():
        if role == "report":
            continue
        if role == "masks":
            for k, name in sorted(names.items()):
                if k != 0:
                    records.append(output_record("mask", organ_mask_path(path, name),
                                                 organ_mask_path(final[role], name), report_path, organ=name))
            continue
        content = None
        if role == "seg":
            from npunet.io.dicom_seg import content_digest
            content = content_digest(path)
        elif role == "rtstruct":
            from npunet.io.rtstruct import content_digest
            content = content_digest(path)
        records.append(output_record(role, path, final[role], report_path, content_sha256=content))
    return records


def check_labels(labels, shape) -> None:
    """What a segment function returned must be a uint8 label map of the CT's shape (a broken one is a bug,
    not the user's mistake: RuntimeError)."""
    if not isinstance(labels, np.ndarray) or labels.shape != tuple(shape) or labels.dtype != np.uint8:
        got = (getattr(labels, "shape", None), getattr(labels, "dtype", type(labels).__name__))
        raise RuntimeError(f"segment_array returned {got}, expected a uint8 array of shape {tuple(shape)}")


def _write(labels, ct: CT, job: Job, model, outputs: Outputs, names: dict, overwrite: bool, written: list,
           log: Log, prefix: str, checks: list, report, warn, counts) -> None:
    """Write and publish a case's files, the report last; each path joins `written` before its writing starts,
    so that a failure takes back (unpublishes) what this run published, and only that."""
    final = outputs.files(job.output)
    if outputs.split:     # everything goes into a folder that is published whole, or not at all
        written.append(job.output)          # taken back on failure only if it is still ours (unpublish)
        with staged_folder(job.output, overwrite=overwrite, may_replace=is_masks_folder) as folder:
            inside = output_files(folder, outputs.statistics, outputs.preview, split=True, report=outputs.report)
            _write_files(labels, ct, inside, job, model, names, overwrite=True, written=[], log=log,
                         prefix=prefix, checks=checks, warn=warn, counts=counts)
            if outputs.report is True:      # report.json inside the folder, the files' paths the final ones
                write_report(report(inside, final, final["report"]), inside["report"], overwrite=True)
        log.say(f"{prefix}: wrote the folder {job.output}")
        if outputs.report not in (False, True):
            written.append(final["report"])
            write_report(report(final, final, final["report"]), final["report"], overwrite=overwrite)
    else:
        _write_files(labels, ct, final, job, model, names, overwrite=overwrite, written=written, log=log,
                     prefix=prefix, checks=checks, warn=warn, counts=counts)
        if "report" in final:
            written.append(final["report"])
            write_report(report(final, final, final["report"]), final["report"], overwrite=overwrite)
    if "report" in final:
        log.say(f"{prefix}: wrote the report {final['report']}")


def _write_files(labels, ct: CT, files: dict, job: Job, model, names: dict, *, overwrite: bool, written: list,
                 log: Log, prefix: str, checks: list, warn, counts) -> None:
    found = int(np.count_nonzero(counts[1:]))           # label_counts(labels), computed once by run_case
    if "masks" in files:
        write_organ_masks(labels, ct.image, files["masks"], {k: v for k, v in names.items() if k != 0})
        log.say(f"{prefix}: wrote {len(names) - 1} organ masks ({found} organs found)")
    elif "seg" in files or "rtstruct" in files:      # a DICOM object over the input series
        from npunet.io.dicom import DICOM_HEADERS
        role = "seg" if "seg" in files else "rtstruct"
        if role == "seg":
            from npunet.io.dicom_seg import write_dicom_seg as write_dicom
        else:
            from npunet.io.rtstruct import write_rtstruct as write_dicom
        written.append(files[role])
        notes = write_dicom(labels, ct.image.extra[DICOM_HEADERS], files[role], names, version=__version__,
                            overwrite=overwrite, weights_sha256=getattr(model, "weights_sha256", None),
                            model_name=getattr(model, "spec", {}).get("name"))
        for note in notes:
            warn(note)
        log.say(f"{prefix}: wrote {files[role]} ({found} organs found, one {'segment' if role == 'seg' else 'ROI'} "
                f"each)")
    else:
        written += [files["labels"], files["names"]]
        write_labels(labels, ct.image, files["labels"], overwrite=overwrite, label_names=names)
        log.say(f"{prefix}: wrote {files['labels']} ({found} organs found)")
    if "statistics_csv" in files:
        from npunet.io.statistics import organ_statistics, write_statistics
        rows = organ_statistics(labels, ct.volume, ct.affine, names, checks)
        written += [files["statistics_csv"], files["statistics_json"]]
        write_statistics(rows, files["statistics_csv"], files["statistics_json"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['statistics_csv']} and .json")
    if "preview" in files:
        from npunet.io.preview import write_preview
        written.append(files["preview"])
        write_preview(ct.volume, labels, ct.affine, files["preview"], overwrite=overwrite)
        log.say(f"{prefix}: wrote {files['preview']}")
