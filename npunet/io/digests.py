"""SHA-256 digests of what a run reads and writes: the evidence a provenance report (npunet.io.report) holds.

    file_digest(path)                 # {"name", "size", "sha256"} of a file, read in 1 MiB blocks
    bytes_digest(name, data)          # the same for bytes already in memory (what a reader has just read)
    series_digest(files)              # one digest for a DICOM series: see below

The readers digest the very bytes they decode (npunet.io.nifti.open_image the whole file it decompresses,
npunet.io.dicom each instance it decodes) and leave the list in the image's `extra[INPUT_FILES]`, in the
order the volume uses them (a DICOM series: slice order), so a report vouches for what was segmented, not
for a second read of the same path. A series digest is the SHA-256 of the instances' digests, one hex digest
and a newline per instance in slice order: it changes when any instance changes, is added, removed or
reordered, and not when files are renamed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

INPUT_FILES = "input_files"      # key of img.extra: [bytes_digest of each file read], in the volume's order


def file_digest(path: str | os.PathLike) -> dict:
    """{"name", "size", "sha256"} of a file."""
    path = Path(path)
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"name": path.name, "size": size, "sha256": h.hexdigest()}


def bytes_digest(name: str, data: bytes) -> dict:
    """{"name", "size", "sha256"} of a file's bytes already read."""
    return {"name": str(name), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def series_digest(files: list[dict]) -> str:
    """One SHA-256 for a list of file digests (a DICOM series in slice order): the digest of their hex
    digests, one per line."""
    return hashlib.sha256("".join(f"{f['sha256']}\n" for f in files).encode()).hexdigest()
