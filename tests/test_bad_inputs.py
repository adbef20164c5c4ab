"""The bad-input matrix, continued (issue 11): every class of broken or unusual input ends in a correct
result or in one line on stderr, exit code 2 and no file left behind, for `npunet segment` (NIfTI headers
that lie, images without orientation, DICOM folders with damaged files, sizes that would not fit in
memory), `npunet evaluate` (other grids, labels outside 0..13) and the Python API.

`npunet segment` runs through npunet.cli.main with the fast fake network of test_segment_cli (the checks
all happen before the network); a few tests run the real network on a few slices where the result itself
is what is checked (an assumed orientation must give the labels of the true one)."""

from __future__ import annotations

import gzip
import os
import shutil
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import npunet
from npunet.cli import main
from npunet.errors import InputError, NpunetError, ResourceError
from npunet.io.nifti import read_ct
from test_segment_cli import FakeModel, all_files, fake, fake_labels, run_cli, save, slash, small_ct  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
FIXTURE_WEIGHTS = REPO / "tests" / "fixtures" / "dsconv_eca_unet.npuw"


# ------------------------------------------------------------------------------------------ helpers --

def nifti_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def edit_header(path: Path, **fields) -> Path:
    """Rewrite header fields of a saved NIfTI-1 file in place, bytes only (no nibabel fix-ups)."""
    raw = nifti_bytes(path)
    hdr = nib.Nifti1Header(raw[:348], check=False)
    for key, value in fields.items():
        hdr[key] = value
    raw = hdr.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw, 1) if path.name.endswith(".gz") else raw)
    return path


def ct_file(tmp_path, name="case_0000.nii.gz", data=None, **fields) -> Path:
    path = save(tmp_path / "in" / name, small_ct() if data is None else data)
    return edit_header(path, **fields) if fields else path


def _huge_header(tmp_path, gz: bool):
    path = ct_file(tmp_path, "huge_0000.nii" + (".gz" if gz else ""))
    return edit_header(path, dim=[3, 32767, 32767, 32767, 1, 1, 1, 1])


def _rgb(tmp_path):
    data = np.zeros((6, 5, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    img = nib.Nifti1Image(data, np.eye(4))
    path = tmp_path / "in" / "rgb_0000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _pair_header(tmp_path):
    path = ct_file(tmp_path, "pair_0000.nii")
    return edit_header(path, magic=b"ni1")


def _float_overflow(tmp_path):
    data = small_ct().astype(np.float64)
    data[0, 0, 0] = 1e300                       # finite in float64, Inf in float32
    return save(tmp_path / "in" / "big_0000.nii.gz", data)


def _singular_sform(tmp_path):
    path = ct_file(tmp_path, "sing_0000.nii.gz")
    return edit_header(path, srow_x=[0, 0, 0, 0], srow_y=[0, 1.5, 0, 0], srow_z=[0, 0, 2, 0])


def _broken_link(tmp_path):
    link = tmp_path / "in" / "link_0000.nii.gz"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tmp_path / "in" / "gone.nii.gz")
    return link


def _link_loop(tmp_path):
    link = tmp_path / "in" / "loop_0000.nii.gz"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(link.name)
    return link


def _fifo(tmp_path):
    fifo = tmp_path / "in" / "fifo_0000.nii.gz"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    return fifo


def _empty_file(tmp_path):
    path = tmp_path / "in" / "empty_0000.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


NIFTI_INPUTS = {
    # name: (make the input from tmp_path, words expected in the one-line error)
    "no orientation (codes 0)": (lambda t: ct_file(t, qform_code=0, sform_code=0),
                                 ["no orientation", "--assume-orientation"]),
    "zero voxel size": (lambda t: ct_file(t, sform_code=0, pixdim=[1, 0, 1.5, 2, 1, 1, 1, 1]),
                        ["pixdim[1:4] = [0, 1.5, 2]", "> 0"]),
    "negative voxel size": (lambda t: ct_file(t, pixdim=[1, 1.5, -1.5, 2, 1, 1, 1, 1]), ["pixdim", "-1.5"]),
    "NaN voxel size": (lambda t: ct_file(t, pixdim=[1, 1.5, np.nan, 2, 1, 1, 1, 1]), ["pixdim", "nan"]),
    "complex voxels": (lambda t: save(t / "in" / "cplx_0000.nii.gz", small_ct().astype(np.complex64)),
                       ["complex64 voxels", "real part"]),
    "RGB voxels": (_rgb, ["RGB voxels"]),
    "header claims 32767^3 (uncompressed)": (lambda t: _huge_header(t, False),
                                             ["32767x32767x32767", "truncated", "file has"]),
    "header claims 32767^3 (gzip)": (lambda t: _huge_header(t, True), ["32767x32767x32767", "gzip bytes can hold"]),
    "invalid quaternion": (lambda t: ct_file(t, sform_code=0, quatern_b=0.9, quatern_c=0.9, quatern_d=0.1),
                           ["qform is invalid"]),
    "qfac -2": (lambda t: ct_file(t, sform_code=0, pixdim=[-2, 1.5, 1.5, 2, 1, 1, 1, 1]), ["qfac"]),
    "unknown sform code": (lambda t: ct_file(t, sform_code=9), ["sform_code = 9"]),
    "unknown data type": (lambda t: ct_file(t, datatype=999), ["data type code 999"]),
    "dim[0] = 9": (lambda t: ct_file(t, dim=[9, 12, 10, 8, 1, 1, 1, 1]), ["dim[0] = 9"]),
    "negative dimension": (lambda t: ct_file(t, dim=[3, 12, -10, 8, 1, 1, 1, 1]), ["axis of size 0 or less"]),
    "NaN data offset": (lambda t: ct_file(t, vox_offset=np.nan), ["vox_offset"]),
    "data offset past the end": (lambda t: ct_file(t, vox_offset=1e9), ["truncated"]),
    "scl_inter Inf": (lambda t: ct_file(t, scl_slope=2.0, scl_inter=np.inf), ["scl_inter"]),
    "values beyond float32": (_float_overflow, ["1 Inf"]),
    "integers scaled beyond float32": (lambda t: ct_file(t, scl_slope=1e36), ["Inf voxels"]),
    "NIfTI pair header": (_pair_header, ["not a single-file NIfTI"]),
    "singular sform": (_singular_sform, ["affine is not invertible"]),
    "NaN in the sform": (lambda t: ct_file(t, srow_x=[np.nan, 0, 0, 0]), ["sform", "NaN"]),
    "broken link": (_broken_link, ["no such file"]),
    "link to itself": (_link_loop, ["no such file"]),
    "a pipe": (_fifo, ["neither a file nor a folder"]),
    "empty file": (_empty_file, ["not a readable NIfTI"]),
}


def assert_refused(rc, err, out_dir, words):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("npunet segment: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert all_files(out_dir) == []


@pytest.mark.parametrize("name", list(NIFTI_INPUTS))
def test_bad_nifti_input(tmp_path, capsys, fake, name):
    make, words = NIFTI_INPUTS[name]
    inp = make(tmp_path)
    out_dir = tmp_path / "out"
    rc, _, err = run_cli(capsys, inp, "-o", out_dir / "case.nii.gz", "--quiet", "--statistics", "--preview")
    print(f"\n  {name}: rc {rc}: {err.strip()[:220]}")
    assert_refused(rc, err, out_dir, words)
    assert fake["segment"] == 0


def test_header_lies_cost_no_memory(tmp_path):
    """A header declaring 64 TiB (or the most a small gzip file could hold) is refused before any large
    allocation: the read allocates little more than the file itself."""
    for gz in (False, True):
        path = _huge_header(tmp_path / ("gz" if gz else "raw"), gz)
        tracemalloc.start()
        with pytest.raises(InputError):
            read_ct(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"\n  {path.name}: peak traced allocation {peak / 2**20:.2f} MiB while refusing 64 TiB")
        assert peak < 4 * 2**20


def test_gzip_bomb_beyond_memory(tmp_path, monkeypatch):
    """A consistent but large image (zeros compress 1000:1) is refused before decompressing when it would not
    fit in the memory available, with both numbers in the message."""
    vol = np.zeros((512, 512, 64), np.int16)                 # 32 MiB of zeros, 33 KB gzipped
    path = save(tmp_path / "bomb_0000.nii.gz", vol)
    print(f"\n  {path.stat().st_size:,} bytes on disk for {vol.nbytes / 2**20:.0f} MiB of voxels")
    monkeypatch.setenv("NPUNET_MEMORY_LIMIT", "64M")
    tracemalloc.start()
    with pytest.raises(ResourceError) as info:
        read_ct(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {info.value}\n  peak traced allocation {peak / 2**20:.2f} MiB")
    assert "512x512x64 int16 voxels" in str(info.value) and "64.0 MiB is available" in str(info.value)
    assert peak < 4 * 2**20


def test_memory_limit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUNET_MEMORY_LIMIT", "1K")
    with pytest.raises(ResourceError, match="memory"):
        read_ct(ct_file(tmp_path))
    monkeypatch.setenv("NPUNET_MEMORY_LIMIT", "lots")
    with pytest.raises(ResourceError, match="NPUNET_MEMORY_LIMIT"):
        read_ct(ct_file(tmp_path))


# ----------------------------------------------------------------------------------- orientation --

def test_assume_orientation_is_used_and_the_header_kept(tmp_path, capsys):
    """Without orientation, --assume-orientation LPS makes the pipeline see an LPS affine; the output keeps
    the input's header (codes 0), voxel for voxel on its grid."""
    seen = {}

    def segment_array(volume, affine, model, **kwargs):
        seen["axcodes"] = nib.aff2axcodes(affine)
        return fake_labels(volume)

    def run(*argv):     # stderr without the anatomy line: the fake labels are noise touching every face
        rc = main(["segment", *map(str, argv)], load_model=lambda weights=None: FakeModel(),
                  segment_volume=segment_array)
        out, err = capsys.readouterr()
        return rc, out, "".join(line for line in err.splitlines(True) if "anatomy check" not in line)
    inp = ct_file(tmp_path, qform_code=0, sform_code=0)
    rc, _, err = run(inp, "-o", tmp_path / "out" / "x.nii.gz", "--quiet", "--assume-orientation", "lps")
    assert rc == 0, err
    assert seen["axcodes"] == ("L", "P", "S")
    assert err.strip() == "npunet segment: case: warning: no orientation in the header: assuming LPS " \
                          "(--assume-orientation)"
    out = nib.load(tmp_path / "out" / "x.nii.gz")
    assert int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 0
    assert np.array_equal(np.asarray(out.dataobj), fake_labels(small_ct()))
    # an image with its own orientation keeps it, and says the option was not used
    inp2 = save(tmp_path / "in2" / "ras_0000.nii.gz", small_ct())
    rc, _, err = run(inp2, "-o", slash(tmp_path / "out2"), "--quiet", "--assume-orientation", "LPS")
    assert rc == 0 and seen["axcodes"] == ("R", "A", "S")
    assert "the header gives the orientation RAS; --assume-orientation LPS is not used" in err


@pytest.mark.parametrize("bad", ["RAX", "RRS", "RA", "up"])
def test_assume_orientation_bad_codes(tmp_path, capsys, fake, bad):
    inp = ct_file(tmp_path, qform_code=0, sform_code=0)
    with pytest.raises(SystemExit) as info:
        run_cli(capsys, inp, "-o", tmp_path / "o.nii.gz", "--assume-orientation", bad)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "not an orientation" in err, err


def test_assumed_orientation_gives_the_labels_of_the_true_one(data_dir, tmp_path, capsys):
    """The issue's silent mirror, with the real network: six slices of a real CT, its header's orientation
    removed. Refused without the option; with --assume-orientation set to the true axis codes, the labels
    equal those of the original file; a left-right mirrored assumption changes them."""
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz").slicer[:, :, 50:56]
    truth = "".join(nib.aff2axcodes(src.affine))
    mirrored = {"R": "L", "L": "R"}.get(truth[0], truth[0]) + truth[1:]
    (tmp_path / "in").mkdir()
    nib.save(src, tmp_path / "in" / "orig_0000.nii.gz")
    stripped = nib.Nifti1Image(np.asarray(src.dataobj), None, src.header.copy())
    stripped.header.set_qform(None, code=0)
    stripped.header.set_sform(None, code=0)
    stripped.header.set_zooms(src.header.get_zooms())
    nib.save(stripped, tmp_path / "in" / "bare_0000.nii.gz")
    assert edit_header(tmp_path / "in" / "bare_0000.nii.gz")            # codes stay 0 on disk
    common = ["--weights", FIXTURE_WEIGHTS, "--quiet", "--batch-size", "6"]
    rc, _, err = run_cli(capsys, tmp_path / "in" / "bare_0000.nii.gz", "-o", tmp_path / "refused.nii.gz", *common)
    assert rc == 2 and "no orientation" in err and not (tmp_path / "refused.nii.gz").exists()
    results = {}
    for name, inp, extra in (("orig", "orig_0000.nii.gz", []), ("assumed", "bare_0000.nii.gz", [truth]),
                             ("mirrored", "bare_0000.nii.gz", [mirrored])):
        opt = ["--assume-orientation", *extra] if extra else []
        rc, _, err = run_cli(capsys, tmp_path / "in" / inp, "-o", tmp_path / f"{name}.nii.gz", *common, *opt)
        assert rc == 0, err
        results[name] = np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj)
    differ = float(np.mean(results["mirrored"] != results["orig"]))
    print(f"\n  true orientation {truth}: assumed == original labels: "
          f"{np.array_equal(results['assumed'], results['orig'])}; assuming {mirrored} changes "
          f"{100 * differ:.2f} % of the voxels")
    assert np.array_equal(results["assumed"], results["orig"])
    assert differ > 0


def test_qform_sform_disagreement_is_one_warning(tmp_path, capsys, fake):
    inp = ct_file(tmp_path, qform_code=1, sform_code=1, quatern_b=0.0, quatern_c=0.0, quatern_d=1.0)
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--quiet")
    print("\n  " + err.strip())
    lines = err.strip().splitlines()
    assert rc == 0 and len(lines) == 1 and "qform (LPS) and the sform (RAS) disagree" in lines[0]


def test_third_party_text_never_reaches_stderr(tmp_path, capfd, fake):
    """An input that makes nibabel log ("vox offset not divisible by 16, not SPM compatible", through a
    handler of its own on file descriptor 2, hence capfd) is segmented, and stderr stays empty (--quiet)."""
    path = ct_file(tmp_path, "spm_0000.nii")
    raw = path.read_bytes()
    hdr = nib.Nifti1Header(raw[:348], check=False)
    offset = int(hdr["vox_offset"])
    hdr["vox_offset"] = offset + 4                      # 4 bytes of padding before the voxels
    path.write_bytes(hdr.binaryblock + raw[348:offset] + b"\0" * 4 + raw[offset:])
    assert "not SPM compatible" in nib.Nifti1Header.diagnose_binaryblock(path.read_bytes()[:348])
    rc, _, err = run_cli(capfd, path, "-o", slash(tmp_path / "out"), "--quiet")
    assert rc == 0 and err == "", err
    back = nib.load(tmp_path / "out" / "spm.nii.gz")
    assert np.array_equal(np.asarray(back.dataobj), fake_labels(small_ct()))


# ----------------------------------------------------------------------------------------- DICOM --

def _series(data_dir, tmp_path):
    pytest.importorskip("pydicom")
    dst = tmp_path / "in" / "series"
    shutil.copytree(data_dir / "dicom" / "ts_chest", dst)
    return dst


def _last_slice(folder):
    import pydicom
    return max(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                     .ImagePositionPatient[2]))


def _truncate_last(data_dir, tmp_path, keep):
    folder = _series(data_dir, tmp_path)
    last = _last_slice(folder)
    raw = last.read_bytes()
    last.write_bytes(raw[:keep if keep > 0 else len(raw) + keep])
    return folder


def _set_tag(data_dir, tmp_path, **tags):
    import pydicom
    folder = _series(data_dir, tmp_path)
    f = sorted(folder.iterdir())[5]
    ds = pydicom.dcmread(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # pydicom warns about the invalid values we mean to write
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(f)
    return folder


def _extra_file(data_dir, tmp_path, name, content):
    folder = _series(data_dir, tmp_path)
    (folder / name).write_bytes(content)
    return folder


def _dicom_broken_link(data_dir, tmp_path):
    folder = _series(data_dir, tmp_path)
    (folder / "IM9999").symlink_to(tmp_path / "nowhere")
    return folder


DICOM_INPUTS = {
    "last slice cut in its header": (lambda d, t: _truncate_last(d, t, 400), ["damaged or incomplete image slice"]),
    "last slice cut in its pixels": (lambda d, t: _truncate_last(d, t, -1000), ["no pixel data", "truncated"]),
    "a corrupt file without the magic": (lambda d, t: _extra_file(d, t, "IM0021", os.urandom(100)),
                                         ["IM0021", "not a DICOM file", "damaged slice"]),
    "an empty file": (lambda d, t: _extra_file(d, t, "IM0022", b""), ["IM0022", "not a DICOM file"]),
    "a broken link": (_dicom_broken_link, ["IM9999", "broken link"]),
    "zero pixel spacing": (lambda d, t: _set_tag(d, t, PixelSpacing=[0, 0.9765625]), ["PixelSpacing", "positive"]),
    "NaN rescale slope": (lambda d, t: _set_tag(d, t, RescaleSlope="NaN"), ["RescaleSlope", "finite"]),
    "zero rescale slope": (lambda d, t: _set_tag(d, t, RescaleSlope=0), ["RescaleSlope is 0"]),
    "bad orientation vectors": (lambda d, t: _set_tag(d, t, ImageOrientationPatient=[1, 0, 0, 1, 0, 0]),
                                ["ImageOrientationPatient", "orthogonal"]),
    "other slice size": (lambda d, t: _set_tag(d, t, Rows=256), ["different sizes"]),
    "other slice orientation": (lambda d, t: _set_tag(d, t, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]),
                                ["different orientations"]),
}


@pytest.mark.parametrize("name", list(DICOM_INPUTS))
def test_bad_dicom_input(data_dir, tmp_path, capsys, fake, name):
    make, words = DICOM_INPUTS[name]
    inp = make(data_dir, tmp_path)
    out_dir = tmp_path / "out"
    rc, _, err = run_cli(capsys, inp, "-o", out_dir / "case.nii.gz", "--quiet")
    print(f"\n  {name}: rc {rc}: {err.strip()[:260]}")
    assert_refused(rc, err, out_dir, words)


def test_dicom_folder_with_a_readme_and_a_dicomdir_is_read(data_dir, tmp_path, capsys, fake):
    """Files that are clearly not slices (a README, a DICOMDIR-like non-image object) are passed over."""
    pydicom = pytest.importorskip("pydicom")
    folder = _extra_file(data_dir, tmp_path, "README.txt", b"exported by a scanner")
    ds = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"   # a report
    ds.Modality = "SR"
    for k in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, k)
    ds.save_as(folder / "REPORT")
    rc, _, err = run_cli(capsys, folder, "-o", tmp_path / "out.nii.gz", "--quiet")
    assert rc == 0, err
    assert nib.load(tmp_path / "out.nii.gz").shape == (512, 512, 20)


# ------------------------------------------------------------------------------------------ output --

def test_output_inside_missing_folders_and_too_long_names(tmp_path, capsys, fake):
    inp = ct_file(tmp_path)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "a" / "b" / "c" / "x.nii.gz", "--quiet")
    assert rc == 0 and (tmp_path / "a" / "b" / "c" / "x.labels.json").exists(), err
    long_name = "x" * 250 + ".nii.gz"
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "long" / long_name, "--quiet")
    assert rc == 2 and err.count("\n") == 1 and "file name is" in err and fake["segment"] == 1
    assert all_files(tmp_path / "long") == []


# ----------------------------------------------------------------------------------------- memory --

def test_batch_size_beyond_memory_names_the_batch_that_fits(monkeypatch):
    """--batch-size 100000 is at most the number of slices; when even that does not fit, the error says the
    largest batch that does, before anything is allocated."""
    from npunet.pipeline import batch_memory, segment_array
    net = npunet.load(REPO / "tests" / "fixtures" / "tiny_standard_unet.npuw")
    volume = np.zeros((64, 48, 40), np.float32)
    fixed, per_slice = batch_memory((64, 48, 40), net.preprocessing, net.spec)
    monkeypatch.setenv("NPUNET_MEMORY_LIMIT", str(fixed + 10 * per_slice + 1))
    tracemalloc.start()
    with pytest.raises(ResourceError) as info:
        segment_array(volume, np.eye(4), net, batch_size=100000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"\n  {info.value}\n  peak traced allocation {peak / 2**20:.2f} MiB")
    assert "40 slices at a time" in str(info.value) and "use a batch size of 10 or less" in str(info.value)
    assert peak < 2**20
    labels = segment_array(volume, np.eye(4), net, batch_size=10, postprocess=False)
    assert labels.shape == volume.shape


def test_extreme_aspect_ratio_is_refused_not_allocated(monkeypatch):
    """A 60000x1 slice pads to a 60000x60000 square (14 GB per slice): refused with the numbers."""
    from npunet.pipeline import segment_array
    monkeypatch.setenv("NPUNET_MEMORY_LIMIT", "8G")
    net = npunet.load(REPO / "tests" / "fixtures" / "tiny_standard_unet.npuw")
    with pytest.raises(ResourceError, match="too large for this machine"):
        segment_array(np.zeros((60000, 1, 3), np.float32), np.eye(4), net, batch_size=1)


def test_batch_size_option_values(tmp_path, capsys, fake):
    inp = ct_file(tmp_path)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "o.nii.gz", "--quiet", "--batch-size", "100000")
    assert rc == 0, err                     # capped to the 8 slices: nothing to refuse
    for bad in ("0", "-3"):
        rc, _, err = run_cli(capsys, inp, "-o", tmp_path / f"o{bad}.nii.gz", "--quiet", "--batch-size", bad)
        assert rc == 2 and err.count("\n") == 1 and "--batch-size" in err


def test_weights_that_overflow_stop_the_run(tmp_path):
    """Finite but absurd weights make the logits overflow: an error, never labels argmaxed from NaN."""
    from npunet.pipeline import segment_array
    from npunet.weights import read_weights, save_weights
    header, tensors = read_weights(REPO / "tests" / "fixtures" / "tiny_standard_unet.npuw")
    tensors = {k: (v * 1e30 if k.endswith("conv.weight") else v) for k, v in tensors.items()}
    tensors["head.weight"] = np.full_like(tensors["head.weight"], 3e38)
    path = save_weights(tmp_path / "w.npuw", header["spec"], tensors, header["labels"], header["preprocessing"])
    with pytest.raises(NpunetError, match="NaN or Inf logits"):
        segment_array(np.random.default_rng(0).normal(0, 300, (32, 32, 4)).astype(np.float32), np.eye(4),
                      npunet.load(path))


# --------------------------------------------------------------------------------------- evaluate --

def label_file(path: Path, data, affine=None, qcode=1, scode=1, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=qcode)
    img.set_sform(img.affine, code=scode)
    nib.save(img, path)
    return path


def _labels():
    gt = np.zeros((10, 9, 8), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    gt[6:9, 1:4, 1:5] = 13
    return gt


EVALUATE_INPUTS = {
    # name: (make (pred, gt) in tmp_path, words in the error)
    "mirrored axis": (lambda t: (label_file(t / "p.nii.gz", _labels(), np.diag([-1.5, 1.5, 2, 1])),
                                 label_file(t / "g.nii.gz", _labels())), ["axis 0", "mirrored"]),
    "other spacing": (lambda t: (label_file(t / "p.nii.gz", _labels(), np.diag([1.0, 1.0, 2, 1])),
                                 label_file(t / "g.nii.gz", _labels())), ["voxels of 1 x 1 x 2 mm", "1.5 x 1.5 x 2"]),
    "shifted origin": (lambda t: (label_file(t / "p.nii.gz", _labels(), np.array(
        [[1.5, 0, 0, 10], [0, 1.5, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])), label_file(t / "g.nii.gz", _labels())),
        ["origins", "10 mm apart"]),
    "prediction without orientation": (lambda t: (label_file(t / "p.nii.gz", _labels(), qcode=0, scode=0),
                                                  label_file(t / "g.nii.gz", _labels())), ["no orientation"]),
    "other shape": (lambda t: (label_file(t / "p.nii.gz", _labels()[:, :, :7]), label_file(t / "g.nii.gz", _labels())),
                    ["(10, 9, 7)", "(10, 9, 8)"]),
    "negative label": (lambda t: (label_file(t / "p.nii.gz", _labels().astype(np.int16) - 1, dtype=np.int16),
                                  label_file(t / "g.nii.gz", _labels())), ["label values -1..12", "outside"]),
    "label 14": (lambda t: (label_file(t / "p.nii.gz", _labels()), label_file(t / "g.nii.gz", _labels() + 1)),
                 ["label values 1..14", "0..13"]),
    "label 200": (lambda t: (label_file(t / "p.nii.gz", np.where(_labels() == 1, 200, 0)),
                             label_file(t / "g.nii.gz", _labels())), ["label values 0..200"]),
    "fractional labels": (lambda t: (label_file(t / "p.nii.gz", _labels() * 0.5, dtype=np.float32),
                                     label_file(t / "g.nii.gz", _labels())), ["not whole numbers", "0.5"]),
    "NaN labels": (lambda t: (label_file(t / "p.nii.gz", np.where(_labels() == 1, np.nan, 0), dtype=np.float32),
                              label_file(t / "g.nii.gz", _labels())), ["NaN"]),
    "zero voxel size in the ground truth": (lambda t: (label_file(t / "p.nii.gz", _labels()), edit_header(
        label_file(t / "g.nii.gz", _labels()), pixdim=[1, 0, 1.5, 2, 1, 1, 1, 1])), ["pixdim"]),
    "a folder and a file": (lambda t: ((t / "folder").mkdir() or t / "folder", label_file(t / "g.nii.gz", _labels())),
                            ["two files or two folders"]),
}


@pytest.mark.parametrize("name", list(EVALUATE_INPUTS))
def test_bad_evaluate_input(tmp_path, capsys, name):
    pred, gt = EVALUATE_INPUTS[name][0](tmp_path)
    rc = main(["evaluate", str(pred), str(gt)])
    out, err = capsys.readouterr()
    print(f"\n  {name}: rc {rc}: {err.strip()[:240]}")
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("npunet evaluate: error: "), err
    for w in EVALUATE_INPUTS[name][1]:
        assert w in err, (w, err)


def test_evaluate_json_path_is_checked_before_scoring(tmp_path, capsys):
    gt = label_file(tmp_path / "g.nii.gz", _labels())
    original = gt.read_bytes()
    for target, words in ((gt, "must be a .json file name"), (tmp_path, "must be a .json file name")):
        rc = main(["evaluate", str(gt), str(gt), "--json", str(target)])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and err.count("\n") == 1 and words in err, err
    assert gt.read_bytes() == original
    rc = main(["evaluate", str(gt), str(gt), "--json", str(tmp_path / "r.json")])
    assert rc == 0 and (tmp_path / "r.json").exists()
    # a missing folder is created, as for every output of npunet (npunet.io.paths)
    rc = main(["evaluate", str(gt), str(gt), "--json", str(tmp_path / "no" / "r.json")])
    assert rc == 0 and (tmp_path / "no" / "r.json").exists()


def test_evaluate_float_labels_that_are_whole_numbers_are_scored(tmp_path, capsys):
    pred = label_file(tmp_path / "p.nii.gz", _labels(), dtype=np.float32)
    gt = label_file(tmp_path / "g.nii.gz", _labels())
    assert main(["evaluate", str(pred), str(gt)]) == 0
    assert "liver" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- Python API --

def test_python_api_refusals_and_assumption(fake):
    data = small_ct()
    with pytest.raises(InputError, match="no orientation"):
        npunet.segment_image(nib.Nifti1Image(data, None), model=FakeModel(), segment_volume=fake.inject["segment_volume"])
    with pytest.warns(UserWarning, match="no orientation in the header: assuming RAS"):
        out = npunet.segment_image(nib.Nifti1Image(data, None), model=FakeModel(), assume_orientation="RAS",
                                   segment_volume=fake.inject["segment_volume"])
    assert np.array_equal(np.asarray(out.dataobj), fake_labels(data))
    with pytest.raises(InputError, match="complex128"):
        npunet.segment_image(nib.Nifti1Image(data.astype(np.complex128), np.eye(4)), model=FakeModel(), segment_volume=fake.inject["segment_volume"])
    with pytest.raises(InputError, match="not a nibabel image"):
        npunet.segment_image(data, model=FakeModel(), segment_volume=fake.inject["segment_volume"])
    with pytest.raises(NpunetError, match="not an orientation"):
        npunet.segment_image(nib.Nifti1Image(data, None), model=FakeModel(), assume_orientation="XYZ",
                             segment_volume=fake.inject["segment_volume"])
