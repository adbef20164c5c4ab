"""The weights file: round trip, and every corruption gives a one-line WeightsError, never a partial load.

Format 2 puts the whole file (header included) under the SHA-256 stored at its end: `resign` below
recomputes it after an edit, as someone who means to slip a bad header past the checksum would, so that
the checks behind the checksum (schema, spec, labels, preprocessing, tensor index, finite values) are
tested on their own."""

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npunet
from npunet.errors import NpunetError, WeightsError
from npunet.labels import LABELS
from npunet.preprocess import DEFAULT_PREPROCESSING
from npunet.spec import expected_tensors, load_spec
from npunet.weights import MAGIC, read_weights, save_weights, upgrade_weights

REPO = Path(__file__).resolve().parent.parent


def random_tensors(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_tensors(spec).items()}


@pytest.fixture
def saved(tmp_path):
    spec = load_spec("dsconv_eca_unet")
    tensors = random_tensors(spec)
    path = save_weights(tmp_path / "w.npuw", spec, tensors, LABELS, DEFAULT_PREPROCESSING, {"note": "test"})
    return path, spec, tensors


def one_line_error(path, match):
    with pytest.raises(WeightsError, match=match) as info:
        read_weights(path)
    message = str(info.value)
    print(f"\n  {message}")
    assert "\n" not in message
    return message


def test_round_trip_is_exact(saved):
    path, spec, tensors = saved
    header, loaded = read_weights(path)
    assert header["spec"] == spec
    assert header["labels"]["1"] == "liver" and header["preprocessing"]["hu_min"] == -160
    assert list(loaded) == list(expected_tensors(spec))
    for k in tensors:
        assert np.array_equal(loaded[k], tensors[k]), k


def test_file_is_plain_json_and_raw_floats(saved):
    path, spec, tensors = saved
    raw = path.read_bytes()
    assert raw[:8] == MAGIC
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + hlen])
    assert header["format_version"] == 2 and header["data_nbytes"] == len(raw) - 16 - hlen - 32
    assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()        # everything before it, header included
    entry = header["tensors"]["head.bias"]
    start = 16 + hlen + entry["offset"]
    assert np.array_equal(np.frombuffer(raw[start:start + entry["nbytes"]], "<f4"), tensors["head.bias"])


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "nope.npuw", "does not exist")


def test_not_a_weights_file(tmp_path):
    p = tmp_path / "garbage.npuw"
    p.write_bytes(b"\x89PNG not weights at all" * 10)
    one_line_error(p, "not an npunet weights file")


@pytest.mark.parametrize("keep", [10, 100, 5000, -4])
def test_truncated(saved, keep):
    path = saved[0]
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    one_line_error(path, "truncated|corrupted")


def test_flipped_data_byte_fails_checksum(saved):
    path = saved[0]
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40
    path.write_bytes(bytes(raw))
    one_line_error(path, "SHA-256")


def resign(body: bytes) -> bytes:
    """`body` (everything but the digest) with a correct SHA-256 appended."""
    return body + hashlib.sha256(body).digest()


def rewrite_header(path, edit, blob=None):
    """Apply edit(header) (or put `blob` as the header bytes) and re-sign the file."""
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    if blob is None:
        header = json.loads(raw[16:16 + hlen])
        edit(header)
        blob = json.dumps(header).encode()
    path.write_bytes(resign(MAGIC + struct.pack("<Q", len(blob)) + blob + raw[16 + hlen:-32]))


def test_flipped_header_bit_fails_checksum(saved):
    """The issue's case: one bit turned the HU window's -160 into -960 and the file loaded. Now the
    checksum covers the header."""
    path = saved[0]
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"hu_min": -160')
    raw[at + len(b'"hu_min": -')] ^= ord("1") ^ ord("9")
    assert b'"hu_min": -960' in raw
    path.write_bytes(bytes(raw))
    one_line_error(path, "corrupted: the SHA-256 of its contents")


def test_renamed_tensor(saved):
    path = saved[0]
    def rename(h):
        h["tensors"]["encoder.1.convs.0.dw.weight"] = h["tensors"].pop("encoder.1.convs.0.depthwise.weight")
    rewrite_header(path, rename)
    msg = one_line_error(path, "missing tensor encoder.1.convs.0.depthwise.weight")
    assert "unexpected tensor encoder.1.convs.0.dw.weight" in msg


def test_wrong_format_version(saved):
    path = saved[0]
    rewrite_header(path, lambda h: h.update(format_version=99))
    one_line_error(path, "format version 99")


def format1_file(path, spec, tensors):
    """A file in the old layout (format 1: no trailing digest, data_sha256 over the data only)."""
    names = list(expected_tensors(spec))
    index, offset = {}, 0
    for name in names:
        index[name] = {"dtype": "float32", "shape": list(tensors[name].shape), "offset": offset,
                       "nbytes": tensors[name].nbytes}
        offset += tensors[name].nbytes
    data = b"".join(np.ascontiguousarray(tensors[n], "<f4").tobytes() for n in names)
    header = {"format_version": 1, "spec": spec, "labels": {str(k): v for k, v in LABELS.items()},
              "preprocessing": DEFAULT_PREPROCESSING, "metadata": {"old": True}, "tensors": index,
              "data_sha256": hashlib.sha256(data).hexdigest(), "data_nbytes": len(data)}
    blob = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_format1_is_refused_with_the_upgrade_command_and_upgrades(tmp_path):
    spec = load_spec("dsconv_eca_unet")
    tensors = random_tensors(spec, seed=3)
    old = format1_file(tmp_path / "old.npuw", spec, tensors)
    msg = one_line_error(old, "weights format 1")
    assert f"python -m tools.convert --upgrade {old} -o NEW.npuw" in msg
    # the upgrade, through the tool as a user runs it: numpy only (torch must not be imported)
    new = tmp_path / "new.npuw"
    code = ("import sys, runpy; sys.argv = ['convert.py', '--upgrade', sys.argv[1], '-o', sys.argv[2]]; "
            "sys.modules['torch'] = None; runpy.run_module('tools.convert', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code, str(old), str(new)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, loaded = read_weights(new)
    assert header["metadata"] == {"old": True} and header["spec"] == spec
    for k in tensors:
        assert np.array_equal(loaded[k], tensors[k]), k
    # a damaged format-1 file is not upgraded
    raw = bytearray(old.read_bytes())
    raw[-10] ^= 1
    old.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="corrupted"):
        upgrade_weights(old, tmp_path / "other.npuw")
    assert not (tmp_path / "other.npuw").exists()


def test_shipped_and_fixture_weights_are_format2():
    """weights/ and tests/fixtures/ hold format-2 files, and the fixtures' tensors are the ones the
    format-1 files held (the upgrade copies them; python -m tools.make_fixtures regenerates the same bytes)."""
    for path in [REPO / "weights" / "dsconv_eca_unet.npuw", *sorted((REPO / "tests" / "fixtures").glob("*.npuw"))]:
        header, tensors = read_weights(path)
        assert header["format_version"] == 2, path
        n = sum(t.size for t in tensors.values())
        print(f"\n  {path.relative_to(REPO)}: format 2, {len(tensors)} tensors, {n:,} parameters")


def test_misshaped_tensor_in_header(saved):
    path = saved[0]
    rewrite_header(path, lambda h: h["tensors"]["head.bias"].update(shape=[7, 2]))
    one_line_error(path, "head.bias.*shape")


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["preprocessing"].update(hu_max=-160.0), "HU window"),                    # empty window
    (lambda h: h["preprocessing"].update(hu_min=400.0), "HU window"),                     # inverted
    (lambda h: h["preprocessing"].update(input_size=300000), "input_size"),               # 335 GiB attempt
    (lambda h: h["preprocessing"].update(input_size=200), "multiple of 16"),
    (lambda h: h["preprocessing"].update(context_slices=2), "input channels"),
    (lambda h: h["preprocessing"].update(pad_to_square=False), "pad_to_square"),
    (lambda h: h["preprocessing"].update(orientation="RAR"), "orientation"),
    (lambda h: h["preprocessing"].update(resize="nearest"), "resize"),
    (lambda h: h["preprocessing"].update(hu_min="-160"), "hu_min"),
    (lambda h: h["preprocessing"].update(extra=1), "unknown key 'extra'"),
    (lambda h: h["labels"].pop("13"), "labels"),
    (lambda h: h["labels"].update({"1": ""}), "labels"),
    (lambda h: h["spec"]["norm"].update(groups=0), "groups"),
    (lambda h: h["spec"]["encoder"][0].update(num_convs=1e9), "num_convs"),
    (lambda h: h.pop("spec"), "missing key 'spec'"),
    (lambda h: h.update(tensors=[]), "tensors"),
    (lambda h: h["tensors"]["head.bias"].update(offset=-4), "offset"),
    (lambda h: h["tensors"]["head.bias"].update(offset=2**62), "offset"),
    (lambda h: h["tensors"]["head.bias"].update(nbytes="56"), "nbytes"),
    (lambda h: h["tensors"]["head.bias"].update(dtype="float64"), "dtype"),
    (lambda h: h["tensors"]["head.bias"].update(offset=0), "overlaps"),
    (lambda h: h.update(data_nbytes=h["data_nbytes"] + 4), "data_nbytes"),
    (lambda h: h.update(format_version="2"), "format_version is '2', not an integer"),
    (lambda h: h.update(metadata=[1, 2]), "metadata"),
])
def test_header_checks_behind_the_checksum(saved, edit, match):
    rewrite_header(saved[0], edit)
    one_line_error(saved[0], match)


def test_tensor_gap_and_overlap(saved):
    path = saved[0]
    def gap(h):
        for entry in h["tensors"].values():
            if entry["offset"] > 0:
                entry["offset"] += 4
        h["data_nbytes"] += 4
    rewrite_header(path, gap)
    one_line_error(path, "gap")


@pytest.mark.parametrize("blob,match", [
    (b'{"format_version": 2, "format_version": 2}', "appears twice"),
    (b'{"format_version": NaN}', "NaN"),
    (b"[" * 100000, "nests"),
    (b'{"a": 1' + b"1" * 5000 + b"}", "acceptable JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"[1, 2, 3]", "expected an object"),
])
def test_malformed_json_headers(saved, blob, match):
    rewrite_header(saved[0], None, blob=blob)
    one_line_error(saved[0], match)


def test_duplicate_tensor_name(saved):
    """JSON keeps the last of two equal keys silently; the loader refuses them."""
    path = saved[0]
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    blob = raw[16:16 + hlen].replace(b'"head.bias": {', b'"head.bias": {"dtype": "float32", "shape": [14], '
                                     b'"offset": 0, "nbytes": 56}, "head.bias": {', 1)
    rewrite_header(path, None, blob=blob)
    one_line_error(path, "head.bias.*twice")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_tensors(saved, tmp_path, value):
    path, spec, tensors = saved
    raw = bytearray(path.read_bytes())
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + hlen])
    at = 16 + hlen + header["tensors"]["encoder.2.convs.1.pointwise.weight"]["offset"] + 8
    raw[at:at + 4] = np.float32(value).tobytes()
    path.write_bytes(resign(bytes(raw[:-32])))
    msg = one_line_error(path, "encoder.2.convs.1.pointwise.weight")
    assert ("1 NaN" if np.isnan(value) else "1 Inf") in msg
    bad = dict(tensors)
    bad["head.bias"] = bad["head.bias"].copy()
    bad["head.bias"][3] = value
    with pytest.raises(WeightsError, match="head.bias"):            # and such a file is never written
        save_weights(tmp_path / "bad.npuw", spec, bad, LABELS, DEFAULT_PREPROCESSING)
    assert not (tmp_path / "bad.npuw").exists()


def test_huge_header_length_and_huge_file(saved, tmp_path):
    path = saved[0]
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + struct.pack("<Q", 2**60) + raw[16:])
    one_line_error(path, "header of 1,152,921,504,606,846,976 bytes")
    big = tmp_path / "big.npuw"
    with open(big, "wb") as f:                   # sparse: 2 GiB that read_weights must not read
        f.write(MAGIC)
        f.truncate(2**31)
    one_line_error(big, "larger than any npunet weights file")


def test_paths_that_are_not_weights_files(tmp_path):
    one_line_error(tmp_path, "is a folder")
    fifo = tmp_path / "fifo.npuw"
    os.mkfifo(fifo)
    one_line_error(fifo, "not a regular file")          # and no hang reading it
    for bad in (123, None, b"x", ["a"]):
        if bad is None:
            continue
        with pytest.raises(WeightsError, match="path"):
            read_weights(bad)


def test_npunet_load_raises_only_npunet_errors(tmp_path):
    """The Python API: npunet.load on anything that is not good weights raises WeightsError (one line)."""
    (tmp_path / "empty.npuw").write_bytes(b"")
    for bad in (tmp_path / "missing.npuw", tmp_path / "empty.npuw", tmp_path, 42):
        with pytest.raises(NpunetError) as info:
            npunet.load(bad)
        assert "\n" not in str(info.value)
    assert npunet.load().num_classes == 14       # the shipped weights load


def test_save_refuses_wrong_tensors(tmp_path):
    spec = load_spec("dsconv_eca_unet")
    tensors = random_tensors(spec)
    tensors["head.weight"] = tensors["head.weight"][:5]
    with pytest.raises(WeightsError, match="head.weight"):
        save_weights(tmp_path / "w.npuw", spec, tensors, LABELS, DEFAULT_PREPROCESSING)
    assert list(tmp_path.iterdir()) == []
