"""Planning a cohort run: which cases, from which inputs, into which files, with which settings.

    jobs, failed_rows = plan_cohort("imagesTs/", "out/")        # or a list of files and DICOM folders
    inputs = read_list("cases.txt")                              # the inputs a --list file names
    settings = RunSettings(run_id, "out/", weights_sha256, ...)  # what every task of the run shares

A manifest row (`case_row`) is the record of one case in OUTPUT/npunet_manifest.csv/.json. Nothing here
reads an image: npunet.io.cases plans each input, npunet.case segments it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from npunet.case import Outputs
from npunet.cohort.claims import STALE_AFTER_SECONDS
from npunet.cohort.manifest import input_identity
from npunet.errors import InputError
from npunet.io.cases import Job, case_name, plan_jobs
from npunet.io.nifti import is_nifti_name
from npunet.text import one_line


def read_list(path: str | os.PathLike) -> list[Path]:
    """The inputs named in a --list file: one per line, relative to the file's folder; blank lines and lines
    starting with # skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (the --list of inputs)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the --list of inputs ({one_line(exc)})") from None
    inputs = [path.parent / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not inputs:
        raise InputError(f"{path}: the --list names no inputs")
    return inputs


def plan_cohort(inputs, output_dir: str | os.PathLike) -> tuple[list[Job], list[dict]]:
    """(jobs, rows of inputs that failed already): `inputs` is a folder (or file) as for `npunet segment`, or
    a list of NIfTI files and DICOM series folders (each planned alone; a missing one becomes a failed row).
    Raises InputError when the output is not a folder, or two inputs would write the same case."""
    out = Path(output_dir)
    if is_nifti_name(out) or (out.exists() and not out.is_dir()):
        raise InputError(f"{out}: a cohort run writes into a folder; give a folder as the output")
    folder = os.fspath(out) + os.sep
    if isinstance(inputs, (str, os.PathLike)):
        return [_absolute(j) for j in plan_jobs(inputs, folder)], []
    jobs, failed, seen = [], [], {}

    def one_input_per_case(case: str, source) -> None:
        if case in seen:
            raise InputError(f"two inputs for case {case!r}: {seen[case]} and {source}; their outputs would "
                             f"collide (rename one)")
        seen[case] = source

    for given in map(Path, inputs):
        try:
            planned = [_absolute(job) for job in plan_jobs(given, folder)]
        except InputError as exc:
            job = _absolute(Job(case_name(given), given, out / f"{case_name(given)}.nii.gz", "nifti"))
            one_input_per_case(job.case, job.input)
            failed.append(case_row(job, "failed", error=str(exc)))
            continue
        for job in planned:
            one_input_per_case(job.case, job.input)
            jobs.append(job)
    return jobs, failed


def _absolute(job: Job) -> Job:
    """The job with absolute paths, as workers with another working folder need them."""
    return Job(job.case, Path(job.input).absolute(), Path(job.output).absolute(), job.kind)


@dataclass(frozen=True)
class RunSettings:
    """What every case of a run shares; travels to the workers with each task."""
    run: str
    output_dir: str
    weights_sha256: str
    batch_size: int = 8
    postprocess: bool = True
    statistics: bool = False
    preview: bool = False
    overwrite: bool = False
    stale_after: float = STALE_AFTER_SECONDS
    assume_orientation: str | None = None
    tta: bool = False
    report: bool = False

    def outputs(self) -> Outputs:
        """What a cohort case writes: a NIfTI label map of every organ, the chosen sidecars, and with report
        its provenance report CASE.report.json (npunet.io.report)."""
        return Outputs(statistics=self.statistics, preview=self.preview, report=self.report)

    def options(self) -> dict:
        """The options that change a case's output files (recorded, and compared on a re-run)."""
        return {"postprocess": self.postprocess, "statistics": self.statistics, "preview": self.preview,
                "assume_orientation": self.assume_orientation, "tta": self.tta, "report": self.report}

    def expected_record(self, job: Job) -> dict:
        return {"case": job.case, "input_identity": input_identity(job.input), "weights_sha256": self.weights_sha256,
                "options": self.options()}


def case_row(job: Job, status: str, *, error: str = "", seconds: float | None = None, worker: str = "",
             attempt: int | None = None, slices: int | None = None, volumes_ml: dict | None = None,
             report: str | None = None) -> dict:
    """One manifest row; `report`: the case's provenance report, when the run writes them."""
    return {"case": job.case, "input": str(job.input), "output": str(job.output), "status": status,
            "error": " ".join(str(error).split()), "seconds": None if seconds is None else round(seconds, 3),
            "worker": worker, "attempt": attempt, "slices": slices, "volumes_ml": dict(volumes_ml or {}),
            "report": report}


def skipped_row(job: Job, record: dict) -> dict:
    return case_row(job, "skipped", seconds=record.get("seconds"), worker=record.get("worker", ""),
                    attempt=record.get("attempt"), slices=record.get("slices"), volumes_ml=record.get("volumes_ml"),
                    report=record.get("report"))
