"""Reading a gzipped NIfTI converts its voxels to float32 piece by piece while it inflates
(npunet.io.nifti.VoxelsAsFloat32): the values must be exactly nibabel's get_fdata(dtype=np.float32), whatever
the stored type, byte order, scaling, piece boundaries (a voxel split between two pieces), gzip members,
header extensions or a trailing axis of size 1."""

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from npunet.io import nifti

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _image(dtype, shape=(9, 7, 6), seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        data.flat[:2] = info.min, info.max                   # the extremes, where scaling might overflow
    else:
        data = (rng.standard_normal(shape) * 1000).astype(dtype)
    return data


CASES = [  # stored type, byte order, scl_slope, scl_inter
    (np.int16, "<", 1.0, -1024.0),
    (np.int16, ">", 1.0, 0.0),
    (np.uint8, "<", 2.0, -1000.0),
    (np.int32, "<", 0.5, 3.25),
    (np.int32, ">", 1e-3, -1024.0),
    (np.uint16, "<", 3.0, 0.0),
    (np.int8, "<", np.nan, np.nan),                          # no scaling (nibabel reads slope NaN as none)
    (np.float32, "<", 1.0, 0.0),
    (np.float32, ">", 2.5, -7.0),
    (np.float64, "<", 1.0, -1024.0),
]


def _nifti_bytes(data, order, slope, inter, nifti2=False, extension=False):
    """An uncompressed NIfTI file's bytes holding `data` as stored, in byte order `order`, with these
    scl_slope / scl_inter (nibabel's own writer would rescale the data to them instead)."""
    hdr = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)(endianness=order)
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr.set_qform(AFFINE, 1)
    hdr.set_sform(AFFINE, 1)
    hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    if extension:
        hdr.extensions.append(nib.nifti1.Nifti1Extension(6, b"npunet test extension " * 10))
    for _ in range(2):                                       # the second time with the offset the first gave
        out = io.BytesIO()
        hdr.write_to(out)
        head = out.getvalue()
        hdr.set_data_offset(len(head) + (-len(head)) % 16)
    head += b"\0" * (int(hdr.get_data_offset()) - len(head))
    return head + np.asarray(data, hdr.get_data_dtype()).tobytes(order="F")


@pytest.mark.parametrize("dtype,order,slope,inter", CASES)
@pytest.mark.parametrize("gzip_chunk", [nifti.GZIP_CHUNK, 1003, 21])
def test_read_ct_converts_as_nibabel(tmp_path, monkeypatch, dtype, order, slope, inter, gzip_chunk):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(_image(dtype), order, slope, inter)))
    monkeypatch.setattr(nifti, "GZIP_CHUNK", gzip_chunk)        # pieces of 1003 and 21 bytes: voxels split
    monkeypatch.setattr(nifti.VoxelsAsFloat32, "PIECE", 64 * 1024 if gzip_chunk > 1003 else 24)
    want = nib.load(path).get_fdata(dtype=np.float32)
    if not np.isfinite(want).all():
        pytest.skip("this scaling overflows float32: read_ct refuses it (tests/test_bad_inputs.py)")
    got = nifti.read_ct(path)
    values = np.asarray(got.dataobj)
    assert values.dtype == np.float32 and values.flags.f_contiguous and values.shape == want.shape
    assert np.array_equal(values, want)
    assert np.array_equal(got.affine, nib.load(path).affine)


def test_read_ct_nifti2_extension_members_and_trailing_axis(tmp_path, monkeypatch):
    data = _image(np.int16, shape=(11, 8, 5, 1), seed=3)
    for nifti2 in (False, True):
        path = tmp_path / f"ct{int(nifti2)}.nii.gz"
        blob = _nifti_bytes(data, "<", 1.0, -1024.0, nifti2=nifti2, extension=True)
        cut = len(blob) // 3 + 1                             # two gzip members (as bgzip writes), zero padding
        path.write_bytes(gzip.compress(blob[:cut]) + gzip.compress(blob[cut:]) + b"\0" * 100)
        monkeypatch.setattr(nifti, "GZIP_CHUNK", 1003)
        want = nib.load(path).get_fdata(dtype=np.float32)[..., 0]
        got = nifti.read_ct(path)
        assert got.shape == (11, 8, 5) and np.array_equal(np.asarray(got.dataobj), want)
        assert isinstance(got, nib.Nifti2Image if nifti2 else nib.Nifti1Image)


def test_read_ct_real_cases_as_nibabel(data_dir):
    for case in ("ts_abdomen", "amos_0001", "tsds_s0009"):
        path = data_dir / "imagesTr" / f"{case}_0000.nii.gz"
        assert np.array_equal(np.asarray(nifti.read_ct(path).dataobj),
                              nib.load(path).get_fdata(dtype=np.float32)), case
