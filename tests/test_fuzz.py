"""Fuzzing the three readers of untrusted files (issue 11): the weights loader, the spec loader and the NIfTI
reader. Every input either loads correctly or raises npunet's own error class with a one-line message:
never another exception, never a hang (an alarm per example), never more than a bounded allocation
(tracemalloc's peak per example, against files of a few KB).

Seeded and derandomized (the same examples on every run, no example database), and sized to take about
half a minute in all on a slow two-core machine: NPUNET_FUZZ_EXAMPLES scales the number of examples."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import signal
import struct
import tracemalloc
from collections import Counter
from contextlib import contextmanager

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from npunet.errors import NpunetError  # noqa: E402
from npunet.io.nifti import read_ct  # noqa: E402
from npunet.labels import LABELS  # noqa: E402
from npunet.preprocess import DEFAULT_PREPROCESSING  # noqa: E402
from npunet.spec import MAX_PARAMETERS, expected_tensors, load_spec  # noqa: E402
from npunet.weights import read_weights, save_weights  # noqa: E402

SCALE = float(os.environ.get("NPUNET_FUZZ_EXAMPLES", "1"))
MAX_PEAK = 16 * 2**20            # bytes one attempt may allocate, for files of at most a few KB
TIME_LIMIT_S = 20                # one attempt; a hang fails the test


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


class Hang(Exception):
    pass


@contextmanager
def bounded(what: str):
    """Run the block with an alarm (no hang) and tracemalloc (no large allocation); yields nothing."""
    def on_alarm(signum, frame):
        raise Hang(f"{what} took more than {TIME_LIMIT_S} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIME_LIMIT_S)
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak <= MAX_PEAK, f"{what} allocated {peak / 2**20:.1f} MiB"


SEEN: dict[str, Counter] = {}      # reader -> Counter of outcomes, printed by the last test


def outcome(call, what: str):
    """call() -> ("ok", result) or ("refused", message); anything but an NpunetError fails the test."""
    seen = SEEN.setdefault(what, Counter())
    with bounded(what):
        try:
            result = call()
        except NpunetError as exc:
            message = str(exc)
        else:
            seen["loaded"] += 1
            return "ok", result
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    seen["refused: " + " ".join(message.replace(":", " ").split()[1:4])] += 1
    return "refused", message


JSON_LEAVES = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
               | st.sampled_from([0, 1, -1, 2**31, 2**63, -2**63, 10**30, 1e9, 0.5, -0.0])
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def json_paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON document, the root excluded."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        out.append(prefix + (key,))
        out += json_paths(item, prefix + (key,))
    return out


def mutate(document, path, new, delete: bool):
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return document


# ------------------------------------------------------------------------------------------- weights --

def tiny_spec() -> dict:
    spec = copy.deepcopy(load_spec("dsconv_eca_unet"))
    spec["name"] = "fuzz"
    spec["encoder"], spec["decoder"] = spec["encoder"][:2], spec["decoder"][-1:]
    spec["encoder"][0]["channels"], spec["encoder"][1]["channels"], spec["decoder"][0]["channels"] = 8, 8, 8
    return spec


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    spec = tiny_spec()
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_tensors(spec).items()}
    pre = dict(DEFAULT_PREPROCESSING, input_size=32)
    path = save_weights(tmp_path_factory.mktemp("w") / "base.npuw", spec, tensors, LABELS, pre, {"k": "v"})
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    return raw, hlen, json.loads(raw[16:16 + hlen])


def signed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def check_loaded(loaded):
    header, tensors = loaded
    assert list(tensors) == list(expected_tensors(header["spec"]))
    assert all(np.isfinite(t).all() for t in tensors.values())


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_weights_bytes(weights_file, tmp_path_factory, data):
    """Byte-level damage: flips, truncation, insertions, a rewritten length; re-signed or not."""
    raw, hlen, _ = weights_file
    blob = bytearray(raw[:-32])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "length", "zero"]))
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[at] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del blob[at:]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "length" and len(blob) >= 16:
            blob[8:16] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, hlen - 1, hlen + 1, 2**31, 2**63])))
        elif kind == "zero":
            blob[at:at + 64] = bytes(len(blob[at:at + 64]))
    body = bytes(blob)
    path = tmp_path_factory.mktemp("f") / "w.npuw"
    path.write_bytes(signed(body) if data.draw(st.booleans()) else body + raw[-32:])
    result, value = outcome(lambda: read_weights(path), "read_weights, damaged bytes")
    if result == "ok":
        check_loaded(value)


@fuzz_settings(160)
@given(data=st.data())
def test_fuzz_weights_header(weights_file, tmp_path_factory, data):
    """Header-level damage behind a valid checksum: any value of the JSON header replaced by any JSON value
    (wrong types, NaN, huge numbers, nested junk) or removed."""
    raw, hlen, header = weights_file
    path_in_header = data.draw(st.sampled_from(json_paths(header)))
    new = data.draw(JSON_VALUES)
    edited = mutate(header, path_in_header, new, delete=data.draw(st.booleans()))
    blob = json.dumps(edited).encode()
    path = tmp_path_factory.mktemp("h") / "w.npuw"
    path.write_bytes(signed(raw[:8] + struct.pack("<Q", len(blob)) + blob + raw[16 + hlen:-32]))
    result, value = outcome(lambda: read_weights(path), "read_weights, header values")
    if result == "ok":
        check_loaded(value)


# ---------------------------------------------------------------------------------------------- spec --

DEFAULT_SPEC = load_spec("dsconv_eca_unet")


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_spec(tmp_path_factory, data):
    """Spec files: the default with any value replaced or removed, or arbitrary bytes / JSON."""
    kind = data.draw(st.sampled_from(["edit", "edit", "edit", "json", "bytes"]))
    if kind == "edit":
        doc = DEFAULT_SPEC
        for _ in range(data.draw(st.integers(1, 3))):
            paths = json_paths(doc)
            if not paths:
                break
            doc = mutate(doc, data.draw(st.sampled_from(paths)), data.draw(JSON_VALUES), data.draw(st.booleans()))
        content = json.dumps(doc).encode()
    elif kind == "json":
        content = json.dumps(data.draw(JSON_VALUES)).encode()
    else:
        content = data.draw(st.binary(max_size=200))
    path = tmp_path_factory.mktemp("s") / "spec.json"
    path.write_bytes(content)
    result, spec = outcome(lambda: load_spec(path), "load_spec")
    if result == "ok":
        n = sum(int(np.prod(s)) for s in expected_tensors(spec).values())
        assert n <= MAX_PARAMETERS


# --------------------------------------------------------------------------------------------- NIfTI --

def base_nifti() -> bytes:
    data = np.random.default_rng(1).integers(-1000, 1500, (8, 7, 6)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img.to_bytes()


BASE_NIFTI = base_nifti()
FIELDS = ["dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter", "qform_code",
          "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z",
          "magic", "sizeof_hdr", "dim_info", "slice_end", "xyzt_units", "intent_code", "cal_max"]
NUMBERS = (st.integers(-2**31, 2**31 - 1) | st.sampled_from([0, 1, -1, 3, 4, 7, 8, 16, 32, 128, 352, 2**15 - 1])
           | st.floats(allow_nan=True, allow_infinity=True, width=32))


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_nifti_reader(tmp_path_factory, data):
    """NIfTI-1 files with header fields set to arbitrary values, bytes flipped or cut, gzipped or not."""
    hdr = nib.Nifti1Header(BASE_NIFTI[:348], check=False)
    for _ in range(data.draw(st.integers(1, 4))):
        field = data.draw(st.sampled_from(FIELDS))
        size = hdr[field].size
        number = data.draw(NUMBERS)
        try:
            with np.errstate(all="ignore"):
                if field == "magic":
                    hdr[field] = data.draw(st.sampled_from([b"n+1", b"ni1", b"n+2", b"xyz", b""]))
                elif size > 1:
                    value = np.array(hdr[field], copy=True)
                    value[data.draw(st.integers(0, size - 1))] = number
                    hdr[field] = value
                else:
                    hdr[field] = number
        except (ValueError, OverflowError, TypeError):      # a value the field's type cannot hold
            pass
    raw = bytearray(hdr.binaryblock + BASE_NIFTI[348:])
    for _ in range(data.draw(st.integers(0, 2))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] ^= data.draw(st.integers(1, 255))
        else:
            del raw[at:]
            if not raw:
                break
    content = bytes(raw)
    gz = data.draw(st.booleans())
    if gz:
        content = gzip.compress(content, 1)
        if data.draw(st.booleans()):
            content = content[:data.draw(st.integers(0, len(content)))]
    path = tmp_path_factory.mktemp("n") / ("ct.nii.gz" if gz else "ct.nii")
    path.write_bytes(content)
    assume = data.draw(st.sampled_from([None, "RAS", "lpi"]))
    result, img = outcome(lambda: read_ct(path, assume), "read_ct")
    if result == "ok":
        volume = np.asarray(img.dataobj)
        assert volume.ndim == 3 and volume.dtype == np.float32 and np.isfinite(volume).all()
        affine = img.affine if img.affine is not None else img.header.get_best_affine()
        assert np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 0


def test_fuzz_outcomes_summary():
    """What the fuzzing above saw (run after it): each reader both loaded inputs and refused them, so the
    examples reached past the first check."""
    if len(SEEN) < 4:
        pytest.skip("run with the fuzz tests above")
    for what in sorted(SEEN):
        counts = SEEN[what]
        refused = sum(v for k, v in counts.items() if k.startswith("refused"))
        print(f"\n  {what}: {counts['loaded']} loaded, {refused} refused with {len(counts) - 1} kinds of message")
        for key, n in counts.most_common(6):
            print(f"      {n:4d}  {key}")
        assert counts["loaded"] > 0 and refused > 0
