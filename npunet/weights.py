"""npunet's weights file: one file, readable with numpy and json alone (no pickle), verified on load.

Layout (all integers little-endian):

    bytes 0-7     magic b"NPUNETW\\0"
    bytes 8-15    uint64 header length L
    L bytes       UTF-8 JSON header:
                    format_version  int (FORMAT_VERSION)
                    spec            the architecture spec (npunet.spec), from which the network builds itself
                    labels          {"0": "background", "1": "liver", ...}
                    preprocessing   the pipeline parameters the weights were trained with
                    metadata        free-form provenance (training data, recipe, source checkpoint)
                    tensors         {name: {"dtype": "float32", "shape": [...], "offset": o, "nbytes": n}}
                    data_sha256     hex SHA-256 of the data section
                    data_nbytes     length of the data section
    the data      raw float32 arrays, C order, at the offsets given (relative to the data start)

The loader is strict: the file's tensors must be exactly `npunet.spec.expected_tensors(spec)` (names and
shapes), the checksum must match, and nothing is returned unless everything checks out. Every problem
raises WeightsError with a one-line message naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from npunet.errors import WeightsError
from npunet.spec import SpecError, check_spec, expected_tensors

MAGIC = b"NPUNETW\0"
FORMAT_VERSION = 1
REGENERATE = "re-create it with `python tools/convert.py CHECKPOINT -o WEIGHTS`"
MAX_HEADER_BYTES = 16 * 2**20


def save_weights(path, spec: dict, tensors: dict[str, np.ndarray], labels: dict, preprocessing: dict,
                 metadata: dict | None = None) -> Path:
    """Write a weights file atomically (temp file, then rename). Tensors are checked against the spec."""
    spec = check_spec(spec)
    want = expected_tensors(spec)
    arrays = {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}
    _check_names_and_shapes({k: a.shape for k, a in arrays.items()}, want, where="tensors to save")
    index, offset = {}, 0
    for name in want:
        a = arrays[name]
        index[name] = {"dtype": "float32", "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        offset += a.nbytes
    data = b"".join(arrays[name].tobytes() for name in want)
    header = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "labels": {str(k): v for k, v in labels.items()},
        "preprocessing": preprocessing,
        "metadata": metadata or {},
        "tensors": index,
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "data_nbytes": len(data),
    }
    blob = json.dumps(header, indent=1).encode()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob + data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_weights(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a weights file, fully verified; raises WeightsError naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    raw = path.read_bytes()
    if len(raw) < 16 or raw[:8] != MAGIC:
        raise WeightsError(f"{path} is not an npunet weights file (magic {raw[:8]!r}, expected {MAGIC!r}); {REGENERATE}")
    (hlen,) = struct.unpack("<Q", raw[8:16])
    if hlen > MAX_HEADER_BYTES or 16 + hlen > len(raw):
        raise WeightsError(f"{path} is truncated: header of {hlen} bytes but the file has {len(raw)} bytes; {REGENERATE}")
    try:
        header = json.loads(raw[16:16 + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} has a corrupted header ({exc}); {REGENERATE}") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(f"{path} has format version {version!r}, this npunet reads version {FORMAT_VERSION}; {REGENERATE}")
    for key in ("spec", "labels", "preprocessing", "tensors", "data_sha256", "data_nbytes"):
        if key not in header:
            raise WeightsError(f"{path} header lacks {key!r}; {REGENERATE}")
    data = raw[16 + hlen:]
    if len(data) != header["data_nbytes"]:
        kind = "truncated" if len(data) < header["data_nbytes"] else "longer than its header says"
        raise WeightsError(f"{path} is {kind}: {len(data)} data bytes, header says {header['data_nbytes']}; {REGENERATE}")
    if hashlib.sha256(data).hexdigest() != header["data_sha256"]:
        raise WeightsError(f"{path} is corrupted: the SHA-256 of its data does not match its header; {REGENERATE}")
    try:
        want = expected_tensors(check_spec(header["spec"]))
    except (SpecError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path} carries an invalid architecture spec: {exc}") from None
    index = header["tensors"]
    _check_names_and_shapes({k: tuple(v["shape"]) for k, v in index.items()}, want, where=str(path))
    tensors = {}
    for name in want:
        entry = index[name]
        n = int(np.prod(entry["shape"])) * 4
        if entry.get("dtype") != "float32" or entry["nbytes"] != n or entry["offset"] < 0 or entry["offset"] + n > len(data):
            raise WeightsError(f"{path}: tensor {name!r} has a bad entry {entry}")
        tensors[name] = np.frombuffer(data, dtype="<f4", count=n // 4, offset=entry["offset"]).reshape(entry["shape"]).copy()
    return header, tensors


def _check_names_and_shapes(got: dict, want: dict, where: str) -> None:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensor{'s' * (len(missing) > 1)} {', '.join(missing[:3])}"
                         + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if extra:
            parts.append(f"unexpected tensor{'s' * (len(extra) > 1)} {', '.join(extra[:3])}"
                         + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""))
        raise WeightsError(f"{where}: {'; '.join(parts)} for its architecture")
    for k, shape in want.items():
        if tuple(got[k]) != tuple(shape):
            raise WeightsError(f"{where}: tensor {k!r} has shape {tuple(got[k])}, the architecture needs {tuple(shape)}")
