"""Reading a CT to segment: the one reader that `npunet segment`, `npunet explain`, cohort runs and the
Python API use, so that all of them read, check, warn and orient a CT the same way.

    ct = load_ct(job)                         # a Job of npunet.io.cases (NIfTI file or DICOM series)
    ct = load_ct("ct.nii.gz")                 # one CT by path (a folder of several cases is refused)
    ct = ct_from_image(img, "image")          # a nibabel image already in memory (the Python API)

Each gives a CT record: the validated image (its header is the output's template), its float32 voxels, the
affine that orients them (the header's, or the one --assume-orientation describes), the voxel sizes, the
axial axis, and the one-line warnings about it (npunet.io.validate.image_warnings), which the caller shows.
Every refusal is npunet.io.validate's InputError of one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npunet.errors import InputError
from npunet.io.cases import Job, plan_jobs, read_job
from npunet.io.digests import INPUT_FILES
from npunet.io.nifti import validate_image
from npunet.io.validate import image_warnings, orientation_affine, parse_axcodes
from npunet.preprocess import axial_axis, voxel_sizes


@dataclass
class CT:
    """A CT ready to segment. volume is image's own float32 voxel array (X, Y, Z), in HU."""
    image: object                     # nibabel image, voxels in memory as float32
    volume: np.ndarray
    affine: np.ndarray                # how the voxels lie: the header's affine, or the assumed one
    name: str                         # the case name (or the image's name in messages)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0              # how long reading and checking it took

    @property
    def voxel_sizes(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in voxel_sizes(self.affine))

    @property
    def axial_axis(self) -> int:
        return axial_axis(self.affine)

    @property
    def slices(self) -> int:
        return int(self.volume.shape[self.axial_axis])

    @property
    def input_files(self) -> list[dict]:
        """The digests of the files read, as read (npunet.io.digests; none for an image given in memory)."""
        return list(getattr(self.image, "extra", {}).get(INPUT_FILES, []))


def check_assumed_orientation(assume_orientation: str | None) -> str | None:
    """--assume-orientation normalised ('ras' -> 'RAS'), or InputError for anything but three axis codes."""
    if assume_orientation is None:
        return None
    try:
        return parse_axcodes(assume_orientation)
    except ValueError as exc:
        raise InputError(f"--assume-orientation: {exc}") from None


def load_ct(source: Job | str | os.PathLike, assume_orientation: str | None = None) -> CT:
    """The CT of a Job, or of one NIfTI file or DICOM series folder given by path (InputError for a folder
    of several cases: one CT is meant)."""
    t0 = time.perf_counter()
    job = source if isinstance(source, Job) else single_job(source)
    img = read_job(job, assume_orientation)
    ct = _record(img, job.case, assume_orientation)
    ct.seconds = time.perf_counter() - t0
    return ct


def ct_from_image(img, name: str = "image", assume_orientation: str | None = None) -> CT:
    """A nibabel image already in memory, through the checks load_ct applies to a file."""
    return _record(validate_image(img, name, assume_orientation), name, assume_orientation)


def single_job(path: str | os.PathLike) -> Job:
    """The Job that reads one CT: a NIfTI file or one DICOM series folder; InputError otherwise."""
    # plan_jobs decides what the input is (file, DICOM folder, folder of cases); the folder-shaped output
    # name only satisfies its checks, nothing is written there.
    jobs = plan_jobs(path, "unused-output" + os.sep)
    if len(jobs) > 1 or (Path(path).is_dir() and jobs[0].kind == "nifti"):
        raise InputError(f"{path}: a folder of {len(jobs)} cases; one CT is meant here: give its file")
    return jobs[0]


def _record(img, name: str, assume_orientation: str | None) -> CT:
    volume = np.asarray(img.dataobj)                   # float32 in memory already (validate_image, read_ct)
    if volume.dtype != np.float32:
        volume = img.get_fdata(dtype=np.float32)
    return CT(img, volume, orientation_affine(img, assume_orientation), name,
              image_warnings(img, volume, assume_orientation))
