"""The bookkeeping files of a cohort run: a completion record per case, and the run's manifest.

- `OUTPUT/.npunet/CASE.done.json`, the completion record, is written (atomically) after every output file of
  the case is in place. It names the input, the weights' SHA-256, the options that change the outputs, and
  each output file's size and SHA-256, plus what the manifest shows of the case (slices, organ volumes,
  seconds, worker). A case is complete when its record exists and everything in it still holds
  (`record_problem` returns None): that is how a re-run knows what to skip.
- `OUTPUT/npunet_manifest.csv` and `.json`: one row per case (case, input, output, status, error, seconds,
  worker, attempt, slices, one `ORGAN_ml` column per organ, and the case's provenance report when the run
  writes them, `--report`); the JSON adds the run's settings and counts.
  Both are rewritten atomically as cases finish, so an interrupted run leaves a valid manifest.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from npunet.io.digests import file_digest
from npunet.publish import atomic_write

RECORD_VERSION = 1
STATE_FOLDER = ".npunet"
MANIFEST_NAME = "npunet_manifest"
COLUMNS = ("case", "input", "output", "status", "error", "seconds", "worker", "attempt", "slices")
STATUSES = ("pending", "done", "skipped", "failed", "busy")


def state_folder(output_dir: str | os.PathLike) -> Path:
    """Where a cohort run keeps its per-case locks and completion records."""
    return Path(output_dir) / STATE_FOLDER


def record_path(output_dir: str | os.PathLike, case: str) -> Path:
    return state_folder(output_dir) / f"{case}.done.json"


def lock_path(output_dir: str | os.PathLike, case: str) -> Path:
    return state_folder(output_dir) / f"{case}.lock"


# -------------------------------------------------------------------------------- completion records --

def input_identity(path: str | os.PathLike) -> dict:
    """What a record remembers of a case's input: its name, and its size when it is a file (a DICOM
    series folder is known by its name)."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else None
    except OSError:       # gone since it was planned: segmenting it will say so
        size = None
    return {"name": path.name, "size": size}


def write_record(output_dir: str | os.PathLike, record: dict) -> Path:
    """Write a case's completion record atomically; `record` has at least case, input, weights_sha256,
    options and files (a list of file_digest)."""
    path = record_path(output_dir, record["case"])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"record_version": RECORD_VERSION, **record}, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def read_record(output_dir: str | os.PathLike, case: str) -> dict | None:
    """The case's completion record, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(record_path(output_dir, case).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_problem(record: dict | None, expected: dict, files: list[Path]) -> str | None:
    """None when `record` proves the case complete: same record version, case, input identity, weights and
    options as `expected`, and each of `files` present with the recorded size and SHA-256. Otherwise the first
    reason it does not, in a few words."""
    if record is None:
        return "no completion record"
    if record.get("record_version") != RECORD_VERSION:
        return f"completion record version {record.get('record_version')!r}, not {RECORD_VERSION}"
    if record.get("case") != expected.get("case"):
        return f"the completion record is for case {record.get('case')!r}"
    was, now = record.get("input_identity") or {}, expected.get("input_identity") or {}
    if was != now:
        return f"made from another input ({_identity(was)}, now {_identity(now)})"
    if record.get("weights_sha256") != expected.get("weights_sha256"):
        return (f"made with other weights (SHA-256 {str(record.get('weights_sha256'))[:12]}..., "
                f"now {str(expected.get('weights_sha256'))[:12]}...)")
    was, now = record.get("options") or {}, expected.get("options") or {}
    if was != now:
        changed = ", ".join(f"{k} {was.get(k)}, now {now.get(k)}" for k in sorted({*was, *now})
                            if was.get(k) != now.get(k))
        return f"made with other options ({changed})"
    for path in files:
        if not path.exists():
            return f"{path.name} is missing"
        if not _matches(record, path):
            return f"{path.name} changed since it was written (size or SHA-256 differ)"
    return None


def foreign_files(record: dict | None, files: list[Path]) -> list[Path]:
    """The existing files among `files` that `record` does not vouch for: not in it, or with other bytes
    (a label map corrected by hand, say); all existing ones when record is None."""
    return [f for f in files if f.exists() and (record is None or not _matches(record, f))]


def _matches(record: dict, path: Path) -> bool:
    entry = next((f for f in record.get("files", []) if isinstance(f, dict) and f.get("name") == path.name), None)
    if entry is None:
        return False
    try:
        return path.stat().st_size == entry.get("size") and file_digest(path)["sha256"] == entry.get("sha256")
    except OSError:
        return False


def _identity(identity: dict) -> str:
    size = identity.get("size")
    return f"{identity.get('name')}" + (f" of {size} bytes" if size is not None else "")


# -------------------------------------------------------------------------------------------- manifest --

def manifest_paths(output_dir: str | os.PathLike) -> tuple[Path, Path]:
    base = Path(output_dir) / MANIFEST_NAME
    return base.with_suffix(".csv"), base.with_suffix(".json")


def organ_column(name: str) -> str:
    return f"{name}_ml"


def write_manifest(output_dir: str | os.PathLike, rows: list[dict], organs: list[str], run: dict) -> None:
    """Rewrite the manifest (CSV and JSON) atomically, creating the folder. rows: dicts with COLUMNS and `volumes_ml`
    ({organ: mL}); organs: the organ names, in label order, one CSV column each."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *map(organ_column, organs), "report"])
    for row in rows:
        volumes = row.get("volumes_ml") or {}
        writer.writerow([_cell(row.get(c)) for c in COLUMNS] + [_cell(volumes.get(o)) for o in organs]
                        + [_cell(row.get("report"))])
    csv_path, json_path = manifest_paths(output_dir)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in STATUSES}
    text_json = json.dumps({"run": {**run, "counts": counts}, "cases": rows}, indent=1) + "\n"
    atomic_write(csv_path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text_json, encoding="utf-8"))


def read_manifest(output_dir: str | os.PathLike) -> list[dict]:
    """The manifest's rows as written to the JSON file."""
    return json.loads(manifest_paths(output_dir)[1].read_text(encoding="utf-8"))["cases"]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)
