"""Turning `npunet segment INPUT -o OUTPUT` into a list of jobs: which image to read, where to write it.

INPUT may be
  - a NIfTI file (`CASE_0000.nii.gz`, `CASE.nii`, ...): OUTPUT is a file name, or a folder (an existing
    folder, or a name ending with '/') that receives `CASE.nii.gz` (the case name drops the extension and a
    trailing `_0000`, the FLARE / nnU-Net channel suffix);
  - a folder of DICOM files (files with the DICM magic) holding one series: one job, as for a file; the case
    name is the folder's name;
  - a folder of NIfTI cases, `CASE_0000.nii.gz` (or plain `CASE.nii.gz`): OUTPUT is a folder that receives
    `CASE.nii.gz` for each. Files of other channels (`CASE_0001.nii.gz`, ...) are not CT and are skipped;
  - a folder holding only folders, each a DICOM series (its first file carries the DICM magic): one job per
    series folder, the case named after it; subfolders without DICOM files are not cases.
The per-case output is a label map CASE.nii.gz by default; plan_jobs' `suffix` makes it CASE.dcm (a DICOM
SEG) or a folder CASE/ (one mask per organ; a single case's OUTPUT is then that folder itself).
Nothing is read beyond the first 132 bytes of each file here; reading and validating is for io.nifti and
io.dicom.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from npunet.errors import InputError
from npunet.io.dicom import has_dicom_magic
from npunet.io.nifti import is_nifti_name, strip_nifti_suffix

_CHANNEL = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class Job:
    """One image to segment: `kind` is "nifti" (input is a file) or "dicom" (input is a series folder)."""
    case: str
    input: Path
    output: Path
    kind: str


def case_name(path: str | os.PathLike) -> str:
    """`imagesTs/liver_7_0000.nii.gz` -> `liver_7`; a DICOM folder's case name is the folder's name."""
    name = strip_nifti_suffix(Path(path).name)
    m = _CHANNEL.search(name)
    return name[: m.start()] if m and m.group(1) == "0000" else name


def _is_folder_target(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _single_output(case: str, output: str, suffix: str) -> Path:
    if not suffix:          # the output is a folder of its own: OUTPUT itself
        return Path(output)
    return Path(output) / f"{case}{suffix}" if _is_folder_target(output) else Path(output)


def plan_jobs(input_path: str | os.PathLike, output_path: str | os.PathLike, suffix: str = ".nii.gz") -> list[Job]:
    """The jobs for `npunet segment INPUT -o OUTPUT`, sorted by case name; raises InputError when INPUT is
    missing, an empty folder, a folder mixing NIfTI and DICOM files, or a folder with nothing usable, and
    when a folder of cases is given a file name as OUTPUT. suffix: the name ending of a case's output placed
    in a folder (".nii.gz", ".dcm"), or "" when each case's output is a folder (OUTPUT itself for one case,
    OUTPUT/CASE for a folder of cases)."""
    inp = Path(input_path)
    out = os.fspath(output_path)
    if not out:
        raise InputError("the output name is empty")
    if not inp.exists():
        raise InputError(f"{inp}: no such file or folder")
    if inp.is_file():
        if is_nifti_name(inp):
            case = case_name(inp)
            return [Job(case, inp, _single_output(case, out, suffix), "nifti")]
        if has_dicom_magic(inp):
            raise InputError(f"{inp}: a single DICOM file; pass the folder that holds the whole series")
        raise InputError(f"{inp}: not a NIfTI file (expected a .nii or .nii.gz name) nor a folder")
    if not inp.is_dir():
        raise InputError(f"{inp}: neither a file nor a folder")

    files = sorted(p for p in inp.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        subdirs = sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))
        series = [d for d in subdirs if _holds_dicom(d)]
        if series:
            out_dir = _folder_output(out)
            return [Job(d.name, d, out_dir / f"{d.name}{suffix}", "dicom") for d in series]
        names = ", ".join(d.name for d in subdirs[:5])
        what = f" (it only holds folders without DICOM files: {names})" if subdirs else ""
        raise InputError(f"{inp}: empty folder, no files to segment{what}")
    niftis = [p for p in files if is_nifti_name(p)]
    dicoms = [p for p in files if not is_nifti_name(p) and has_dicom_magic(p)]
    if niftis and dicoms:
        raise InputError(f"{inp}: holds both NIfTI ({len(niftis)}) and DICOM ({len(dicoms)}) files; "
                         f"put them in separate folders")
    if dicoms:
        case = inp.resolve().name or "dicom"
        return [Job(case, inp, _single_output(case, out, suffix), "dicom")]
    if not niftis:
        raise InputError(f"{inp}: no NIfTI (.nii, .nii.gz) or DICOM files among its {len(files)} files")

    cases: dict[str, Path] = {}
    for p in niftis:
        m = _CHANNEL.search(strip_nifti_suffix(p.name))
        if m and m.group(1) != "0000":
            continue  # another channel of a multi-channel case, not the CT
        case = case_name(p)
        if case in cases:
            raise InputError(f"{inp}: two files for case {case!r}: {cases[case].name} and {p.name}")
        cases[case] = p
    if not cases:
        raise InputError(f"{inp}: no CT channel among the NIfTI files (expected CASE_0000.nii.gz names)")
    out_dir = _folder_output(out)
    return [Job(case, p, out_dir / f"{case}{suffix}", "nifti") for case, p in sorted(cases.items())]


def _folder_output(out: str) -> Path:
    """OUTPUT for a folder of cases, which must be a folder (existing, or to be created)."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; with a folder of cases as input the output must be a folder")
    if not out_dir.exists() and is_nifti_name(out):
        raise InputError(f"{out}: with a folder of cases as input the output must be a folder, not a .nii name")
    return out_dir


def _holds_dicom(folder: Path) -> bool:
    """True when the first (by name) visible file in `folder` carries the DICOM magic."""
    try:
        first = min((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), default=None)
    except OSError:
        return False
    return first is not None and has_dicom_magic(first)


def read_job(job: Job, assume_orientation: str | None = None):
    """Read a job's image: NIfTI via io.nifti.read_ct, DICOM via io.dicom.read_dicom_series (validated by
    npunet.io.validate either way). assume_orientation: see read_ct (DICOM always has an orientation)."""
    if job.kind == "dicom":
        from npunet.io.dicom import read_dicom_series
        return read_dicom_series(job.input)
    from npunet.io.nifti import read_ct
    return read_ct(job.input, assume_orientation)
