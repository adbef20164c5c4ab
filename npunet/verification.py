"""`npunet verify REPORT.json` (and npunet.verify): run a case again from its provenance report and check every
output.

    outcome = verify_report("ct.report.json")        # a Verification: .ok, .lines (what was checked, found)

1. The report is read and checked against its schema (npunet.io.report; ReportError otherwise).
2. The input and the weights are found (relative to the report's folder first, then at their recorded
   absolute paths; the weights also as this checkout's default file when the report says the default was
   used; `input=` / `weights=` override) and digested. One that is missing or whose SHA-256 is not the
   report's stops here, nothing run: MismatchError (exit code 2), saying which and both digests.
3. The case runs again through the unit of work (npunet.case.run_case) with the report's options, batch size
   and thread count (or the threads this machine has, if fewer: label maps do not depend on either, which
   tests/test_provenance.py proves), into a temporary folder that is removed afterwards.
4. Every recorded output is compared: the re-run's bytes with the recorded SHA-256 (a DICOM SEG or RTSTRUCT,
   whose UIDs and times are new in every run, by the digest of its decoded content, and the verdict says so),
   and the file that was written, where it still is, with its recorded SHA-256 (a changed output). For a
   difference it says what differs: for label maps and masks, how many voxels and of which organs; for
   statistics and label names, which entries. Outcome.ok is False then (exit code 1).

Nothing here is specific to the command line: npunet.commands.verify prints the lines and sets the exit code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npunet.case import Outputs, run_case
from npunet.errors import NpunetError
from npunet.io.cases import Job
from npunet.io.ct import load_ct
from npunet.io.digests import file_digest, series_digest
from npunet.io.report import locate, machine, read_report, software_versions
from npunet.machine import max_threads, use_threads
from npunet.pipeline import segment_array
from npunet.text import one_line
from npunet.weights import default_weights_path


class MismatchError(NpunetError):
    """An input or the weights are missing or no longer match the report's digests (exit code 2)."""


@dataclass
class Verification:
    ok: bool = True
    lines: list[str] = field(default_factory=list)      # one per check, in order
    differing: list[str] = field(default_factory=list)  # the outputs that differ (their recorded paths)


def verify_report(report_path, *, input=None, weights=None, log=print, load_model=None,
                  segment_volume=segment_array) -> Verification:
    """Verify the case of the report at `report_path` (see the module doc). input / weights: where they are
    when not where the report says. log(line) is called with each line as it is known. load_model(path) loads
    the weights (npunet.network.from_file by default); segment_volume: the volume -> labels function."""
    report_path = Path(report_path)
    report = read_report(report_path)
    out = Verification()

    def say(line: str) -> None:
        out.lines.append(line)
        log(line)

    input_path = _input(report, report_path, input, say)
    weights_path = _weights(report, report_path, weights, say)
    _notes(report, say)

    if load_model is None:
        from npunet.network import from_file as load_model
    model = load_model(weights_path)
    if getattr(model, "weights_sha256", report["weights"]["sha256"]) != report["weights"]["sha256"]:
        raise MismatchError(f"{weights_path}: the loaded weights have SHA-256 {model.weights_sha256[:16]}..., "
                            f"the report's {report['weights']['sha256'][:16]}...")
    options = report["options"]
    threads = min(report["run"]["threads"], max_threads())
    use_threads(threads)
    threads_said = (f"{threads} threads" if threads == report["run"]["threads"] else
                    f"{threads} threads (the report's run had {report['run']['threads']}; this machine has "
                    f"{max_threads()}; label maps do not depend on it)")

    main = next(o for o in report["outputs"] if o["role"] in ("labels", "seg", "rtstruct", "mask"))
    work = Path(tempfile.mkdtemp(prefix="npunet-verify-"))
    try:
        split = options["split"]
        name = Path(main["path"]).parent.name if split else Path(main["path"]).name
        output = work / (name or "masks")
        job = Job(report["case"], input_path, output, report["input"]["kind"])
        outputs = Outputs(options["output_type"], split, tuple(options["organs"]) if options["organs"] else None,
                          options["statistics"], options["preview"])
        seen = {}

        def read(job, assume_orientation):
            seen["ct"] = load_ct(job, assume_orientation)
            return seen["ct"]
        t0 = time.perf_counter()
        run_case(job, model, outputs, batch_size=report["run"]["batch_size"], postprocess=options["postprocess"],
                 tta=options["tta"], assume_orientation=options["assume_orientation"], raise_errors=True,
                 segment_volume=segment_volume, read=read, warn=lambda message: None)   # the report has them
        read_files = seen["ct"].input_files
        if [f["sha256"] for f in read_files] != [f["sha256"] for f in report["input"]["files"]]:
            raise MismatchError(f"{input_path}: the files read again are not the report's, in its order (series "
                                f"digest {series_digest(read_files)[:16]}..., the report's "
                                f"{report['input']['sha256'][:16]}...)")
        say(f"ran case {report['case']} again: {threads_said}, batch size {report['run']['batch_size']}, "
            f"in {time.perf_counter() - t0:.1f} s")
        again = _rerun_files(outputs.files(output), report["outputs"])
        for entry in report["outputs"]:
            _compare(entry, again.get(_key(entry)), report, report_path, seen["ct"], model, out, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checked = len(report["outputs"])
    if out.ok:
        by_content = sum(o["compare"] == "content" for o in report["outputs"])
        said = f", {by_content} of them by decoded content" if by_content else ""
        say(f"verified: the {checked} outputs of the report are reproduced{said}")
    else:
        say(f"NOT verified: {len(out.differing)} of the {checked} outputs differ ({', '.join(out.differing)})")
    return out


# ------------------------------------------------------------------------------------ input, weights --

def _input(report: dict, report_path: Path, given, say) -> Path:
    record = report["input"]
    candidates = [Path(given)] if given is not None else locate(record, report_path)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise MismatchError(f"the input {Path(record['absolute_path']).name} is not at "
                            f"{' nor '.join(map(str, candidates))}; give its place with --input")
    if record["kind"] == "nifti":
        if not found.is_file():
            raise MismatchError(f"{found}: not a file; the report's input is the NIfTI file "
                                f"{record['files'][0]['name']}")
        digest = file_digest(found)
        if digest["sha256"] != record["sha256"]:
            raise MismatchError(f"{found}: the input has changed: SHA-256 {digest['sha256'][:16]}... "
                                f"({digest['size']:,} bytes), the report's {record['sha256'][:16]}... "
                                f"({record['files'][0]['size']:,} bytes); nothing was run")
        say(f"input {found}: SHA-256 matches the report's ({record['sha256'][:16]}...)")
        return found
    from npunet.io.dicom import dicom_files
    if not found.is_dir():
        raise MismatchError(f"{found}: not a folder; the report's input is a DICOM series folder")
    digests = {}
    for f in dicom_files(found):
        digests.setdefault(file_digest(f)["sha256"], f.name)
    recorded = {f["sha256"]: f["name"] for f in record["files"]}
    missing = [name for sha, name in recorded.items() if sha not in digests]
    if missing:
        raise MismatchError(f"{found}: the series has changed: {len(missing)} of its {len(recorded)} instances "
                            f"are missing or changed ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); "
                            f"nothing was run")
    added = [name for sha, name in digests.items() if sha not in recorded and _is_image(found / name)]
    if added:
        raise MismatchError(f"{found}: the series has changed: {len(added)} image(s) not in the report "
                            f"({', '.join(added[:3])}{' ...' if len(added) > 3 else ''}); nothing was run")
    say(f"input {found}: the SHA-256 of each of its {len(recorded)} instances matches the report's "
        f"(series {record['sha256'][:16]}...)")
    return found


def _is_image(path: Path) -> bool:
    """Whether a DICOM file would be read as a slice of the series (not a SEG, report, DICOMDIR, ...)."""
    import pydicom
    from npunet.io.dicom import _is_non_image
    try:
        return not _is_non_image(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:
        return True            # unreadable: the reader would refuse the folder, so it counts as a change


def _weights(report: dict, report_path: Path, given, say) -> Path:
    record = report["weights"]
    candidates = [Path(given)] if given is not None else locate(record, report_path)
    if given is None and record["default"]:
        candidates.append(Path(default_weights_path()))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise MismatchError(f"the weights file {Path(record['absolute_path']).name} is not at "
                            f"{' nor '.join(map(str, candidates))}; give its place with --weights")
    digest = file_digest(found)
    if digest["sha256"] != record["sha256"]:
        raise MismatchError(f"{found}: the weights have changed: SHA-256 {digest['sha256'][:16]}..., the "
                            f"report's {record['sha256'][:16]}...; nothing was run")
    say(f"weights {found}: SHA-256 matches the report's ({record['sha256'][:16]}...)")
    return found


def _notes(report: dict, say) -> None:
    """Where this machine or its software differ from the report's (outputs may then differ in a few voxels:
    the compiled kernels' float rounding depends on the CPU and the compiler)."""
    here, then = machine(), report["machine"]
    if (here["cpu"], here["kernel_build_tag"]) != (then["cpu"], then["kernel_build_tag"]):
        say(f"note: the report's run was on {then['cpu']} (kernel build {then['kernel_build_tag']}), this one is on "
            f"{here['cpu']} (build {here['kernel_build_tag']}): another CPU or compiler may round a few logits "
            f"differently")
    now = software_versions(tuple(k for k in report["software"] if k not in ("npunet", "python")))
    changed = [f"{k} {v} (now {now.get(k)})" for k, v in report["software"].items() if now.get(k) != v]
    if changed:
        say(f"note: other versions than the report's: {', '.join(changed)}")


# ---------------------------------------------------------------------------------------- outputs --

def _key(entry: dict) -> tuple:
    return entry["role"], entry.get("organ")


def _rerun_files(files: dict, entries: list[dict]) -> dict:
    """{(role, organ): the re-run's file} for the recorded outputs."""
    from npunet.io.nifti import organ_mask_path
    out = {}
    for role, path in files.items():
        if role == "masks":
            for e in entries:
                if e["role"] == "mask":
                    out[("mask", e["organ"])] = organ_mask_path(path, e["organ"])
        else:
            out[(role, None)] = path
    return out


def _compare(entry: dict, again: Path | None, report: dict, report_path: Path, ct, model, out: Verification,
             say) -> None:
    shown = entry["path"]
    on_disk = next((c for c in locate(entry, report_path) if c.is_file()), None)
    disk_sha = file_digest(on_disk)["sha256"] if on_disk is not None else None
    problems = []
    original = on_disk is not None and disk_sha == entry["sha256"]     # the file as written, still here
    if again is None or not again.is_file():
        problems.append("the run again did not write it (other options?)")
    elif entry["compare"] == "bytes":
        sha = file_digest(again)["sha256"]
        if sha != entry["sha256"]:
            detail = _describe(entry, again, on_disk, ct, model) if original else NOT_HERE
            problems.append(f"the run again gives other bytes (SHA-256 {sha[:16]}..., the report's "
                            f"{entry['sha256'][:16]}...): {detail}")
    else:
        content = _content_digest(entry["role"], again)
        if content != entry["content_sha256"]:
            detail = _describe(entry, again, on_disk, ct, model) if original else NOT_HERE
            problems.append(f"the run again gives other content (decoded; content SHA-256 {content[:16]}..., the "
                            f"report's {entry['content_sha256'][:16]}...): {detail}")
    if on_disk is not None and disk_sha != entry["sha256"]:
        detail = (_describe(entry, on_disk, again, ct, model, ("the file", "the run again"))
                  if again is not None and again.is_file() else "")
        problems.append(f"{on_disk} has changed since the run (SHA-256 {disk_sha[:16]}..., the report's "
                        f"{entry['sha256'][:16]}...)" + (f": against the run again, {detail}" if detail else ""))
    if problems:
        out.ok = False
        out.differing.append(shown)
        say(f"{shown}: DIFFERS: " + "; ".join(problems))
        return
    how = ("byte for byte" if entry["compare"] == "bytes" else
           "same decoded content (a DICOM object's UIDs and times are new in every run, so its bytes are not "
           "compared; its segments or contours, their codes and every pixel are)")
    where = "" if on_disk is not None else (" (the file as written is not beside the report nor at its path; its "
                                            "digest was checked)")
    say(f"{shown}: reproduced, {how}{where}")


NOT_HERE = "the file as written is not here to compare with"


def _content_digest(role: str, path: Path) -> str:
    if role == "seg":
        from npunet.io.dicom_seg import content_digest
    else:
        from npunet.io.rtstruct import content_digest
    return content_digest(path)


def _describe(entry: dict, a: Path, b: Path, ct, model, what=("the run again", "the file written")) -> str:
    """What differs between two versions of an output (a and b, named by `what`), in a few words."""
    from npunet.case import label_names
    names = label_names(model)
    role = entry["role"]
    try:
        if role in ("labels", "mask"):
            import nibabel as nib
            x, y = np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)
            if role == "mask":
                x, y = x * _label_of(entry["organ"], names), y * _label_of(entry["organ"], names)
            return label_difference(x, y, names, what)
        if role == "seg":
            from npunet.io.dicom_seg import decoded_labels
            uids = [_sop_uid(ds) for ds in _headers(ct)]
            return label_difference(decoded_labels(a, uids, names), decoded_labels(b, uids, names), names, what)
        if role == "rtstruct":
            from npunet.io.rtstruct import rasterise
            return label_difference(rasterise(a, ct.image), rasterise(b, ct.image), names, what)
        if role in ("statistics_json", "names"):
            x, y = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
            keys = sorted({*x, *y}, key=str)
            changed = [k for k in keys if x.get(k) != y.get(k)]
            return f"entries that differ: {', '.join(map(str, changed[:8]))}" if changed else "same entries"
        if role == "statistics_csv":
            x, y = Path(a).read_text().splitlines(), Path(b).read_text().splitlines()
            rows = [xa.split(",")[1] if "," in xa else xa for xa, ya in zip(x, y) if xa != ya]
            return f"rows that differ: {', '.join(rows[:8])}" if rows else f"{len(x)} and {len(y)} lines"
    except Exception as exc:           # a file too damaged to decode: say so rather than fail the verification
        return f"cannot be decoded to compare ({type(exc).__name__}: {one_line(str(exc), limit=None)[:120]})"
    return "a picture: compare the label maps"


def _label_of(organ: str, names: dict) -> int:
    return next((int(k) for k, v in names.items() if v == organ), 1)


def label_difference(a: np.ndarray, b: np.ndarray, names: dict[int, str], what=("this one", "the other")) -> str:
    """'1,234 of 1,380,064 voxels differ, by organ: liver 1,000 (this one 51,000 voxels, the other 50,000),
    ...' for two label maps, `what` naming them; or how their shapes differ."""
    if a.shape != b.shape:
        return f"shapes differ ({'x'.join(map(str, a.shape))} and {'x'.join(map(str, b.shape))})"
    differ = a != b
    n = int(differ.sum())
    if not n:
        return "the same voxels (another difference: the header or the encoding)"
    organs = []
    for k in sorted(set(np.unique(a[differ])) | set(np.unique(b[differ]))):
        if k == 0:
            continue
        in_a, in_b = int((a == k).sum()), int((b == k).sum())
        changed = int(((a == k) != (b == k)).sum())
        organs.append(f"{names.get(int(k), f'label {k}')} {changed:,} ({what[0]} {in_a:,} voxels, {what[1]} {in_b:,})")
    return f"{n:,} of {a.size:,} voxels differ, by organ: {', '.join(organs)}"


def _headers(ct):
    from npunet.io.dicom import DICOM_HEADERS
    return ct.image.extra[DICOM_HEADERS]


def _sop_uid(ds) -> str:
    uid = str(ds.get("SOPInstanceUID", "") or "")
    return uid or str(ds.file_meta.MediaStorageSOPInstanceUID)
