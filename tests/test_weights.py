"""The weights file: round trip, and every corruption gives a one-line WeightsError, never a partial load."""

import json
import struct

import numpy as np
import pytest

from npunet.errors import WeightsError
from npunet.labels import LABELS
from npunet.preprocess import DEFAULT_PREPROCESSING
from npunet.spec import expected_tensors, load_spec
from npunet.weights import MAGIC, read_weights, save_weights


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
    path = saved[0]
    raw = path.read_bytes()
    assert raw[:8] == MAGIC
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + hlen])
    assert header["format_version"] == 1 and header["data_nbytes"] == len(raw) - 16 - hlen


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
    one_line_error(path, "truncated|corrupted header|not an npunet")


def test_flipped_data_byte_fails_checksum(saved):
    path = saved[0]
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40
    path.write_bytes(bytes(raw))
    one_line_error(path, "SHA-256")


def rewrite_header(path, edit):
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + hlen])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(blob)) + blob + raw[16 + hlen:])


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


def test_misshaped_tensor_in_header(saved):
    path = saved[0]
    rewrite_header(path, lambda h: h["tensors"]["head.bias"].update(shape=[7, 2]))
    one_line_error(path, "head.bias.*shape")


def test_save_refuses_wrong_tensors(tmp_path):
    spec = load_spec("dsconv_eca_unet")
    tensors = random_tensors(spec)
    tensors["head.weight"] = tensors["head.weight"][:5]
    with pytest.raises(WeightsError, match="head.weight"):
        save_weights(tmp_path / "w.npuw", spec, tensors, LABELS, DEFAULT_PREPROCESSING)
    assert list(tmp_path.iterdir()) == []
