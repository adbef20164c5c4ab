"""Input/output: NIfTI validation (one-line errors naming the file), the label writer (exact grid, atomic,
refusals), the DICOM reader against the same pixels stored as NIfTI, and the INPUT -> OUTPUT job planner."""

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet.errors import InputError
from npunet.io import dicom as dicom_mod
from npunet.io.cases import Job, case_name, plan_jobs
from npunet.io.dicom import read_dicom_series
from npunet.io.nifti import check_output_path, labels_image, read_ct, validate_image, write_labels
from npunet.io.validate import hu_range_warning
from npunet.labels import LABELS


def save(tmp_path, name, data, affine=None, dtype=None):
    img = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype),
                          np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    path = tmp_path / name
    nib.save(img, path)
    return path


def ct_like(shape=(8, 9, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape).astype(np.int16)


def assert_one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    for w in words:
        assert str(w).lower() in msg.lower(), f"{w!r} not in {msg!r}"
    print(f"\n  InputError: {msg}")


# ------------------------------------------------------------------------------------------ read_ct --

def test_read_ct_real_case(data_dir):
    path = data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz"
    img = read_ct(path)
    raw = nib.load(path)
    assert img.shape == raw.shape == (122, 101, 112)
    assert isinstance(img.dataobj, np.ndarray) and img.dataobj.dtype == np.float32
    assert np.array_equal(img.get_fdata(dtype=np.float32), raw.get_fdata(dtype=np.float32))
    assert np.array_equal(img.affine, raw.affine)
    assert int(img.header["qform_code"]) == int(raw.header["qform_code"])
    assert int(img.header["sform_code"]) == int(raw.header["sform_code"])
    assert Path(img.get_filename()) == path
    assert hu_range_warning(img.get_fdata(dtype=np.float32)) is None


def test_read_ct_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_ct(tmp_path / "nope.nii.gz")
    assert_one_line_error(e, "nope.nii.gz", "no such file")


def test_read_ct_folder(tmp_path):
    with pytest.raises(InputError) as e:
        read_ct(tmp_path)
    assert_one_line_error(e, "folder")


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii", "garbage.mgz"])
def test_read_ct_garbage(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, name, "not a")


def test_read_ct_gzip_of_garbage(tmp_path):
    path = tmp_path / "gz_garbage.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 40))
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "gz_garbage.nii.gz")


def test_read_ct_truncated_gzip(tmp_path):
    good = save(tmp_path, "good.nii.gz", ct_like((40, 40, 30)))
    blob = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError) as e:
        read_ct(bad)
    assert_one_line_error(e, "truncated.nii.gz", "truncated")


def test_read_ct_truncated_uncompressed(tmp_path):
    good = save(tmp_path, "good.nii", ct_like((40, 40, 30)))
    blob = good.read_bytes()
    bad = tmp_path / "short.nii"
    bad.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(InputError) as e:
        read_ct(bad)
    assert_one_line_error(e, "short.nii")


def test_read_ct_2d(tmp_path):
    path = save(tmp_path, "flat.nii.gz", ct_like((8, 9)))
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "flat.nii.gz", "2D")


def test_read_ct_4d_several_volumes(tmp_path):
    path = save(tmp_path, "fourd.nii.gz", ct_like((8, 9, 6, 2)))
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "fourd.nii.gz", "4D", "(8, 9, 6, 2)")


def test_read_ct_4d_singleton_is_squeezed(tmp_path):
    data = ct_like((8, 9, 6, 1))
    path = save(tmp_path, "single.nii.gz", data)
    img = read_ct(path)
    assert img.shape == (8, 9, 6)
    assert np.array_equal(img.get_fdata(), data[..., 0])
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1


def test_read_ct_zero_axis(tmp_path):
    path = save(tmp_path, "empty.nii.gz", np.zeros((8, 0, 6), np.int16))
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "empty.nii.gz", "size 0")


def test_read_ct_nan_and_inf(tmp_path):
    data = ct_like().astype(np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    path = save(tmp_path, "holes.nii.gz", data)
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "holes.nii.gz", "3 NaN", "1 Inf")


def test_validate_image_in_memory():
    data = ct_like()
    img = nib.Nifti1Image(data, np.eye(4))
    out = validate_image(img)
    assert out.get_fdata().dtype == np.float64 and np.array_equal(out.get_fdata(), data)
    with pytest.raises(InputError):
        validate_image(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)))


@pytest.mark.parametrize("lo,hi,expect", [
    (-1024, 3000, None),
    (-1000, 1500, None),
    (0.0, 1.0, "normalised"),
    (-1.0, 1.0, "normalised"),
    (-50, 80, "no bone"),
    (0, 4095, "intercept"),
    (-1024, 60000, "beyond"),
    (-32768, 3000, "beyond"),
])
def test_hu_range_warning(lo, hi, expect):
    data = np.linspace(lo, hi, 1000, dtype=np.float32)
    msg = hu_range_warning(data)
    print(f"\n  range [{lo}, {hi}]: {msg}")
    if expect is None:
        assert msg is None
    else:
        assert expect in msg and "\n" not in msg and f"{lo:.4g}" in msg


# ------------------------------------------------------------------------------------- write_labels --

def test_write_labels_keeps_grid_and_writes_sidecar(tmp_path, data_dir):
    src = data_dir / "imagesTr" / "ts_chest_0000.nii.gz"
    like = read_ct(src)
    labels = np.asarray(nib.load(data_dir / "labelsTr" / "ts_chest.nii.gz").dataobj)
    out = tmp_path / "sub" / "ts_chest.nii.gz"
    write_labels(labels, like, out)
    back = nib.load(out)
    raw = nib.load(src)
    assert back.shape == raw.shape and back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, raw.affine)
    assert np.array_equal(back.header.get_qform(), raw.header.get_qform())
    assert np.array_equal(back.header.get_sform(), raw.header.get_sform())
    for key in ("qform_code", "sform_code", "pixdim", "xyzt_units"):
        assert np.array_equal(back.header[key], raw.header[key]), key
    assert np.isnan(back.header["scl_slope"]) or back.header["scl_slope"] in (0, 1)
    assert len(back.header.extensions) == 0  # the input's Caret label table (another model's) is not copied
    assert np.array_equal(np.asarray(back.dataobj), labels)
    names = json.loads((tmp_path / "sub" / "ts_chest.labels.json").read_text())
    assert names == {str(k): v for k, v in LABELS.items()}
    assert sorted(p.name for p in out.parent.iterdir()) == ["ts_chest.labels.json", "ts_chest.nii.gz"]


def test_write_labels_refusals(tmp_path):
    src = save(tmp_path, "case.nii.gz", ct_like())
    like = read_ct(src)
    labels = np.zeros(like.shape, np.uint8)
    with pytest.raises(InputError) as e:
        write_labels(labels, like, src)
    assert_one_line_error(e, "is the input")
    # the same file through another spelling and through a symbolic link
    with pytest.raises(InputError):
        write_labels(labels, like, tmp_path / "." / "case.nii.gz")
    (tmp_path / "link.nii.gz").symlink_to(src)
    with pytest.raises(InputError):
        write_labels(labels, like, tmp_path / "link.nii.gz", overwrite=True)
    out = tmp_path / "out.nii.gz"
    write_labels(labels, like, out)
    with pytest.raises(InputError) as e:
        write_labels(labels + 1, like, out)
    assert_one_line_error(e, "exists", "overwrite")
    write_labels(labels + 1, like, out, overwrite=True)
    assert np.asarray(nib.load(out).dataobj).max() == 1
    with pytest.raises(InputError) as e:
        write_labels(labels, like, tmp_path / "out.img")
    assert_one_line_error(e, ".nii.gz")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError) as e:
        write_labels(labels, like, blocker / "out.nii.gz")
    assert_one_line_error(e, "afile")
    with pytest.raises(ValueError):
        write_labels(np.zeros((2, 2, 2), np.uint8), like, tmp_path / "wrong_shape.nii.gz")
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["afile", "case.nii.gz", "link.nii.gz", "out.labels.json", "out.nii.gz"], leftovers


def unwritable_folder(tmp_path) -> Path:
    """A folder we cannot create files in: a chmod 0o500 folder, or /proc/self when running as root."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        probe.write_text("x")
        probe.unlink()
    except OSError:
        return folder
    folder.chmod(0o700)
    proc = Path("/proc/self")
    try:
        (proc / "npunet-probe").write_text("x")
    except OSError:
        return proc
    pytest.skip("no unwritable folder available (running as root without /proc)")


def test_write_labels_unwritable_folder(tmp_path):
    like = read_ct(save(tmp_path, "case.nii.gz", ct_like()))
    folder = unwritable_folder(tmp_path)
    try:
        with pytest.raises(InputError) as e:
            write_labels(np.zeros(like.shape, np.uint8), like, folder / "out.nii.gz")
        assert_one_line_error(e, "not writable")
        if folder != Path("/proc/self"):
            assert list(folder.iterdir()) == []
    finally:
        if folder != Path("/proc/self"):
            folder.chmod(0o700)


def test_labels_image_for_other_codes():
    data = ct_like()
    img = nib.Nifti1Image(data, np.diag([-2.0, 3.0, 4.0, 1.0]))
    img.set_qform(img.affine, code=2)
    img.set_sform(np.diag([-2.0, 3.0, 4.0, 1.0]), code=4)
    out = labels_image(np.ones(data.shape, np.uint8), img)
    assert int(out.header["qform_code"]) == 2 and int(out.header["sform_code"]) == 4
    assert out.get_data_dtype() == np.uint8 and np.array_equal(out.affine, img.affine)


def test_check_output_path_accepts_new_nested_folder(tmp_path):
    assert check_output_path(tmp_path / "a" / "b" / "x.nii.gz") == tmp_path / "a" / "b" / "x.nii.gz"
    assert not (tmp_path / "a").exists()  # checking creates nothing


# -------------------------------------------------------------------------------------------- DICOM --

def test_dicom_matches_nifti(data_dir):
    pytest.importorskip("pydicom")
    dcm = read_dicom_series(data_dir / "dicom" / "ts_chest")
    nii = nib.load(data_dir / "imagesTr" / "ts_chest_0000.nii.gz")
    print(f"\n  DICOM: shape {dcm.shape}, axcodes {nib.aff2axcodes(dcm.affine)}; "
          f"NIfTI: shape {nii.shape}, axcodes {nib.aff2axcodes(nii.affine)}")
    print("  DICOM affine (RAS):\n" + np.array2string(dcm.affine, precision=4))
    print("  NIfTI affine:\n" + np.array2string(nii.affine, precision=4))
    a, b = nib.as_closest_canonical(dcm), nib.as_closest_canonical(nii)
    assert nib.aff2axcodes(a.affine) == nib.aff2axcodes(b.affine) == ("R", "A", "S")
    va, vb = a.get_fdata(dtype=np.float32), b.get_fdata(dtype=np.float32)
    diff = float(np.abs(va - vb).max())
    aff = float(np.abs(a.affine - b.affine).max())
    print(f"  after as_closest_canonical: shapes {va.shape} {vb.shape}, max |voxel diff| {diff} HU, "
          f"max |affine diff| {aff:.2e} mm, HU range {va.min()}..{va.max()}")
    assert va.shape == vb.shape
    assert diff == 0.0
    assert aff < 1e-3
    assert dcm.get_data_dtype() == np.float32
    assert int(dcm.header["qform_code"]) == 1 and int(dcm.header["sform_code"]) == 1


def copy_series(data_dir, tmp_path, name="series"):
    dst = tmp_path / name
    shutil.copytree(data_dir / "dicom" / "ts_chest", dst)
    return dst


def test_dicom_two_series(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = copy_series(data_dir, tmp_path)
    files = sorted(folder.iterdir())
    for f in files[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.save_as(f)
    with pytest.raises(InputError) as e:
        read_dicom_series(folder)
    assert_one_line_error(e, "2 DICOM series", "1.2.3.4.5 (3 files", "(17 files")


def test_dicom_missing_slice(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = copy_series(data_dir, tmp_path)
    by_z = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                        .ImagePositionPatient[2]))
    by_z[7].unlink()
    with pytest.raises(InputError) as e:
        read_dicom_series(folder)
    assert_one_line_error(e, "uneven slice spacing", "4.000 mm", "1 slice(s) missing")


def test_dicom_duplicate_position(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = copy_series(data_dir, tmp_path)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(InputError) as e:
        read_dicom_series(folder)
    assert_one_line_error(e, "same position")


def test_dicom_without_pydicom(data_dir, monkeypatch):
    monkeypatch.setattr(dicom_mod, "_import_pydicom", lambda: None)
    with pytest.raises(InputError) as e:
        read_dicom_series(data_dir / "dicom" / "ts_chest")
    assert_one_line_error(e, "pip install 'npunet[dicom]'", "pydicom pylibjpeg pylibjpeg-openjpeg")


def test_dicom_folder_without_dicom(tmp_path):
    pytest.importorskip("pydicom")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as e:
        read_dicom_series(tmp_path)
    assert_one_line_error(e, "no DICOM files")


# ------------------------------------------------------------------------------------------- cases --

def test_case_name():
    assert case_name("a/b/liver_7_0000.nii.gz") == "liver_7"
    assert case_name("x.nii") == "x"
    assert case_name("FLARE_0001_0000.nii.gz") == "FLARE_0001"
    assert case_name("ct_0001.nii.gz") == "ct_0001"  # only the CT channel suffix _0000 is dropped


def test_plan_single_file(tmp_path):
    src = save(tmp_path, "pat_0000.nii.gz", ct_like())
    assert plan_jobs(src, tmp_path / "o.nii.gz") == [Job("pat", src, tmp_path / "o.nii.gz", "nifti")]
    outdir = tmp_path / "existing"
    outdir.mkdir()
    assert plan_jobs(src, outdir)[0].output == outdir / "pat.nii.gz"
    assert plan_jobs(src, str(tmp_path / "new") + "/")[0].output == tmp_path / "new" / "pat.nii.gz"


def test_plan_folder_of_cases(tmp_path):
    inp = tmp_path / "imagesTs"
    inp.mkdir()
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "c.nii"):
        save(inp, name, ct_like())
    (inp / "README.txt").write_text("notes")
    jobs = plan_jobs(inp, tmp_path / "pred")
    assert [(j.case, j.input.name, j.output) for j in jobs] == [
        ("a", "a_0000.nii.gz", tmp_path / "pred" / "a.nii.gz"),
        ("b", "b_0000.nii.gz", tmp_path / "pred" / "b.nii.gz"),
        ("c", "c.nii", tmp_path / "pred" / "c.nii.gz")]
    with pytest.raises(InputError) as e:
        plan_jobs(inp, tmp_path / "pred.nii.gz")
    assert_one_line_error(e, "must be a folder")
    save(inp, "a.nii.gz", ct_like())
    with pytest.raises(InputError) as e:
        plan_jobs(inp, tmp_path / "pred")
    assert_one_line_error(e, "two files for case 'a'")


def test_plan_dicom_folder(data_dir, tmp_path):
    folder = data_dir / "dicom" / "ts_chest"
    assert plan_jobs(folder, tmp_path / "x.nii.gz") == [Job("ts_chest", folder, tmp_path / "x.nii.gz", "dicom")]
    assert plan_jobs(folder, tmp_path)[0].output == tmp_path / "ts_chest.nii.gz"


def test_plan_bad_inputs(data_dir, tmp_path):
    with pytest.raises(InputError) as e:
        plan_jobs(tmp_path / "missing", tmp_path / "o.nii.gz")
    assert_one_line_error(e, "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as e:
        plan_jobs(empty, tmp_path / "o")
    assert_one_line_error(e, "empty folder")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("a")
    with pytest.raises(InputError) as e:
        plan_jobs(junk, tmp_path / "o")
    assert_one_line_error(e, "no NIfTI", "or DICOM")
    mixed = copy_series(data_dir, tmp_path, "mixed")
    save(mixed, "x_0000.nii.gz", ct_like())
    with pytest.raises(InputError) as e:
        plan_jobs(mixed, tmp_path / "o")
    assert_one_line_error(e, "both NIfTI (1) and DICOM (20)")
    single = next(iter(sorted((data_dir / "dicom" / "ts_chest").iterdir())))
    with pytest.raises(InputError) as e:
        plan_jobs(single, tmp_path / "o.nii.gz")
    assert_one_line_error(e, "single DICOM file")
    other = tmp_path / "scan.mha"
    other.write_bytes(b"x" * 10)
    with pytest.raises(InputError) as e:
        plan_jobs(other, tmp_path / "o.nii.gz")
    assert_one_line_error(e, "not a NIfTI")
    assert os.listdir(tmp_path / "empty") == []


def test_read_ct_multi_member_gzip(tmp_path):
    """bgzip-style files (several gzip members one after another) read like single-member ones."""
    vol = np.random.default_rng(5).integers(-1000, 1000, (20, 18, 7)).astype(np.int16)
    raw = nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0" * 16)
    img = read_ct(path)
    assert np.array_equal(img.get_fdata(dtype=np.float32), vol.astype(np.float32))
    assert Path(img.get_filename()) == path
    path.write_bytes(gzip.compress(raw)[:-100])                       # truncated
    with pytest.raises(InputError, match="truncated"):
        read_ct(path)


# ------------------------------------------------------------------ gzip trailers: inputs read whole --

def _gz_ct(tmp_path):
    """A small gzipped CT, its bytes, and the volume it holds."""
    vol = ct_like((30, 28, 12), seed=7)
    path = save(tmp_path, "whole.nii.gz", vol)
    return path.read_bytes(), vol


@pytest.mark.parametrize("cut", [1, 4, 7, 8])
def test_read_ct_refuses_a_stream_cut_inside_its_trailer(tmp_path, cut):
    """The 8-byte gzip trailer (CRC-32, length) cut short: every voxel decompresses, but the file is not
    whole; it used to be read (and segmented) with its CRC never checked."""
    blob, vol = _gz_ct(tmp_path)
    bad = tmp_path / f"cut{cut}.nii.gz"
    bad.write_bytes(blob[:-cut])
    with pytest.raises(InputError) as e:
        read_ct(bad)
    assert_one_line_error(e, bad.name, "truncated gzip", "trailer" if cut < 8 else "stops")
    ok = tmp_path / "ok.nii.gz"
    ok.write_bytes(blob)
    assert np.array_equal(read_ct(ok).get_fdata(dtype=np.float32), vol.astype(np.float32))


@pytest.mark.parametrize("field,offset,words", [("CRC-32", -8, ["CRC-32", "does not match"]),
                                                ("length", -4, ["length", "does not match"])])
def test_read_ct_refuses_a_corrupted_trailer(tmp_path, field, offset, words):
    blob, _ = _gz_ct(tmp_path)
    damaged = bytearray(blob)
    damaged[offset] ^= 0x5A
    bad = tmp_path / f"bad_{field}.nii.gz"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(InputError) as e:
        read_ct(bad)
    assert_one_line_error(e, bad.name, "corrupt gzip", *words)


def test_read_ct_refuses_a_flipped_bit_in_the_compressed_data(tmp_path):
    blob, _ = _gz_ct(tmp_path)
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0x01
    bad = tmp_path / "flipped.nii.gz"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(InputError) as e:
        read_ct(bad)
    assert_one_line_error(e, bad.name, "corrupt")


def test_read_ct_multi_member_trailers_are_checked(tmp_path):
    """Every member of a bgzip-style file ends in its own trailer, and each is checked."""
    vol = np.random.default_rng(6).integers(-1000, 1000, (20, 18, 7)).astype(np.int16)
    raw = nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes()
    first, second = gzip.compress(raw[:1000]), gzip.compress(raw[1000:])
    path = tmp_path / "multi.nii.gz"
    damaged = bytearray(first)
    damaged[-6] ^= 0x01                      # the first member's CRC
    path.write_bytes(bytes(damaged) + second)
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "multi.nii.gz", "CRC-32")
    path.write_bytes(first + second[:-3])     # the last member's trailer cut
    with pytest.raises(InputError) as e:
        read_ct(path)
    assert_one_line_error(e, "multi.nii.gz", "trailer")


def test_voxels_finite_by_construction_skip_only_safe_checks(tmp_path):
    """check_voxels is skipped only when no voxel can be NaN or Inf once read: integers stored and a scaling
    that stays within float32 (read from the proxy: nibabel clears the loaded header's scl_slope)."""
    from npunet.io.nifti import _finite_by_construction
    ints = save(tmp_path, "i.nii.gz", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    assert _finite_by_construction(nib.load(ints).dataobj)
    img = nib.load(ints)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    assert _finite_by_construction(nib.load(tmp_path / "scaled.nii.gz").dataobj)
    img.header.set_slope_inter(1e36, 0.0)                  # 32767 * 1e36 is Inf in float32
    nib.save(img, tmp_path / "huge.nii.gz")
    assert not _finite_by_construction(nib.load(tmp_path / "huge.nii.gz").dataobj)
    floats = save(tmp_path, "f.nii.gz", np.zeros((2, 3, 4), np.float32))
    assert not _finite_by_construction(nib.load(floats).dataobj)
    assert _finite_by_construction(np.zeros(3, np.uint8)) and not _finite_by_construction(np.zeros(3, np.float64))
