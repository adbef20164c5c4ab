"""`npunet segment` end to end through npunet.cli.main, with a fake fast network: every bad input gives
one line on stderr, a non-zero exit and no file left; the output sits on the input's exact grid for RAS,
LAS and LPS inputs; folder mode carries on past a bad case. The real network is exercised at the end
(skipped until npunet.pipeline and a weights file are available)."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet import api, case
from npunet.cli import main
from npunet.errors import InputError
from npunet.labels import LABELS

REPO = Path(__file__).resolve().parent.parent


class FakeModel:
    labels = dict(LABELS)
    preprocessing = {}


def fake_labels(volume):
    """A voxel-wise rule, so the output can be checked voxel for voxel against the input file."""
    return (np.asarray(volume > 100, np.uint8) + np.asarray(volume > 400, np.uint8)).astype(np.uint8)


class Fake(dict):
    """Call counts ("load", "segment") of the stand-ins, and the stand-ins themselves (`inject`): the arguments
    npunet.cli.main, npunet.api.segment and npunet.segment_many take for them."""

    def __init__(self):
        super().__init__(load=0, segment=0)

        def load_model(weights=None):
            self["load"] += 1
            return FakeModel()

        def segment_volume(volume, affine, model, batch_size=8, postprocess=True, progress=None, timings=None,
                           tta=False):
            self["segment"] += 1
            n = volume.shape[2]
            for start in range(0, n, batch_size):
                if progress:
                    progress(min(start + batch_size, n), n)
            return fake_labels(volume)
        self.inject = {"load_model": load_model, "segment_volume": segment_volume}


INJECTED: dict = {}     # what run_cli gives `npunet segment` while the fake fixture is active


@pytest.fixture
def fake():
    """Fast stand-ins for loading the weights and segmenting a volume, given to the command as arguments
    (npunet.cli.main(argv, load_model=..., segment_volume=...)); records the calls."""
    calls = Fake()
    INJECTED.update(calls.inject)
    yield calls
    INJECTED.clear()


def run_cli(capsys, *argv, anatomy=False):
    """(exit code, stdout, stderr) of `npunet segment ARGV` with the active stand-ins. The fake network's labels
    are noise that touches every face of the image, so the anatomy checks' warning line (tested in
    tests/test_anatomy.py) is left out of stderr unless anatomy=True."""
    rc = main(["segment", *map(str, argv)], **INJECTED)
    captured = capsys.readouterr()
    err = captured.err
    if not anatomy:
        err = "".join(line for line in err.splitlines(keepends=True) if ": warning: anatomy check: " not in line)
    return rc, captured.out, err


def save(path, data, affine=None, qcode=1, scode=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=qcode)
    img.set_sform(img.affine, code=scode)
    nib.save(img, path)
    return path


def small_ct(seed=0, shape=(12, 10, 8)):
    return np.random.default_rng(seed).integers(-1024, 1200, size=shape).astype(np.int16)


def slash(folder: Path) -> str:
    """A folder as OUTPUT, spelled with a trailing '/' (it need not exist yet)."""
    return str(folder) + os.sep


def all_files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------- basics --

def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--weights", "--threads", "--batch-size", "--no-postprocess", "--overwrite", "--statistics",
                 "--preview", "--quiet", ".statistics.csv", ".statistics.json", ".preview.png", ".labels.json",
                 "--output-type", "dicom-seg", "rtstruct", "--split", "--organs", "--report", ".report.json",
                 "npunet verify"):
        assert flag in text, flag


@pytest.mark.parametrize("codes,qcode,scode", [("RAS", 1, 1), ("LAS", 1, 1), ("LPS", None, None)])
def test_output_geometry_equals_input(data_dir, tmp_path, capsys, fake, codes, qcode, scode):
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(src.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    img = src.as_reoriented(ornt)  # nibabel leaves qform 0 / sform 2 here; the first two set 1 / 1
    if qcode is not None:
        img.set_qform(img.affine, code=qcode)
        img.set_sform(img.affine, code=scode)
    inp = tmp_path / "in" / f"abd_{codes}_0000.nii.gz"
    inp.parent.mkdir()
    nib.save(img, inp)
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--quiet")
    assert rc == 0, err
    out = tmp_path / "out" / f"abd_{codes}.nii.gz"
    back, ref = nib.load(out), nib.load(inp)
    print(f"\n  {codes}: axcodes {nib.aff2axcodes(back.affine)}, shape {back.shape}, "
          f"qform/sform codes {int(back.header['qform_code'])}/{int(back.header['sform_code'])}")
    assert nib.aff2axcodes(back.affine) == tuple(codes)
    assert back.shape == ref.shape and back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, ref.affine)
    for key in ("qform_code", "sform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d",
                "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"):
        assert np.array_equal(back.header[key], ref.header[key]), key
    assert np.array_equal(np.asarray(back.dataobj), fake_labels(ref.get_fdata(dtype=np.float32)))
    assert all_files(tmp_path / "out") == [f"abd_{codes}.labels.json", f"abd_{codes}.nii.gz"]


def test_statistics_preview_and_progress(data_dir, tmp_path, capsys, fake):
    inp = data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz"
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "res.nii.gz", "--statistics", "--preview",
                         "--batch-size", "16")
    assert rc == 0, err
    assert all_files(tmp_path) == ["res.labels.json", "res.nii.gz", "res.preview.png", "res.statistics.csv",
                                   "res.statistics.json"]
    assert (tmp_path / "res.preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "liver" in (tmp_path / "res.statistics.csv").read_text()
    for stage in ("loading weights", "reading", "segmenting: slice 112/112", "wrote", "done in"):
        assert stage in err, stage
    print("\n" + err)


def test_dicom_folder_input(data_dir, tmp_path, capsys, fake):
    pytest.importorskip("pydicom")
    rc, _, err = run_cli(capsys, data_dir / "dicom" / "ts_chest", "-o", tmp_path, "--quiet")
    assert rc == 0, err
    out = nib.load(tmp_path / "ts_chest.nii.gz")
    from npunet.io.dicom import read_dicom_series
    ref = read_dicom_series(data_dir / "dicom" / "ts_chest")
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    assert np.array_equal(np.asarray(out.dataobj), fake_labels(ref.get_fdata(dtype=np.float32)))


def test_overwrite_replaces(tmp_path, capsys, fake):
    inp = save(tmp_path / "ct_0000.nii.gz", small_ct())
    out = tmp_path / "o" / "ct.nii.gz"
    assert run_cli(capsys, inp, "-o", out, "--quiet")[0] == 0
    before = out.stat().st_mtime_ns
    assert run_cli(capsys, inp, "-o", out, "--quiet", "--overwrite")[0] == 0
    assert out.stat().st_mtime_ns >= before
    assert all_files(tmp_path / "o") == ["ct.labels.json", "ct.nii.gz"]


def test_threads_option(tmp_path, capsys, fake):
    import numba
    inp = save(tmp_path / "ct_0000.nii.gz", small_ct())
    try:
        assert run_cli(capsys, inp, "-o", tmp_path / "o.nii.gz", "--quiet", "--threads", "1")[0] == 0
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("augmentation, warned", [({"p_flip": 0.0}, True), (None, True), ({}, True),
                                                  ({"p_flip": 0.5}, False), ("no training_config", False)])
def test_tta_warns_once_when_the_weights_never_saw_a_mirror(tmp_path, capsys, fake, augmentation, warned):
    class Trained(FakeModel):
        metadata = ({} if augmentation == "no training_config"
                    else {"training_config": {"augmentation": augmentation}})
    INJECTED["load_model"] = lambda weights=None: Trained()
    inp = save(tmp_path / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "o.nii.gz", "--quiet", "--tta")
    assert rc == 0 and (tmp_path / "o.nii.gz").exists()
    assert err.count("warning: --tta: these weights were trained without left-right mirrors") == int(warned), err
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "o.nii.gz", "--quiet", "--overwrite")
    assert rc == 0 and "--tta" not in err                # no warning without --tta


def test_non_hu_range_warns_and_continues(tmp_path, capsys, fake):
    inp = save(tmp_path / "norm_0000.nii.gz", np.random.default_rng(0).random((6, 7, 5)).astype(np.float32))
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--quiet")
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "Hounsfield" in lines[0], err
    assert (tmp_path / "out" / "norm.nii.gz").exists()


# ---------------------------------------------------------------------------------------- bad input --

def _garbage(tmp_path):
    p = tmp_path / "in" / "garbage_0000.nii.gz"
    p.parent.mkdir()
    p.write_bytes(np.random.default_rng(0).bytes(3000))
    return p


def _truncated(tmp_path):
    good = save(tmp_path / "in" / "good.nii.gz", small_ct(shape=(40, 40, 30)))
    p = tmp_path / "in" / "trunc_0000.nii.gz"
    p.write_bytes(good.read_bytes()[:-2000])
    good.unlink()
    return p


def _trailer_cut(tmp_path):
    """Every voxel is there; only the gzip trailer (CRC-32 and length) is cut short."""
    good = save(tmp_path / "in" / "good.nii.gz", small_ct(shape=(40, 40, 30)))
    p = tmp_path / "in" / "trailer_0000.nii.gz"
    p.write_bytes(good.read_bytes()[:-5])
    good.unlink()
    return p


def _bad_crc(tmp_path):
    good = save(tmp_path / "in" / "good.nii.gz", small_ct(shape=(40, 40, 30)))
    blob = bytearray(good.read_bytes())
    blob[-7] ^= 0xFF
    p = tmp_path / "in" / "crc_0000.nii.gz"
    p.write_bytes(bytes(blob))
    good.unlink()
    return p


def _nan(tmp_path):
    data = small_ct().astype(np.float32)
    data[1, 2, 3] = np.nan
    return save(tmp_path / "in" / "nan_0000.nii.gz", data)


def _series(data_dir, tmp_path):
    dst = tmp_path / "in" / "series"
    shutil.copytree(data_dir / "dicom" / "ts_chest", dst)
    return dst


def _two_series(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = _series(data_dir, tmp_path)
    for f in sorted(folder.iterdir())[:2]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.save_as(f)
    return folder


def _missing_slice(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = _series(data_dir, tmp_path)
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                         .ImagePositionPatient[2]))
    files[10].unlink()
    return folder


def _empty(tmp_path):
    p = tmp_path / "in" / "empty"
    p.mkdir(parents=True)
    return p


BAD_INPUTS = {
    # name: (make the input, expected words in the message)
    "missing file": (lambda d, t: t / "in" / "nope_0000.nii.gz", ["nope_0000.nii.gz", "no such file"]),
    "garbage": (lambda d, t: _garbage(t), ["garbage_0000.nii.gz", "not a readable NIfTI"]),
    "truncated gzip": (lambda d, t: _truncated(t), ["trunc_0000.nii.gz", "truncated"]),
    "gzip trailer cut": (lambda d, t: _trailer_cut(t), ["trailer_0000.nii.gz", "truncated gzip", "trailer"]),
    "gzip CRC wrong": (lambda d, t: _bad_crc(t), ["crc_0000.nii.gz", "CRC-32", "does not match"]),
    "2D": (lambda d, t: save(t / "in" / "flat_0000.nii.gz", small_ct(shape=(12, 10))), ["2D"]),
    "4D": (lambda d, t: save(t / "in" / "four_0000.nii.gz", small_ct(shape=(12, 10, 8, 3))), ["4D", "volumes"]),
    "zero axis": (lambda d, t: save(t / "in" / "zero_0000.nii.gz", np.zeros((5, 0, 4), np.int16)), ["size 0"]),
    "NaN": (lambda d, t: _nan(t), ["1 NaN"]),
    "two DICOM series": (lambda d, t: _two_series(d, t), ["2 DICOM series", "1.2.3.4 (2 files"]),
    "missing DICOM slice": (lambda d, t: _missing_slice(d, t), ["uneven slice spacing", "missing"]),
    "empty folder": (lambda d, t: _empty(t), ["empty folder"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input(data_dir, tmp_path, capsys, fake, name):
    make, words = BAD_INPUTS[name]
    inp = make(data_dir, tmp_path)
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, inp, "-o", out_dir / "case.nii.gz", "--quiet", "--statistics", "--preview")
    lines = err.strip().splitlines()
    print(f"\n  {name}: rc {rc}: {err.strip()}")
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith("npunet segment: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert all_files(out_dir) == []
    assert fake["segment"] == 0


def test_bad_input_message_is_the_last_line_with_progress(tmp_path, capsys, fake):
    inp = _nan(tmp_path)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "out.nii.gz")
    assert rc == 2 and err.strip().splitlines()[-1].startswith("npunet segment: error: ")
    assert "Traceback" not in err and not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty"])
def test_bad_weights(tmp_path, capsys, kind):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    weights = tmp_path / "w" / "weights.npuw"
    if kind != "missing":
        weights.parent.mkdir()
        weights.write_bytes(b"" if kind == "empty" else b"NPUNETW\0" + os.urandom(500))
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--quiet", "--weights", weights)
    print(f"\n  {kind} weights: rc {rc}: {err.strip()}")
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "error" in err
    assert "weights.npuw" in err
    assert all_files(tmp_path / "out") == []


def unwritable_folder(tmp_path) -> Path:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("x")
        (folder / "probe").unlink()
    except OSError:
        return folder
    folder.chmod(0o700)
    try:
        (Path("/proc/self") / "npunet-probe").write_text("x")
    except OSError:
        return Path("/proc/self")
    pytest.skip("no unwritable folder available (running as root without /proc)")


def test_output_problems_are_found_before_the_network(tmp_path, capsys, fake):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    original = inp.read_bytes()
    folder = unwritable_folder(tmp_path)
    try:
        cases = [
            ([inp, "-o", folder / "x.nii.gz"], "not writable"),
            ([inp, "-o", inp], "is the input"),
            ([inp, "-o", tmp_path / "in" / "." / "ct_0000.nii.gz", "--overwrite"], "is the input"),
            ([inp, "-o", tmp_path / "out" / "x.img"], ".nii.gz"),
            ([inp, "-o", tmp_path / "out" / "x.nii.gz", "--threads", "0"], "--threads"),
            ([inp, "-o", tmp_path / "out" / "x.nii.gz", "--threads", "100000"], "--threads"),
            ([inp, "-o", tmp_path / "out" / "x.nii.gz", "--batch-size", "0"], "--batch-size"),
        ]
        for argv, word in cases:
            rc, _, err = run_cli(capsys, *argv, "--quiet")
            print(f"\n  {word}: rc {rc}: {err.strip()}")
            assert rc != 0 and len(err.strip().splitlines()) == 1 and word in err, err
        assert fake["segment"] == 0 and fake["load"] == 0
        assert inp.read_bytes() == original
        assert all_files(tmp_path / "in") == ["ct_0000.nii.gz"]
        assert all_files(tmp_path / "out") == []
        if folder != Path("/proc/self"):
            assert all_files(folder) == []
    finally:
        if folder != Path("/proc/self"):
            folder.chmod(0o700)


def test_existing_output_without_overwrite(tmp_path, capsys, fake):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    out = tmp_path / "out" / "ct.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"precious")
    rc, _, err = run_cli(capsys, inp, "-o", out, "--quiet")
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert out.read_bytes() == b"precious" and all_files(out.parent) == ["ct.nii.gz"]
    # an existing sidecar counts too
    out.unlink()
    (out.parent / "ct.statistics.csv").write_text("old")
    rc, _, err = run_cli(capsys, inp, "-o", out, "--quiet", "--statistics")
    assert rc != 0 and "ct.statistics.csv" in err and all_files(out.parent) == ["ct.statistics.csv"]
    assert fake["segment"] == 0


def test_a_failing_late_stage_leaves_nothing(tmp_path, capsys, fake, monkeypatch):
    import npunet.io.preview

    def broken(*args, **kwargs):
        raise InputError("disk full (simulated)")
    monkeypatch.setattr(npunet.io.preview, "write_preview", broken)
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--quiet", "--statistics", "--preview")
    assert rc != 0 and "disk full" in err
    assert all_files(tmp_path / "out") == []


# ------------------------------------------------------------------ --organs, --split, --output-type --

@pytest.mark.parametrize("organs,word", [("livr", "'livr'"), ("liver,kidney", "'kidney'"), ("14", "'14'"),
                                         ("0", "'0'"), ("background", "'background'"), (",", "no organ")])
def test_bad_organ_names(tmp_path, capsys, fake, organs, word):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "out" / "x.nii.gz", "--organs", organs, "--quiet")
    print(f"\n  --organs {organs}: rc {rc}: {err.strip()}")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and word in err
    if word != "no organ":
        assert "valid organs are liver, right_kidney, spleen" in err and "left_kidney" in err
    assert fake["segment"] == 0 and fake["load"] == 0 and all_files(tmp_path / "out") == []


def test_organs_keep_a_subset(tmp_path, capsys, fake):
    data = small_ct()
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", data)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "out" / "ct.nii.gz", "--organs", "right kidney",
                         "--statistics", "--quiet")
    assert rc == 0, err
    full = fake_labels(data.astype(np.float32))
    got = np.asarray(nib.load(tmp_path / "out" / "ct.nii.gz").dataobj)
    assert np.array_equal(got, np.where(full == 2, 2, 0)) and (full == 1).any() and (got == 2).any()
    rows = list(csv.DictReader(open(tmp_path / "out" / "ct.statistics.csv")))
    assert [(r["label"], r["name"], int(r["voxels"])) for r in rows] == [("2", "right_kidney", (full == 2).sum())]
    assert json.loads((tmp_path / "out" / "ct.labels.json").read_text()) == {"0": "background", "2": "right_kidney"}


def test_split_writes_every_organ_and_the_sidecar(tmp_path, capsys, fake):
    data = small_ct()
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", data)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "masks", "--split", "--preview", "--quiet")
    assert rc == 0, err
    full = fake_labels(data.astype(np.float32))
    assert all_files(tmp_path / "masks") == sorted([f"{v}.nii.gz" for k, v in LABELS.items() if k] +
                                                   ["labels.json", "preview.png"])
    for k, name in LABELS.items():
        if k:
            mask = nib.load(tmp_path / "masks" / f"{name}.nii.gz")
            assert np.array_equal(np.asarray(mask.dataobj), (full == k).astype(np.uint8)), name
            assert mask.get_data_dtype() == np.uint8 and np.array_equal(mask.affine, nib.load(inp).affine)
    assert all_files(tmp_path) == sorted(["in", "in/ct_0000.nii.gz", "masks"] +
                                         [f"masks/{f}" for f in all_files(tmp_path / "masks")])


def test_split_folder_of_cases(tmp_path, capsys, fake):
    save(tmp_path / "in" / "a_0000.nii.gz", small_ct(0))
    save(tmp_path / "in" / "b_0000.nii.gz", small_ct(1))
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--split", "--organs", "liver",
                         "--quiet")
    assert rc == 0, err
    assert all_files(tmp_path / "out") == ["a", "a/labels.json", "a/liver.nii.gz", "b", "b/labels.json",
                                           "b/liver.nii.gz"]


def test_split_output_rules(tmp_path, capsys, fake):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    out = tmp_path / "masks"
    out.mkdir()                                    # an empty folder is fine
    assert run_cli(capsys, inp, "-o", out, "--split", "--quiet")[0] == 0
    (out / "stale.txt").write_text("from an older run")
    rc, _, err = run_cli(capsys, inp, "-o", out, "--split", "--quiet")
    assert rc == 2 and "--overwrite" in err and (out / "stale.txt").exists()
    assert run_cli(capsys, inp, "-o", out, "--split", "--quiet", "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "liver.nii.gz").exists()     # replaced whole
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for argv, word in [([foreign, "--overwrite"], "not a folder of npunet masks"),
                       ([tmp_path / "m.nii.gz"], "folder"),
                       ([tmp_path / "in"], "holds the input"),
                       ([tmp_path / "m2", "--output-type", "dicom-seg"], "does not combine")]:
        rc, _, err = run_cli(capsys, inp, "-o", *argv, "--split", "--quiet")
        print(f"\n  {word}: rc {rc}: {err.strip()}")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and word in err, err
    assert (foreign / "thesis.tex").read_text() == "precious" and all_files(foreign) == ["thesis.tex"]
    assert not (tmp_path / "m.nii.gz").exists() and not (tmp_path / "m2").exists()
    assert all_files(tmp_path / "in") == ["ct_0000.nii.gz"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_split_failure_leaves_nothing(tmp_path, capsys, fake, monkeypatch):
    import npunet.io.preview

    def broken(*args, **kwargs):
        raise InputError("disk full (simulated)")
    monkeypatch.setattr(npunet.io.preview, "write_preview", broken)
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "out" / "masks", "--split", "--preview", "--quiet")
    assert rc == 2 and "disk full" in err
    assert all_files(tmp_path / "out") == []       # neither the folder nor a staging folder


def test_split_loses_to_a_folder_that_appears_meanwhile(tmp_path, capsys, fake, monkeypatch):
    """Another run publishes the same --split folder while this one writes its masks (both passed the check
    before any work): this run's folder is not published over it ("exists already", exit 2), the other
    run's folder is left as it is, and no staging folder remains."""
    real = case.write_organ_masks

    def masks_then_another_run_finishes(labels, like, folder, organs):
        paths = real(labels, like, folder, organs)
        (tmp_path / "masks").mkdir()
        (tmp_path / "masks" / "labels.json").write_text("another run's\n")
        return paths
    monkeypatch.setattr(case, "write_organ_masks", masks_then_another_run_finishes)
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "masks", "--split", "--statistics", "--quiet")
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "exists already" in err
    assert all_files(tmp_path / "masks") == ["labels.json"]
    assert (tmp_path / "masks" / "labels.json").read_text() == "another run's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "masks"]     # no .masks.*.tmp left


def test_split_overwrite_takes_back_only_its_own_folder(tmp_path, capsys, fake, monkeypatch):
    """--overwrite replaces an older folder of masks whole; when the run then fails, the folder it published
    is taken back (npunet.publish.unpublish), the older one is gone as with any replaced output, and
    nothing hidden (the staging folder, the older folder set aside) is left."""
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    assert run_cli(capsys, inp, "-o", tmp_path / "masks", "--split", "--quiet")[0] == 0
    (tmp_path / "masks" / "stale.txt").write_text("older run")
    assert run_cli(capsys, inp, "-o", tmp_path / "masks", "--split", "--overwrite", "--quiet")[0] == 0
    assert "stale.txt" not in all_files(tmp_path / "masks") and (tmp_path / "masks" / "liver.nii.gz").exists()

    def fail_after_publishing(*args, **kwargs):
        raise InputError("simulated failure after the folder was published")
    from npunet.progress import Log
    real_log = Log.say

    def say(self, text):
        real_log(self, text)
        if "wrote the folder" in text:
            fail_after_publishing()
    monkeypatch.setattr(Log, "say", say)
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "masks", "--split", "--overwrite")
    assert rc == 2 and "simulated failure" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_dicom_seg_needs_dicom_input(tmp_path, capsys, fake):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "out" / "ct.dcm", "--output-type", "dicom-seg")
    print(f"\n  {err.strip()}")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "needs a DICOM series folder" in err
    assert fake["load"] == 0 and all_files(tmp_path / "out") == []


def test_dicom_seg_without_highdicom(data_dir, tmp_path, capsys, fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)      # import highdicom now raises ImportError
    rc, _, err = run_cli(capsys, data_dir / "dicom" / "ts_chest", "-o", tmp_path / "out" / "x.dcm",
                         "--output-type", "dicom-seg")
    print(f"\n  {err.strip()}")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "pip install 'npunet[dicom]'" in err
    assert fake["load"] == 0 and all_files(tmp_path / "out") == []


def test_dicom_seg_output_rules_and_failures(data_dir, tmp_path, capsys, fake, monkeypatch):
    pytest.importorskip("highdicom")
    series = data_dir / "dicom" / "ts_chest"
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, series, "-o", out / "x.nii.gz", "--output-type", "dicom-seg", "--quiet")
    assert rc == 2 and ".dcm" in err and all_files(out) == []
    copy = _series(data_dir, tmp_path)
    before = all_files(copy)
    for argv in ([slash(copy), "--output-type", "dicom-seg"], [copy / "masks", "--split"], [slash(copy)]):
        rc, _, err = run_cli(capsys, copy, "-o", *argv, "--quiet")
        assert rc == 2 and "inside the input series folder" in err and all_files(copy) == before, err
    # no organ left to write: a SEG needs a segment (the fake network finds labels 1 and 2 only)
    rc, _, err = run_cli(capsys, series, "-o", slash(out), "--output-type", "dicom-seg", "--organs", "gallbladder",
                         "--statistics", "--quiet")
    print(f"\n  {err.strip()}")
    assert rc == 2 and "no organ found" in err and all_files(out) == []
    # a failure while writing the object or a later file leaves nothing
    import highdicom
    import npunet.io.preview

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device (simulated)")   # atomic_write turns it into one line
    with monkeypatch.context() as patch:
        patch.setattr(highdicom.seg.Segmentation, "save_as", broken)
        rc, _, err = run_cli(capsys, series, "-o", slash(out), "--output-type", "dicom-seg", "--quiet")
    assert rc == 2 and "No space left" in err and all_files(out) == []

    def broken_preview(*args, **kwargs):
        seen.extend(all_files(out))          # the SEG and the statistics are written by then
        raise InputError("disk full (simulated)")
    seen = []
    monkeypatch.setattr(npunet.io.preview, "write_preview", broken_preview)
    rc, _, err = run_cli(capsys, series, "-o", slash(out), "--output-type", "dicom-seg", "--statistics", "--preview",
                         "--quiet")
    assert rc == 2 and "disk full" in err and all_files(out) == []
    assert seen == ["ts_chest.dcm", "ts_chest.statistics.csv", "ts_chest.statistics.json"]


def test_dicom_seg_loses_to_a_file_that_appears_meanwhile(data_dir, tmp_path, capsys, fake, monkeypatch):
    """The SEG is published exclusively (npunet.publish): another run's file that takes the name while this
    run writes stays as it is; this run exits 2 with "exists already" and leaves nothing of its own."""
    hd = pytest.importorskip("highdicom")
    out = tmp_path / "out"
    real = hd.seg.Segmentation.save_as

    def save_then_another_run_finishes(self, filename, *args, **kwargs):
        real(self, filename, *args, **kwargs)
        (out / "ts_chest.dcm").write_bytes(b"another run's SEG")
    monkeypatch.setattr(hd.seg.Segmentation, "save_as", save_then_another_run_finishes)
    rc, _, err = run_cli(capsys, data_dir / "dicom" / "ts_chest", "-o", slash(out), "--output-type", "dicom-seg",
                         "--statistics", "--quiet")
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and "exists already" in err and err.strip().splitlines()[-1].count("error") == 1
    assert all_files(out) == ["ts_chest.dcm"] and (out / "ts_chest.dcm").read_bytes() == b"another run's SEG"


# -------------------------------------------------------------------------------------- folder mode --

def test_folder_mode_good_and_bad_case(data_dir, tmp_path, capsys, fake):
    inp = tmp_path / "imagesTs"
    inp.mkdir()
    (inp / "good_0000.nii.gz").symlink_to(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    (inp / "bad_0000.nii.gz").write_bytes(b"this is not a NIfTI file" * 50)
    save(inp / "other_0000.nii.gz", small_ct())
    out = tmp_path / "pred"
    rc, _, err = run_cli(capsys, inp, "-o", out, "--quiet", "--statistics")
    print("\n" + err)
    lines = err.strip().splitlines()
    assert rc == 1
    assert lines[-1] == "3 cases: 2 segmented, 1 failed (bad)"
    assert any(line.startswith("npunet segment: bad: error: ") and "bad_0000.nii.gz" in line for line in lines)
    assert all_files(out) == ["good.labels.json", "good.nii.gz", "good.statistics.csv", "good.statistics.json",
                              "other.labels.json", "other.nii.gz", "other.statistics.csv",
                              "other.statistics.json"]
    # all good: exit 0 and, without --quiet, the summary
    (inp / "bad_0000.nii.gz").unlink()
    rc, _, err = run_cli(capsys, inp, "-o", out, "--overwrite")
    assert rc == 0 and err.strip().splitlines()[-1] == "2 cases: 2 segmented, 0 failed"


def test_folder_mode_existing_outputs_stop_before_work(tmp_path, capsys, fake):
    inp = tmp_path / "imagesTs"
    save(inp / "a_0000.nii.gz", small_ct())
    save(inp / "b_0000.nii.gz", small_ct(1))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"old")
    rc, _, err = run_cli(capsys, inp, "-o", tmp_path / "pred", "--quiet")
    assert rc == 2 and "a.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert fake["segment"] == 0 and all_files(tmp_path / "pred") == ["a.nii.gz"]


# ---------------------------------------------------------------------------------------- Python API --

def test_segment_image_api(data_dir, fake):
    img = nib.load(data_dir / "imagesTr" / "ts_cta_0000.nii.gz")
    out = api.segment_image(img, model=FakeModel(), segment_volume=fake.inject["segment_volume"])
    assert isinstance(out, nib.Nifti1Image) and out.get_data_dtype() == np.uint8
    assert out.shape == img.shape and np.array_equal(out.affine, img.affine)
    assert int(out.header["qform_code"]) == int(img.header["qform_code"])
    assert int(out.header["sform_code"]) == int(img.header["sform_code"])
    assert np.array_equal(np.asarray(out.dataobj), fake_labels(img.get_fdata(dtype=np.float32)))
    with pytest.raises(InputError, match="NaN"):
        api.segment_image(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), model=FakeModel(),
                          segment_volume=fake.inject["segment_volume"])
    with pytest.warns(UserWarning, match="Hounsfield"):
        api.segment_image(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), model=FakeModel(),
                          segment_volume=fake.inject["segment_volume"])
    import npunet
    again = npunet.segment_image(img, model=FakeModel(), segment_volume=fake.inject["segment_volume"])
    assert np.array_equal(np.asarray(again.dataobj), np.asarray(out.dataobj))


def test_segment_function_returns_results(tmp_path, fake):
    inp = save(tmp_path / "in" / "ct_0000.nii.gz", small_ct())
    results = api.segment(inp, slash(tmp_path / "out"), statistics=True, **fake.inject)
    assert [(r.case, r.ok, r.output.name) for r in results] == [("ct", True, "ct.nii.gz")]
    r = results[0]
    assert r.read_seconds > 0 and r.segment_seconds > 0 and r.write_seconds > 0
    # the first case's read overlaps loading the weights; segmenting and writing are inside the case's time
    assert r.seconds >= r.segment_seconds + r.write_seconds and fake["load"] == 1


# ------------------------------------------------------------------------------------- real network --

def real_weights():
    """A weights file (the test fixture, else the shipped weights)."""
    candidates = [REPO / "tests" / "fixtures" / "dsconv_eca_unet.npuw", Path(api.default_weights_path())]
    for path in candidates:
        if path.exists():
            return path
    pytest.skip(f"no weights file yet (looked for {', '.join(map(str, candidates))})")


def test_real_network_end_to_end(data_dir, tmp_path, capsys):
    weights = real_weights()
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    small = src.slicer[:, :, 50:56]  # six axial slices keep the real network quick
    inp = tmp_path / "in" / "abd_0000.nii.gz"
    inp.parent.mkdir()
    nib.save(small, inp)
    rc, _, err = run_cli(capsys, inp, "-o", slash(tmp_path / "out"), "--weights", weights, "--statistics",
                         "--preview", "--batch-size", "4")
    print("\n" + err)
    assert rc == 0, err
    out = nib.load(tmp_path / "out" / "abd.nii.gz")
    assert out.shape == small.shape and np.array_equal(out.affine, small.affine)
    assert out.get_data_dtype() == np.uint8 and np.asarray(out.dataobj).max() <= 13
    assert "segmenting: slice 6/6" in err
    import npunet
    api = npunet.segment_image(small, model=npunet.load(weights), batch_size=4)
    assert np.array_equal(np.asarray(api.dataobj), np.asarray(out.dataobj))
