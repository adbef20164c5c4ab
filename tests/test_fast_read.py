"""The optional fast inflate (`pip install 'npunet[fast]'`, ISA-L through the isal package) reads the same bytes as
zlib, and refuses the same corrupt or truncated gzip data; without the package npunet reads with zlib."""

import gzip
import zlib

import numpy as np
import pytest

from npunet.errors import InputError
from npunet.io import nifti

isal = pytest.importorskip("isal.isal_zlib", reason="the optional extra npunet[fast] (isal) is not installed")


def test_isal_inflate_gives_zlibs_bytes(data_dir):
    blob = (data_dir / "imagesTr" / "ts_chest_0000.nii.gz").read_bytes()
    fast = nifti._gunzip(blob, 1 << 40, "ct", inflate=isal)
    assert fast == nifti._gunzip(blob, 1 << 40, "ct", inflate=zlib) and len(fast) > 10_000_000
    assert nifti._gunzip(blob, 1000, "ct", inflate=isal) == fast[:1000]


def test_isal_inflate_over_members_and_padding():
    data = np.arange(100_000, dtype=np.int16).tobytes()
    blob = gzip.compress(data[:70_000]) + gzip.compress(data[70_000:]) + b"\0" * 64
    assert nifti._gunzip(blob, 1 << 40, "x", inflate=isal) == data


def test_isal_inflate_refuses_corrupt_data():
    blob = bytearray(gzip.compress(np.random.default_rng(0).bytes(200_000)))
    blob[len(blob) // 2:len(blob) // 2 + 64] = b"\xff" * 64
    for inflate in (isal, zlib):                # random bytes sit in stored blocks: the damage shows in the CRC
        with pytest.raises(InputError, match="corrupt gzip data: the CRC-32"):
            nifti._gunzip(bytes(blob), 1 << 40, "x", inflate=inflate, whole=True)
    with pytest.raises(InputError, match="truncated gzip data"):
        nifti._gunzip(bytes(blob[:len(blob) // 2]), 1 << 40, "x", inflate=isal, whole=True)


def test_the_default_is_the_fast_one_when_installed():
    assert nifti.INFLATE is isal
