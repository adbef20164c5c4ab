"""npunet's weights file: one file, readable with numpy and json alone (no pickle), verified on load.

Layout, format version 2 (all integers little-endian):

    bytes 0-7     magic b"NPUNETW\\0"
    bytes 8-15    uint64 header length L
    L bytes       UTF-8 JSON header:
                    format_version  2
                    spec            the architecture spec (npunet.spec), from which the network builds itself
                    labels          {"0": "background", "1": "liver", ...}, one name per class
                    preprocessing   the pipeline parameters the weights were trained with
                    metadata        free-form provenance (training data, recipe, source checkpoint)
                    tensors         {name: {"dtype": "float32", "shape": [...], "offset": o, "nbytes": n}}
                    data_nbytes     length of the data section
    the data      raw float32 arrays, C order, at the offsets given (relative to the data start), back to back
    32 bytes      SHA-256 of every byte before it: magic, length, header and data

The checksum covers the header too (format 1 covered only the data: a flipped bit in the header, e.g. the HU
window, went unnoticed). The loader is strict, and nothing is returned unless everything checks out:
the checksum; the header against HEADER_SCHEMA (types, ranges, known keys, no key twice); the spec
(npunet.spec.check_spec); the labels (one printable name per class); the preprocessing values
(npunet.preprocess.check_preprocessing: a non-empty HU window, a bounded input size, ...); the tensor index
(exactly `expected_tensors(spec)`, names and shapes, tiling the data section with no gap or overlap); and
every tensor finite. Sizes are bounded before reading (MAX_FILE_BYTES) and the file is read once. Every
problem raises WeightsError with one line naming it. A format-1 file is refused with the command that
upgrades it (`upgrade_weights`, also `python -m tools.convert --upgrade OLD -o NEW`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np

from npunet.errors import WeightsError
from npunet.schema import Any, Int, List, Map, Obj, Str, describe, parse_json, validate
from npunet.spec import MAX_PARAMETERS, SpecError, check_spec, expected_tensors

MAGIC = b"NPUNETW\0"
FORMAT_VERSION = 2
REGENERATE = "re-create it with `python -m tools.convert CHECKPOINT -o WEIGHTS`"
UPGRADE = "upgrade it with `python -m tools.convert --upgrade {path} -o NEW.npuw`"
MAX_HEADER_BYTES = 4 * 2**20
DIGEST_BYTES = 32
PREAMBLE_BYTES = 16
MAX_FILE_BYTES = PREAMBLE_BYTES + MAX_HEADER_BYTES + 4 * MAX_PARAMETERS + DIGEST_BYTES

_TENSOR_ENTRY = Obj({
    "dtype": Str(("float32",)),
    "shape": List(Int(0, 2**31), 0, 8),
    "offset": Int(0, 4 * MAX_PARAMETERS),
    "nbytes": Int(0, 4 * MAX_PARAMETERS),
})
HEADER_SCHEMA = Obj({
    "format_version": Int(FORMAT_VERSION, FORMAT_VERSION),
    "spec": Any(),             # npunet.spec.check_spec
    "labels": Any(),           # check_labels
    "preprocessing": Any(),    # npunet.preprocess.check_preprocessing
    "metadata": Map(Str(max_len=200), Any(), 1000),
    "tensors": Map(Str(max_len=200), _TENSOR_ENTRY, 10_000),
    "data_nbytes": Int(0, 4 * MAX_PARAMETERS),
})


# ------------------------------------------------------------------------------------------- checks --

def check_labels(labels, num_classes: int, what: str) -> dict[str, str]:
    """{"0": name, ..., str(num_classes - 1): name}: every class named once, printable names of 1..64 chars."""
    labels = validate(labels, Map(Str(max_len=3), Str(max_len=64), 256), f"{what}: labels", WeightsError)
    want = [str(k) for k in range(num_classes)]
    if sorted(labels, key=lambda k: (len(k), k)) != want:
        raise WeightsError(f"{what}: labels must name the classes 0..{num_classes - 1} once each, got keys "
                           f"{', '.join(sorted(labels, key=lambda k: (len(k), k))[:20])}")
    return {k: labels[k] for k in want}


def check_header(header, what: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The parsed JSON header checked in full (see the module doc) -> (header with the checked spec, labels
    and preprocessing in it, {tensor name: shape} in file order). Raises WeightsError."""
    from npunet.preprocess import check_preprocessing
    if isinstance(header, dict) and header.get("format_version") != FORMAT_VERSION:
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise WeightsError(f"{what}: header: format_version is {describe(version)}, not an integer; "
                               f"{REGENERATE}")
        raise WeightsError(f"{what} has format version {version}, this npunet reads version "
                           f"{FORMAT_VERSION}; {REGENERATE}")
    header = validate(header, HEADER_SCHEMA, f"{what}: header", WeightsError)
    try:
        spec = check_spec(header["spec"])
    except SpecError as exc:
        raise WeightsError(f"{what} carries an invalid architecture spec: {exc}") from None
    header["spec"] = spec
    header["labels"] = check_labels(header["labels"], spec["num_classes"], what)
    header["preprocessing"] = check_preprocessing(header["preprocessing"], f"{what}: preprocessing", WeightsError,
                                                  in_channels=spec["in_channels"],
                                                  downsampling=2 ** (len(spec["encoder"]) - 1))
    want = expected_tensors(spec)
    index = header["tensors"]
    _check_names_and_shapes({k: tuple(v["shape"]) for k, v in index.items()}, want, where=what)
    end = 0
    for name, entry in sorted(index.items(), key=lambda kv: kv[1]["offset"]):
        n = 4 * int(np.prod(want[name], dtype=np.int64))
        if entry["nbytes"] != n:
            raise WeightsError(f"{what}: tensor {name!r} says {entry['nbytes']} bytes, its shape "
                               f"{want[name]} needs {n}")
        if entry["offset"] != end:
            kind = "overlaps the tensor before it" if entry["offset"] < end else "leaves a gap before it"
            raise WeightsError(f"{what}: tensor {name!r} at offset {entry['offset']} {kind} (which ends at {end})")
        end += n
    if end != header["data_nbytes"]:
        raise WeightsError(f"{what}: the tensors hold {end:,} bytes, the header says data_nbytes "
                           f"{header['data_nbytes']:,}")
    return header, want


def _plain_json(value, what: str):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{what}: the metadata must be plain JSON (no NaN, no numpy types): {exc}") from None


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


def check_finite(name: str, array: np.ndarray, what: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(array.size - np.count_nonzero(finite) - n_nan)
        raise WeightsError(f"{what}: tensor {name!r} holds {n_nan} NaN and {n_inf} Inf values (of {array.size}); "
                           f"the weights are broken (a diverged training?)")


# ------------------------------------------------------------------------------------------ writing --

def save_weights(path, spec: dict, tensors: dict[str, np.ndarray], labels: dict, preprocessing: dict,
                 metadata: dict | None = None) -> Path:
    """Write a weights file (format 2) atomically: temp file, then rename over `path`. Everything the loader
    checks is checked first (spec, labels, preprocessing, tensor names and shapes, finite values), so a file
    that would not load is never written; raises WeightsError."""
    from npunet.publish import atomic_write
    path = Path(path)
    what = f"weights to save as {path}"
    try:
        spec = check_spec(spec)
    except SpecError as exc:
        raise WeightsError(f"{what}: invalid architecture spec: {exc}") from None
    want = expected_tensors(spec)
    arrays = {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}
    _check_names_and_shapes({k: a.shape for k, a in arrays.items()}, want, where=what)
    for name in want:
        check_finite(name, arrays[name], what)
    index, offset = {}, 0
    for name in want:
        a = arrays[name]
        index[name] = {"dtype": "float32", "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        offset += a.nbytes
    header = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "labels": {str(k): v for k, v in labels.items()},
        "preprocessing": dict(preprocessing),
        "metadata": _plain_json(metadata or {}, what),
        "tensors": index,
        "data_nbytes": offset,
    }
    header, _ = check_header(header, what)
    blob = json.dumps(header, indent=1, allow_nan=False).encode()
    if len(blob) > MAX_HEADER_BYTES:
        raise WeightsError(f"{what}: the header would be {len(blob):,} bytes, more than {MAX_HEADER_BYTES:,} "
                           f"(trim the metadata)")
    body = MAGIC + struct.pack("<Q", len(blob)) + blob + b"".join(arrays[name].tobytes() for name in want)
    digest = hashlib.sha256(body).digest()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(digest)
    try:
        atomic_write(path, write, overwrite=True)
    except Exception as exc:          # InputError from the publisher: the same words, as a weights problem
        raise WeightsError(str(exc)) from None
    return path


DEFAULT_WEIGHTS_NAME = "dsconv_eca_unet.npuw"


def default_weights_path() -> Path:
    """$NPUNET_WEIGHTS if set, else the shipped weights: the checkout's weights/ folder (editable install),
    or <prefix>/share/npunet/weights (where `pip install .` puts them)."""
    env = os.environ.get("NPUNET_WEIGHTS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "weights" / DEFAULT_WEIGHTS_NAME
    installed = Path(sys.prefix) / "share" / "npunet" / "weights" / DEFAULT_WEIGHTS_NAME
    return installed if not checkout.exists() and installed.exists() else checkout


# ------------------------------------------------------------------------------------------ reading --

def _read_file(path) -> tuple[Path, bytes]:
    """The bytes of a weights file, its size checked before reading; WeightsError for what is not one."""
    if not isinstance(path, (str, os.PathLike)):
        raise WeightsError(f"a weights file is given by its path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except OSError as exc:
        raise WeightsError(f"weights file {path} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"weights file {path} is a folder; give the .npuw file")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"weights file {path} is not a regular file (a device, a pipe or a socket)")
    if st.st_size > MAX_FILE_BYTES:
        raise WeightsError(f"{path} is {st.st_size:,} bytes, larger than any npunet weights file can be "
                           f"({MAX_FILE_BYTES:,}: {MAX_PARAMETERS:,} parameters at most); is it a weights file?")
    try:
        with open(path, "rb") as f:
            raw = f.read(st.st_size + 1)         # read(n) allocates n bytes first: ask for what is there
    except OSError as exc:
        raise WeightsError(f"weights file {path} cannot be read ({exc.strerror or exc})") from None
    return path, raw


def _split(path: Path, raw: bytes) -> tuple[int, bytes]:
    """(header length, header bytes) after the magic and length checks."""
    if len(raw) < PREAMBLE_BYTES and MAGIC.startswith(raw[:8]) and raw:
        raise WeightsError(f"{path} is truncated: {len(raw)} bytes; {REGENERATE}")
    if len(raw) < PREAMBLE_BYTES or raw[:8] != MAGIC:
        raise WeightsError(f"{path} is not an npunet weights file (magic {raw[:8]!r}, expected {MAGIC!r}); "
                           f"{REGENERATE}")
    (hlen,) = struct.unpack("<Q", raw[8:16])
    if hlen > MAX_HEADER_BYTES or PREAMBLE_BYTES + hlen > len(raw):
        raise WeightsError(f"{path} is truncated or corrupted: a header of {hlen:,} bytes announced, the file "
                           f"has {len(raw):,} bytes (headers are at most {MAX_HEADER_BYTES:,}); {REGENERATE}")
    return hlen, raw[PREAMBLE_BYTES:PREAMBLE_BYTES + hlen]


def read_weights(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a weights file, fully verified; raises WeightsError naming the first problem.
    The header also carries "file_sha256", the SHA-256 of the whole file (what `sha256sum` prints), computed
    in the same pass as the checksum that verifies it: the file's identity in reports and manifests."""
    path, raw = _read_file(path)
    hlen, header_bytes = _split(path, raw)
    view = memoryview(raw)                                    # slices of it copy nothing
    digest = hashlib.sha256(view[:-DIGEST_BYTES] if len(raw) >= DIGEST_BYTES else b"")
    if (len(raw) < PREAMBLE_BYTES + hlen + DIGEST_BYTES
            or digest.digest() != raw[-DIGEST_BYTES:]):
        _explain_bad_checksum(path, header_bytes)
    digest.update(view[-DIGEST_BYTES:])                       # the body's hash, continued over the trailer
    header = parse_json(header_bytes, f"{path} header", WeightsError, MAX_HEADER_BYTES)
    header, want = check_header(header, str(path))
    header["file_sha256"] = digest.hexdigest()
    data = view[PREAMBLE_BYTES + hlen:-DIGEST_BYTES]
    if len(data) != header["data_nbytes"]:
        raise WeightsError(f"{path}: {len(data)} data bytes, the header says {header['data_nbytes']}; {REGENERATE}")
    tensors = {}
    for name, shape in want.items():
        entry = header["tensors"][name]
        tensors[name] = np.frombuffer(data, dtype="<f4", count=entry["nbytes"] // 4,
                                      offset=entry["offset"]).reshape(shape).astype(np.float32)
        check_finite(name, tensors[name], str(path))
    return header, tensors


def _explain_bad_checksum(path: Path, header_bytes: bytes) -> None:
    """The checksum does not match: a format-1 file (say how to upgrade it) or a damaged one."""
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError):
        header = None
    version = header.get("format_version") if isinstance(header, dict) else None
    if version == 1:
        raise WeightsError(f"{path} is in weights format 1, whose checksum does not cover the header; this npunet "
                           f"reads format {FORMAT_VERSION}: {UPGRADE.format(path=path)}")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise WeightsError(f"{path} has format version {version}, this npunet reads version {FORMAT_VERSION}; "
                           f"update npunet or {REGENERATE}")
    raise WeightsError(f"{path} is corrupted: the SHA-256 of its contents does not match the one stored at its "
                       f"end (truncated or changed bytes); {REGENERATE}")


# ------------------------------------------------------------------------------------------ upgrade --

def read_format1(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a format-1 file, its data checksum verified; only for `upgrade_weights`."""
    path, raw = _read_file(path)
    hlen, header_bytes = _split(path, raw)
    header = parse_json(header_bytes, f"{path} header", WeightsError, MAX_HEADER_BYTES)
    if not isinstance(header, dict) or header.get("format_version") != 1:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise WeightsError(f"{path} is not a format-1 weights file (format_version {str(version)[:20]})")
    header = validate(header, Obj({**HEADER_SCHEMA.fields, "format_version": Int(1, 1),
                                   "data_sha256": Str(max_len=64)}), f"{path}: header", WeightsError)
    data = raw[PREAMBLE_BYTES + hlen:]
    if len(data) != header["data_nbytes"] or hashlib.sha256(data).hexdigest() != header["data_sha256"]:
        raise WeightsError(f"{path} is corrupted: its data do not match the length and SHA-256 in its header")
    tensors = {}
    for name, entry in header["tensors"].items():
        n = 4 * int(np.prod(entry["shape"], dtype=np.int64))
        if entry["nbytes"] != n or entry["offset"] + n > len(data):
            raise WeightsError(f"{path}: tensor {name!r} has a bad entry (offset {entry['offset']}, "
                               f"{entry['nbytes']} bytes, shape {entry['shape']})")
        tensors[name] = np.frombuffer(data, "<f4", n // 4, entry["offset"]).reshape(entry["shape"]).copy()
    return header, tensors


def upgrade_weights(old, new) -> Path:
    """Re-write a format-1 weights file `old` as format 2 at `new`: the same tensors, spec, labels,
    preprocessing and metadata, all checked as a format-2 file is (numpy only, no torch)."""
    header, tensors = read_format1(old)
    if Path(new).exists() and Path(old).resolve() == Path(new).resolve():
        raise WeightsError(f"{new}: write the upgraded file under another name than the old one")
    return save_weights(new, header["spec"], tensors, header["labels"], header["preprocessing"],
                        header.get("metadata"))
