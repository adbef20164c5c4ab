"""The provenance report of one case (`npunet segment --report`): which input, which weights, which code, which
options and which machine produced which output bytes, so that `npunet verify REPORT.json` can run the case
again and check them. docs/provenance.md describes every field; REPORT (below) is the schema a report is
checked against when it is read, and tests/test_provenance.py checks that the page and the schema agree.

    report = build_report(case=..., ...)            # a dict, REPORT's shape
    write_report(report, path, overwrite=False)      # published like every output (npunet.publish)
    report = read_report(path)                       # parsed and checked: ReportError (one line) otherwise

Paths: every input and output is recorded twice, relative to the report's folder ("path") and absolute
("absolute_path"); verify looks for it relative to where the report is now first, then at the absolute path,
so a folder holding the report, the outputs and the inputs can move, and a report copied to another machine
finds inputs that sit at the same absolute path there (a shared data folder). The weights also record whether
they were npunet's default weights file ("default"): another checkout then uses its own, whose SHA-256 must
match. A report never records itself among the outputs.

One report per case: a case is what verify runs again, a failed case of a folder has none while the others
keep theirs, and a cohort's cases run on several machines, each with its own CPU, timings and memory.
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from npunet.errors import InputError
from npunet.io.digests import file_digest, series_digest
from npunet.publish import atomic_write
from npunet.schema import Any, Bool, Int, List, Map, Num, Obj, Opt, Schema, Str, parse_json, validate
from npunet.text import one_line
from npunet.version import __version__

REPORT_KIND = "npunet provenance report"
REPORT_VERSION = 1
REPORT_SUFFIX = ".report.json"
REPORT_MAX_BYTES = 64 * 2**20
CORE_PACKAGES = ("numpy", "numba", "llvmlite", "scipy", "nibabel")
# Output roles: the label map, its names, a DICOM SEG or RTSTRUCT, an organ mask of --split, the sidecars.
ROLES = ("labels", "names", "seg", "rtstruct", "mask", "statistics_csv", "statistics_json", "preview")


class ReportError(InputError):
    """A report that cannot be read or is not one (exit code 2)."""


class _Sha256(Schema):
    def check(self, value, where):
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            self.fail(where, "a SHA-256 as 64 lowercase hex digits", value)
        return value


SHA256 = _Sha256()
PATH = Str(max_len=4096)
SIZE = Int(0, 2**62)
SECONDS = Num(0, 1e9)
FILE = Obj({"name": Str(max_len=255), "size": SIZE, "sha256": SHA256})
REPORT = Obj({
    "report": Str((REPORT_KIND,)),
    "report_version": Int(1, 1),
    "case": Str(max_len=255),
    "started_utc": Str(max_len=40),
    "finished_utc": Str(max_len=40),
    "input": Obj({"kind": Str(("nifti", "dicom")), "path": PATH, "absolute_path": PATH,
                  "files": List(FILE, 1, 100_000), "sha256": SHA256}),
    "weights": Obj({"path": PATH, "absolute_path": PATH, "default": Bool(), "size": SIZE, "sha256": SHA256,
                    "model": Opt(Str(max_len=200))}),
    "options": Obj({"output_type": Str(("nifti", "dicom-seg", "rtstruct")), "split": Bool(),
                    "organs": Opt(List(Int(1, 255), 1, 255)), "statistics": Bool(), "preview": Bool(),
                    "postprocess": Bool(), "tta": Opt(Bool(), default=False),
                    "assume_orientation": Opt(Str(max_len=3))}),
    "run": Obj({"threads": Int(1, 4096), "batch_size": Int(1, 1 << 20)}),
    "outputs": List(Obj({"role": Str(ROLES), "path": PATH, "absolute_path": PATH, "size": SIZE,
                         "sha256": SHA256, "compare": Str(("bytes", "content")),
                         "content_sha256": Opt(SHA256), "organ": Opt(Str(max_len=200))}), 1, 1000),
    "software": Map(Str(max_len=100), Str(max_len=100), 100),
    "machine": Obj({"cpu": Str(max_len=300), "kernel_build_tag": Str(max_len=64), "platform": Str(max_len=300),
                    "threads_available": Int(1, 4096)}),
    "timings": Obj({"read_seconds": SECONDS, "segment_seconds": SECONDS, "write_seconds": SECONDS,
                    "stages": Map(Str(max_len=100), SECONDS, 100)}),
    "peak_memory_bytes": Opt(SIZE),
    "result": Obj({"shape": List(Int(1, 1 << 31), 3, 3), "slices": Int(1, 1 << 31),
                   "organs_found": List(Str(max_len=200), 0, 255),
                   "volumes_ml": Map(Str(max_len=200), Num(0, 1e12), 255)}),
    "anatomy": List(Any(), 0, 1000),
})


def utc(seconds: float) -> str:
    """A time.time() value as '2026-12-06T11:35:34Z'."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def software_versions(extra: tuple = ()) -> dict[str, str]:
    """npunet's, Python's and the versions of the packages that compute a result: numpy, numba, llvmlite,
    scipy, nibabel, and `extra` ones (pydicom, highdicom, rt-utils, ... when the run used them)."""
    versions = {"npunet": __version__, "python": platform.python_version()}
    for name in (*CORE_PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict:
    """The CPU (npunet.machine.cpu_model), the kernels' build tag (it hashes their sources, compile options,
    the CPU's name and features and the numba/llvmlite versions), the platform and the threads Numba has."""
    from npunet.kernels._numba import BUILD_TAG
    from npunet.machine import cpu_model, max_threads
    return {"cpu": cpu_model(), "kernel_build_tag": BUILD_TAG, "platform": platform.platform(),
            "threads_available": max_threads()}


def where(path: str | os.PathLike, report_path: str | os.PathLike) -> dict:
    """{"path": relative to the report's folder, "absolute_path"} of a file or folder."""
    path = Path(path).absolute()
    folder = Path(report_path).absolute().parent
    try:
        relative = os.path.relpath(path, folder)
    except ValueError:             # another drive (Windows): only the absolute path means anything
        relative = str(path)
    return {"path": relative, "absolute_path": str(path)}


def input_record(kind: str, input_path, files: list[dict], report_path) -> dict:
    """The input: a NIfTI file (one digest) or a DICOM series folder (each instance's digest in slice order,
    and the series digest of npunet.io.digests)."""
    sha = files[0]["sha256"] if kind == "nifti" else series_digest(files)
    return {"kind": kind, **where(input_path, report_path), "files": files, "sha256": sha}


def weights_record(path, sha256: str, model: str | None, default_path, report_path) -> dict:
    """The weights: where the file is, whether it is npunet's default weights file, its size and the SHA-256
    computed while it was loaded (npunet.weights.read_weights)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: the weights file went away during the run ({one_line(str(exc), limit=None)}); "
                         f"no report without it") from None
    return {**where(path, report_path), "default": path.absolute() == Path(default_path).absolute(),
            "size": size, "sha256": sha256, "model": model}


def output_record(role: str, written_at, final_path, report_path, content_sha256: str | None = None,
                  organ: str | None = None) -> dict:
    """An output: where it is (final_path) and its digest, taken from the file now at `written_at` (the same
    file, or its copy in a folder not yet published). content_sha256: for an output whose bytes change from
    run to run (a DICOM SEG's or RTSTRUCT's new UIDs and times), the digest of its decoded content."""
    digest = file_digest(written_at)
    record = {"role": role, **where(final_path, report_path), "size": digest["size"], "sha256": digest["sha256"],
              "compare": "bytes" if content_sha256 is None else "content", "content_sha256": content_sha256}
    if organ is not None:
        record["organ"] = organ
    return record


def build_report(*, case: str, started: float, finished: float, input: dict, weights: dict, options: dict,
                 threads: int, batch_size: int, outputs: list[dict], timings: dict, software: dict,
                 result: dict, anatomy: list[dict], peak_memory: int | None) -> dict:
    """A report in REPORT's shape (the arguments are its parts; see docs/provenance.md)."""
    report = {"report": REPORT_KIND, "report_version": REPORT_VERSION, "case": case, "started_utc": utc(started),
              "finished_utc": utc(finished), "input": input, "weights": weights, "options": options,
              "run": {"threads": int(threads), "batch_size": int(batch_size)}, "outputs": outputs,
              "software": software, "machine": machine(), "timings": timings, "peak_memory_bytes": peak_memory,
              "result": result, "anatomy": anatomy}
    return validate(report, REPORT, "the report being written", RuntimeError)     # a bug if it fails


def write_report(report: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Publish the report at `path` (npunet.publish.atomic_write: exclusive unless overwrite)."""
    text = json.dumps(report, indent=1) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


def read_report(path: str | os.PathLike) -> dict:
    """A report read and checked against REPORT; ReportError, one line, for a missing file, a file that is
    not JSON, not a report, a report of another version, or one whose fields do not match the schema."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (the report to verify)") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report ({one_line(str(exc), limit=None)})") from None
    document = parse_json(data, f"{path}", ReportError, REPORT_MAX_BYTES)
    if not isinstance(document, dict) or document.get("report") != REPORT_KIND:
        raise ReportError(f"{path}: not an npunet report (no \"report\": \"{REPORT_KIND}\" in it)")
    version = document.get("report_version")
    if version != REPORT_VERSION:
        newer = isinstance(version, int) and version > REPORT_VERSION
        raise ReportError(f"{path}: report_version {version!r}; this npunet ({__version__}) reads version "
                          f"{REPORT_VERSION}" + ("; upgrade npunet to verify it" if newer else ""))
    return validate(document, REPORT, f"{path}", ReportError)


def locate(record: dict, report_path: str | os.PathLike) -> list[Path]:
    """Where to look for a recorded file or folder, in order: relative to the report's folder, then at its
    absolute path."""
    folder = Path(report_path).absolute().parent
    candidates = [Path(os.path.normpath(folder / record["path"])), Path(record["absolute_path"])]
    out = []
    for c in candidates:
        if c not in out:
            out.append(c)
    return out
