"""Provenance reports (`npunet segment --report`, npunet.io.report) and `npunet verify`.

- What a report holds: the SHA-256 of the input as read (the NIfTI file; each DICOM instance in slice order and
  the series), of the weights and of every output, the options, versions, CPU, build tag, threads, batch size,
  stage seconds, peak memory, UTC times; checked against its schema, and the schema against docs/provenance.md.
- A report is published like every output: exclusive unless --overwrite, taken back with the case when the run
  fails or is interrupted (nothing left behind).
- verify: reproduced (exit 0); the weights or an input changed (exit 2, nothing run); an output changed since,
  or the run again gives other labels (exit 1, with voxels and organs); a moved folder found by relative paths;
  a report verified from another checkout of npunet (a copy of this tree, with its own kernels and weights).
- The property verify relies on: label maps byte-identical across thread counts 1, 2 and 4 and batch sizes 1,
  3, 8 and 32 on the shared CTs (a process with NUMBA_NUM_THREADS=4 runs them; --workers is in test_cohort).

Most tests use a fast stand-in network given as arguments (load_model=, segment_volume=); the byte-identity
matrix and the other-checkout test run the shipped weights."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet.cli import main
from npunet.io.digests import INPUT_FILES, series_digest
from npunet.io.report import REPORT, read_report
from npunet.labels import LABELS
from npunet.schema import Obj, Opt, List

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights" / "dsconv_eca_unet.npuw"


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_labels(volume):
    return (np.asarray(volume > 100, np.uint8) + np.asarray(volume > 400, np.uint8)).astype(np.uint8)


class Model:
    """A stand-in network that knows its weights file, as a loaded one does."""
    labels = dict(LABELS)
    preprocessing = {}
    spec = {"name": "stand-in"}

    def __init__(self, path):
        self.weights_path = str(Path(path).absolute())
        self.weights_sha256 = sha(path)


class StandIns:
    """load_model / segment_volume for `npunet segment` and `npunet verify`, counting the network's runs;
    `labels` is the rule the network follows (changed to make a run again differ)."""

    def __init__(self):
        self.runs = 0
        self.labels = fake_labels

    def load_model(self, weights=None):
        return Model(weights if weights is not None else SHIPPED)

    def segment_volume(self, volume, affine, model, batch_size=8, postprocess=True, progress=None, timings=None,
                       tta=False):
        self.runs += 1
        if timings is not None:
            timings.update(preprocess=0.01, network=0.02, upsample_argmax=0.0, postprocess=0.0)
        return self.labels(volume)

    def run(self, capsys, *argv):
        rc = main([*map(str, argv)], load_model=self.load_model, segment_volume=self.segment_volume)
        out = capsys.readouterr()
        return rc, out.out, "".join(l for l in out.err.splitlines(True) if "anatomy check" not in l)


@pytest.fixture
def stand_ins():
    return StandIns()


@pytest.fixture
def case(data_dir, tmp_path):
    """A small CT (a slab of ts_abdomen), a copy of the shipped weights, an output folder."""
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    ct = tmp_path / "data" / "abd_0000.nii.gz"
    ct.parent.mkdir()
    nib.save(src.slicer[:, :, 40:60], ct)
    weights = tmp_path / "w" / "model.npuw"
    weights.parent.mkdir()
    shutil.copy(SHIPPED, weights)
    return {"ct": ct, "weights": weights, "out": tmp_path / "out"}


def segment(stand_ins, capsys, case, *more):
    return stand_ins.run(capsys, "segment", case["ct"], "-o", case["out"] / "abd.nii.gz", "--weights",
                         case["weights"], "--quiet", *more)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------ what it holds --

def test_a_report_holds_digests_options_versions_machine_and_times(stand_ins, capsys, case):
    rc, _, err = segment(stand_ins, capsys, case, "--statistics", "--preview", "--report", "--batch-size", "3",
                         "--threads", "1")
    assert rc == 0, err
    out = case["out"]
    assert files(out) == ["abd.labels.json", "abd.nii.gz", "abd.preview.png", "abd.report.json",
                          "abd.statistics.csv", "abd.statistics.json"]
    report = read_report(out / "abd.report.json")          # parsed and checked against the schema
    import numba
    from npunet.kernels._numba import BUILD_TAG
    from npunet.machine import cpu_model
    assert report["report_version"] == 1 and report["case"] == "abd"
    assert report["input"]["kind"] == "nifti" and report["input"]["sha256"] == sha(case["ct"])
    assert report["input"]["files"] == [{"name": "abd_0000.nii.gz", "size": case["ct"].stat().st_size,
                                         "sha256": sha(case["ct"])}]
    assert report["input"]["path"] == "../data/abd_0000.nii.gz"
    assert report["input"]["absolute_path"] == str(case["ct"].absolute())
    assert report["weights"]["sha256"] == sha(case["weights"]) and report["weights"]["default"] is False
    assert report["weights"]["path"] == "../w/model.npuw" and report["weights"]["model"] == "stand-in"
    written = {o["path"]: o for o in report["outputs"]}
    assert sorted(written) == ["abd.labels.json", "abd.nii.gz", "abd.preview.png", "abd.statistics.csv",
                               "abd.statistics.json"]             # every output but the report itself
    for name, entry in written.items():
        assert entry["sha256"] == sha(out / name) and entry["size"] == (out / name).stat().st_size
        assert entry["compare"] == "bytes" and entry["absolute_path"] == str((out / name).absolute())
    assert report["options"] == {"output_type": "nifti", "split": False, "organs": None, "statistics": True,
                                 "preview": True, "postprocess": True, "tta": False, "assume_orientation": None}
    assert report["run"] == {"threads": 1, "batch_size": 3}
    assert set(report["software"]) >= {"npunet", "python", "numpy", "numba", "llvmlite", "scipy", "nibabel"}
    assert report["software"]["numba"] == numba.__version__
    assert report["machine"]["cpu"] == cpu_model() and report["machine"]["kernel_build_tag"] == BUILD_TAG
    assert set(report["timings"]) == {"read_seconds", "segment_seconds", "write_seconds", "stages"}
    assert report["timings"]["stages"]["network"] == 0.02
    assert report["peak_memory_bytes"] > 10 * 2**20
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["started_utc"])
    assert report["started_utc"] <= report["finished_utc"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert report["result"]["shape"] == [122, 101, 20] and report["result"]["organs_found"] == ["liver",
                                                                                                "right_kidney"]
    assert {c["check"] for c in report["anatomy"]} == {"side", "above_kidneys", "edge"}
    print(f"\n  report of {len(report['outputs'])} outputs; input {report['input']['sha256'][:16]}..., weights "
          f"{report['weights']['sha256'][:16]}..., {report['machine']['cpu']}, build {BUILD_TAG}, peak "
          f"{report['peak_memory_bytes'] / 2**20:.0f} MiB")
    import numba as nb
    nb.set_num_threads(nb.config.NUMBA_NUM_THREADS)


def test_a_dicom_report_digests_each_instance_in_slice_order(stand_ins, capsys, data_dir, tmp_path):
    pytest.importorskip("pydicom")
    series = data_dir / "dicom" / "ts_chest"
    rc, _, err = stand_ins.run(capsys, "segment", series, "-o", tmp_path / "chest.nii.gz", "--report",
                               tmp_path / "chest-provenance.json", "--weights", SHIPPED, "--quiet")
    assert rc == 0, err
    report = read_report(tmp_path / "chest-provenance.json")
    from npunet.io.dicom import read_dicom_series
    img = read_dicom_series(series)
    in_order = img.extra[INPUT_FILES]
    assert report["input"]["kind"] == "dicom" and report["input"]["files"] == in_order
    assert [f["sha256"] for f in in_order] == [sha(series / f["name"]) for f in in_order]
    assert report["input"]["sha256"] == series_digest(in_order)
    positions = [float(ds.ImagePositionPatient[2]) for ds in img.extra["dicom_headers"]]
    assert positions == sorted(positions) and len(in_order) == 20
    assert report["software"]["pydicom"] not in ("", "not installed")
    print(f"\n  {len(in_order)} instances in slice order, series digest {report['input']['sha256'][:16]}...")


def schema_paths(schema, prefix=""):
    """Every key of the report's schema as a dotted path (lists' items as [])."""
    if isinstance(schema, Opt):
        schema = schema.inner
    if isinstance(schema, List):
        yield from schema_paths(schema.item, prefix + "[]")
    elif isinstance(schema, Obj):
        for key, value in schema.fields.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from schema_paths(value, path)


def test_the_schema_is_documented_and_versioned():
    """docs/provenance.md lists every field of npunet.io.report.REPORT (as `dotted.path`) and no other, and
    names the version; a report of another version is refused with one line."""
    page = (REPO / "docs" / "provenance.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_\[\].]+)` \|", page, re.M))
    fields = set(schema_paths(REPORT))
    print(f"\n  {len(fields)} fields in the schema, {len(documented)} documented")
    assert fields - documented == set(), f"not documented: {sorted(fields - documented)}"
    assert documented - fields == set(), f"documented but not in the schema: {sorted(documented - fields)}"
    assert "report_version` is 1" in page
    assert "(provenance.md)" in (REPO / "docs" / "README.md").read_text()
    assert "docs/provenance.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("change,words", [
    (lambda r: r.update(report_version=2), ["report_version 2", "upgrade npunet"]),
    (lambda r: r.update(extra_field=1), ["unknown key 'extra_field'"]),
    (lambda r: r["input"].update(sha256="xyz"), ["input.sha256", "SHA-256"]),
    (lambda r: r.pop("weights"), ["missing key 'weights'"]),
    (lambda r: r.update(report="something else"), ["not an npunet report"]),
])
def test_a_report_that_does_not_fit_the_schema_is_refused_in_one_line(stand_ins, capsys, case, change, words):
    assert segment(stand_ins, capsys, case, "--report")[0] == 0
    path = case["out"] / "abd.report.json"
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))
    runs = stand_ins.runs
    rc, out, err = stand_ins.run(capsys, "verify", path)
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("npunet verify: error: ")
    assert all(w in err for w in words) and stand_ins.runs == runs


# ------------------------------------------------------------------------- published like the others --

def test_a_report_is_published_like_every_output(stand_ins, capsys, case, tmp_path):
    out = case["out"]
    assert segment(stand_ins, capsys, case, "--report")[0] == 0
    before = (out / "abd.report.json").read_bytes()
    (out / "abd.nii.gz").unlink()
    (out / "abd.labels.json").unlink()
    rc, _, err = segment(stand_ins, capsys, case, "--report")          # the old report is in the way
    assert rc == 2 and "abd.report.json: exists already" in err and files(out) == ["abd.report.json"]
    assert segment(stand_ins, capsys, case, "--report", "--overwrite")[0] == 0
    assert (out / "abd.report.json").read_bytes() != before
    cases = [(["--report", tmp_path / "r.txt"], "must be a .json file name"),
             (["--report", out / "abd.labels.json", "--overwrite"], "would replace another output")]
    for more, word in cases:
        rc, _, err = segment(stand_ins, capsys, case, *more)
        print(f"\n  {word}: rc {rc}: {err.strip()}")
        assert rc == 2 and word in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(case["ct"], folder / "a_0000.nii.gz")
    for argv, word in (([folder, "-o", tmp_path / "pred", "--report", tmp_path / "one.json"], "one report per case"),
                       ([folder, "-o", tmp_path / "pred", "--workers", "1", "--report", tmp_path / "one.json"],
                        "one report per case")):
        rc, _, err = stand_ins.run(capsys, "segment", *argv, "--weights", case["weights"])
        assert rc == 2 and word in err and not (tmp_path / "pred").exists(), err
    rc, _, err = stand_ins.run(capsys, "segment", folder, "-o", tmp_path / "pred", "--report", "--weights",
                               case["weights"], "--quiet")
    assert rc == 0 and files(tmp_path / "pred") == ["a.labels.json", "a.nii.gz", "a.report.json"], err


def test_a_failed_or_interrupted_run_leaves_no_report_and_no_output(stand_ins, capsys, case):
    """The report is written last: when making it fails (the weights file went away during the run) or is
    interrupted (Ctrl-C while it is built), the outputs already published are taken back with it."""
    class Vanishing(StandIns):
        def load_model(self, weights=None):
            model = Model(weights)
            Path(weights).unlink()          # gone once loaded: the report cannot describe it
            return model
    vanishing = Vanishing()
    rc, _, err = vanishing.run(capsys, "segment", case["ct"], "-o", case["out"] / "abd.nii.gz", "--weights",
                               case["weights"], "--statistics", "--report", "--quiet")
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and "went away during the run" in err and vanishing.runs == 1
    assert files(case["out"]) == []

    class Interrupting(Model):
        @property
        def spec(self):                     # read only while the report is built, after the label map
            raise KeyboardInterrupt

    class Interrupted(StandIns):
        def load_model(self, weights=None):
            return Interrupting(weights)
    shutil.copy(SHIPPED, case["weights"])
    interrupted = Interrupted()
    rc, _, err = interrupted.run(capsys, "segment", case["ct"], "-o", case["out"] / "abd.nii.gz", "--weights",
                                 case["weights"], "--statistics", "--report")
    print(f"  rc {rc}: {err.strip().splitlines()[-1]}")
    assert rc == 130 and interrupted.runs == 1 and "wrote" in err      # the label map had been published
    assert files(case["out"]) == []


# ------------------------------------------------------------------------------------------- verify --

def test_verify_reproduces_every_output(stand_ins, capsys, case):
    assert segment(stand_ins, capsys, case, "--report", "--statistics", "--preview")[0] == 0
    rc, out, err = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    assert rc == 0 and err == "", err
    lines = out.strip().splitlines()
    assert lines[0].startswith("input ") and "SHA-256 matches" in lines[0]
    assert lines[1].startswith("weights ") and "SHA-256 matches" in lines[1]
    assert any(line.startswith("ran case abd again: ") for line in lines)
    for name in ("abd.nii.gz", "abd.labels.json", "abd.statistics.csv", "abd.statistics.json", "abd.preview.png"):
        assert f"{name}: reproduced, byte for byte" in out
    assert lines[-1] == "verified: the 5 outputs of the report are reproduced"
    assert stand_ins.runs == 2
    rc, quiet, _ = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json", "--quiet")
    assert rc == 0 and quiet.strip() == "verified: the 5 outputs of the report are reproduced"
    print("\n" + out)


def test_verify_catches_changed_weights_and_runs_nothing(stand_ins, capsys, case):
    assert segment(stand_ins, capsys, case, "--report")[0] == 0
    blob = bytearray(case["weights"].read_bytes())
    blob[len(blob) // 2] ^= 1
    case["weights"].write_bytes(bytes(blob))
    rc, out, err = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and "the weights have changed" in err and "nothing was run" in err
    assert len(err.strip().splitlines()) == 1 and stand_ins.runs == 1
    case["weights"].unlink()
    rc, _, err = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    assert rc == 2 and "give its place with --weights" in err and stand_ins.runs == 1


def test_verify_catches_a_changed_input_and_runs_nothing(stand_ins, capsys, case):
    assert segment(stand_ins, capsys, case, "--report")[0] == 0
    img = nib.load(case["ct"])
    data = np.asarray(img.dataobj).copy()
    data[60, 50, 10] += 1                                         # one voxel, one HU
    nib.save(nib.Nifti1Image(data, img.affine, img.header), case["ct"])
    rc, out, err = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and "the input has changed" in err and "nothing was run" in err and stand_ins.runs == 1


def test_verify_catches_a_changed_output_with_voxels_and_organs(stand_ins, capsys, case):
    assert segment(stand_ins, capsys, case, "--report", "--statistics")[0] == 0
    path = case["out"] / "abd.nii.gz"
    img = nib.load(path)
    labels = np.asarray(img.dataobj).copy()
    edited = (labels == 1) & (np.arange(labels.shape[0])[:, None, None] < 40)
    labels[edited] = 3                                            # a hand edit: some liver relabelled spleen
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), path)
    rc, out, err = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    print("\n" + out)
    assert rc == 1 and err == ""
    (line,) = [l for l in out.splitlines() if "DIFFERS" in l]
    n = int(edited.sum())
    assert line.startswith("abd.nii.gz: DIFFERS: ") and "has changed since the run" in line
    assert f"{n:,} of {labels.size:,} voxels differ" in line and f"liver {n:,}" in line and f"spleen {n:,}" in line
    assert "abd.statistics.json: reproduced" in out
    assert out.strip().splitlines()[-1] == "NOT verified: 1 of the 4 outputs differ (abd.nii.gz)"


def test_verify_says_when_the_run_again_differs(stand_ins, capsys, case):
    """Another network (here: another rule) gives other labels: which output, how many voxels, which organs."""
    assert segment(stand_ins, capsys, case, "--report", "--statistics")[0] == 0
    stand_ins.labels = lambda volume: np.where(volume > 150, np.uint8(1), np.uint8(0)) + (volume > 400)
    rc, out, _ = stand_ins.run(capsys, "verify", case["out"] / "abd.report.json")
    print("\n" + out)
    assert rc == 1
    (line,) = [l for l in out.splitlines() if l.startswith("abd.nii.gz: DIFFERS")]
    assert "the run again gives other bytes" in line and "voxels differ, by organ: liver" in line
    assert "abd.statistics.json: DIFFERS" in out and "entries that differ: liver" in out
    assert "abd.labels.json: reproduced" in out


def test_verify_finds_a_moved_folder_by_relative_paths(stand_ins, capsys, case, tmp_path):
    """The report, its outputs, the input and the weights move together: the absolute paths are stale, the
    relative ones lead to the files. An input elsewhere is named with --input."""
    assert segment(stand_ins, capsys, case, "--report")[0] == 0
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(tmp_path, moved)
    try:
        rc, out, err = stand_ins.run(capsys, "verify", moved / "out" / "abd.report.json")
        print("\n" + out)
        assert rc == 0, err
        assert f"input {moved / 'data' / 'abd_0000.nii.gz'}: SHA-256 matches" in out
        shutil.move(moved / "data", moved / "elsewhere")
        rc, _, err = stand_ins.run(capsys, "verify", moved / "out" / "abd.report.json")
        assert rc == 2 and "give its place with --input" in err
        rc, out, err = stand_ins.run(capsys, "verify", moved / "out" / "abd.report.json", "--input",
                                     moved / "elsewhere" / "abd_0000.nii.gz")
        assert rc == 0, err
        (moved / "out" / "abd.nii.gz").unlink()                    # an output not kept: its digest still checked
        rc, out, _ = stand_ins.run(capsys, "verify", moved / "out" / "abd.report.json", "--input",
                                   moved / "elsewhere" / "abd_0000.nii.gz")
        assert rc == 0 and "abd.nii.gz: reproduced, byte for byte (the file as written is not beside" in out
    finally:
        shutil.move(moved, tmp_path)


def test_verify_a_dicom_series_with_a_changed_instance(stand_ins, capsys, data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    series = tmp_path / "series"
    shutil.copytree(data_dir / "dicom" / "ts_chest", series)
    rc, _, err = stand_ins.run(capsys, "segment", series, "-o", tmp_path / "out" / "chest.nii.gz", "--report",
                               "--weights", SHIPPED, "--quiet")
    assert rc == 0, err
    report = tmp_path / "out" / "chest.report.json"
    rc, out, _ = stand_ins.run(capsys, "verify", report)
    assert rc == 0 and "the SHA-256 of each of its 20 instances matches" in out
    victim = sorted(series.iterdir())[7]
    ds = pydicom.dcmread(victim)
    ds.PatientWeight = "80"                                       # a header edit, pixels untouched
    ds.save_as(victim)
    runs = stand_ins.runs
    rc, _, err = stand_ins.run(capsys, "verify", report)
    print(f"\n  rc {rc}: {err.strip()}")
    assert rc == 2 and "the series has changed: 1 of its 20 instances" in err and victim.name in err
    assert stand_ins.runs == runs
    shutil.copy(data_dir / "dicom" / "ts_chest" / victim.name, victim)           # the original back
    extra = pydicom.dcmread(victim)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    extra.ImagePositionPatient = [float(v) for v in extra.ImagePositionPatient[:2]] + [-2000.0]
    extra.save_as(series / "added.dcm")                                      # an image that joins the series
    rc, _, err = stand_ins.run(capsys, "verify", report)
    print(f"  rc {rc}: {err.strip()}")
    assert rc == 2 and "1 image(s) not in the report (added.dcm)" in err and stand_ins.runs == runs


# ------------------------------------------------------------------------ the real network, elsewhere --

DETERMINISM = r'''
import hashlib, json, sys
import numba
import numpy as np
from npunet.api import load
from npunet.io.ct import load_ct
from npunet.pipeline import segment_array
net = load(sys.argv[1])
out = {}
for name, path, z0, z1 in json.loads(sys.argv[2]):
    ct = load_ct(path)
    volume = np.ascontiguousarray(ct.volume[:, :, z0:z1])
    for threads, batch in json.loads(sys.argv[3]):
        numba.set_num_threads(threads)
        labels = segment_array(volume, ct.affine, net, batch_size=batch)
        found = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=14)[1:]))
        out[f"{name} threads={threads} batch={batch}"] = [hashlib.sha256(labels.tobytes()).hexdigest(), found,
                                                          int(np.count_nonzero(labels))]
print(json.dumps(out))
'''
COMBINATIONS = [(1, 8), (2, 8), (4, 8), (2, 1), (2, 3), (2, 32), (4, 3)]


def test_label_maps_are_byte_identical_across_threads_and_batch_sizes(data_dir, tmp_path):
    """The property verify relies on. One process with NUMBA_NUM_THREADS=4 (the kernels may then run 4
    threads on this machine's cores) segments a 33-slice slab of ts_abdomen and the DICOM series ts_chest
    (20 slices of 512 x 512) with the shipped weights at threads 1, 2, 4 and batch sizes 1, 3, 8, 32
    (32 > 20 slices: one batch of all; 33 = 32 + 1); every label map of a CT has the same SHA-256."""
    if not SHIPPED.exists():
        pytest.skip(f"no shipped weights at {SHIPPED}")
    pytest.importorskip("pydicom")
    cases = [["ts_abdomen slab", str(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz"), 70, 103],
             ["ts_chest DICOM", str(data_dir / "dicom" / "ts_chest"), 0, 20]]
    script = tmp_path / "determinism.py"
    script.write_text(DETERMINISM)
    env = {**os.environ, "NUMBA_NUM_THREADS": "4", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), str(SHIPPED), json.dumps(cases), json.dumps(COMBINATIONS)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n  {len(hashes)} label maps in {time.perf_counter() - t0:.0f} s (NUMBA_NUM_THREADS=4, "
          f"{os.cpu_count()} cores):")
    for key, (digest, found, voxels) in hashes.items():
        print(f"    {key:34s} {digest[:16]}...  {found} organs, {voxels:,} organ voxels")
    for name, *_ in cases:
        digests = {v[0] for k, v in hashes.items() if k.startswith(name + " ")}
        assert len(digests) == 1, f"{name}: {len(digests)} different label maps"
        assert min(v[1] for k, v in hashes.items() if k.startswith(name + " ")) >= 3    # real maps, not empty


def test_a_report_verifies_from_another_checkout(data_dir, tmp_path):
    """`npunet segment --report` here with the default weights; then the report, its outputs and the input
    move to another folder (the absolute paths in the report now lead nowhere), the default weights file of
    the run is gone, and a copy of this source tree (another checkout: its own kernel cache, its own
    weights/) runs `python -m npunet verify` in a fresh process: exit 0. A changed output is caught there too."""
    if not SHIPPED.exists():
        pytest.skip(f"no shipped weights at {SHIPPED}")
    run_dir = tmp_path / "site-a"
    (run_dir / "data").mkdir(parents=True)
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    nib.save(src.slicer[:, :, 84:92], run_dir / "data" / "abd_0000.nii.gz")   # liver, kidneys, spleen in view
    default = run_dir / "weights" / "dsconv_eca_unet.npuw"      # the run's default weights: $NPUNET_WEIGHTS
    default.parent.mkdir()
    shutil.copy(SHIPPED, default)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NPUNET_WEIGHTS")}
    rc = subprocess.run([sys.executable, "-m", "npunet", "segment", "data/abd_0000.nii.gz", "-o", "out/",
                         "--statistics", "--report", "--quiet"], cwd=run_dir, capture_output=True, text=True,
                        env={**env, "NPUNET_WEIGHTS": str(default), "PYTHONPATH": str(REPO)}, timeout=600)
    assert rc.returncode == 0, rc.stderr
    report = json.loads((run_dir / "out" / "abd.report.json").read_text())
    assert report["weights"]["default"] is True and report["input"]["path"] == "../data/abd_0000.nii.gz"

    other = tmp_path / "site-b" / "npunet-checkout"
    shutil.copytree(REPO, other, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info",
                                                               ".hypothesis", "runs", "*.nbi", "*.nbc"))
    moved = tmp_path / "site-b" / "received"
    shutil.copytree(run_dir / "out", moved / "out")
    shutil.copytree(run_dir / "data", moved / "data")
    shutil.rmtree(run_dir)                                       # nothing at the recorded absolute paths
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "npunet", "verify", str(moved / "out" / "abd.report.json")],
                        cwd=other, capture_output=True, text=True, env={**env, "NPUNET_TILES": "default"},
                        timeout=900)
    print(f"\n  verify from {other} ({time.perf_counter() - t0:.0f} s, its kernels compiled afresh):\n{rc.stdout}")
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert f"weights {other / 'weights' / 'dsconv_eca_unet.npuw'}: SHA-256 matches" in rc.stdout
    assert "abd.nii.gz: reproduced, byte for byte" in rc.stdout
    assert list((other / "npunet" / "kernels" / "__pycache__").glob("npunet-*"))      # the other tree's code ran
    labels = moved / "out" / "abd.nii.gz"
    img = nib.load(labels)
    data = np.asarray(img.dataobj).copy()
    counts = np.bincount(data.ravel(), minlength=14)
    assert counts[1:].any(), f"the network found no organ in the slab (label counts {counts}): nothing to erase"
    organ = int(np.argmax(counts[1:])) + 1
    data[data == organ] = 0                                      # the largest organ erased by hand
    nib.save(nib.Nifti1Image(data, img.affine, img.header), labels)
    rc = subprocess.run([sys.executable, "-m", "npunet", "verify", str(moved / "out" / "abd.report.json"),
                         "--quiet"], cwd=other, capture_output=True, text=True,
                        env={**env, "NPUNET_TILES": "default"}, timeout=900)
    print(rc.stdout)
    assert rc.returncode == 1 and "abd.nii.gz: DIFFERS" in rc.stdout and LABELS[organ] in rc.stdout


def test_a_split_folder_with_its_report_inside_verifies(stand_ins, capsys, case):
    """--split: report.json inside the folder (published with it, whole), one entry per organ mask; verify
    reproduces each, and a mask edited by hand is named with its organ's voxels."""
    rc, _, err = stand_ins.run(capsys, "segment", case["ct"], "-o", case["out"] / "masks", "--split", "--organs",
                               "liver,right_kidney", "--statistics", "--report", "--weights", case["weights"],
                               "--quiet")
    assert rc == 0, err
    assert files(case["out"]) == ["masks", "masks/labels.json", "masks/liver.nii.gz", "masks/report.json",
                                  "masks/right_kidney.nii.gz", "masks/statistics.csv", "masks/statistics.json"]
    report = read_report(case["out"] / "masks" / "report.json")
    assert [(o["role"], o.get("organ")) for o in report["outputs"]] == [
        ("mask", "liver"), ("mask", "right_kidney"), ("names", None), ("statistics_csv", None),
        ("statistics_json", None)]
    assert report["options"]["split"] is True and report["options"]["organs"] == [1, 2]
    rc, out, _ = stand_ins.run(capsys, "verify", case["out"] / "masks" / "report.json")
    assert rc == 0 and "liver.nii.gz: reproduced, byte for byte" in out, out
    mask_path = case["out"] / "masks" / "right_kidney.nii.gz"
    img = nib.load(mask_path)
    mask = np.asarray(img.dataobj).copy()
    assert mask[:, :, :10].any()
    mask[:, :, :10] = 0
    nib.save(nib.Nifti1Image(mask, img.affine, img.header), mask_path)
    rc, out, _ = stand_ins.run(capsys, "verify", case["out"] / "masks" / "report.json", "--quiet")
    print("\n" + out)
    assert rc == 1 and "right_kidney.nii.gz: DIFFERS" in out and "by organ: right_kidney" in out


def test_verify_mistakes_are_one_line_errors(stand_ins, capsys, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    for argv, word in ((["verify", tmp_path / "none.json"], "no such file"),
                       (["verify", tmp_path / "x.json"], "not an npunet report"),
                       (["verify"], "REPORT.json"),
                       (["verify", tmp_path / "x.json", "--threads", "2"], "unrecognized arguments")):
        try:
            rc, _, err = stand_ins.run(capsys, *argv)
        except SystemExit as e:            # argparse's one line (npunet.cli.OneLineParser), exit code 2
            rc, err = e.code, capsys.readouterr().err
        print(f"\n  {' '.join(map(str, argv[1:]))}: rc {rc}: {err.strip()}")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and word in err
    with pytest.raises(SystemExit) as e:
        main(["verify", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--input" in text and "--weights" in text and "exit codes" in text
