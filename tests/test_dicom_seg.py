"""The outputs that clinical viewers open, with the shipped weights on the DICOM series dicom/ts_chest:
the DICOM SEG (--output-type dicom-seg) reads back with pydicom and highdicom, its masks equal the NIfTI
result of the same series voxel for voxel in the source's slice order, it references the input's SOP
instances and frame of reference, keeps Study and Patient, codes its segments with SNOMED CT and passes a
DICOM validator (dciodvfy where installed, else highdicom's read-back); --split masks and --organs subsets
equal the corresponding labels of the full map.

The network runs once per module: the command is given (segment_volume=) npunet.pipeline.segment_array
behind a cache keyed on the volume's bytes, so every output type below is written from the same label map,
the one the NIfTI output holds."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import npunet
from npunet.cli import main
from npunet.labels import LABELS, SNOMED_CATEGORY, SNOMED_LATERALITY, SNOMED_TYPE
from npunet.pipeline import segment_array

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
NAME_TO_LABEL = {v: k for k, v in LABELS.items()}


# ------------------------------------------------------------------------------------ SNOMED CT codes --

def test_snomed_codes_are_those_of_the_dicom_context_groups():
    """Every code in npunet.labels is in the DICOM context group it claims (pydicom's tables of PS3.16)."""
    from pydicom.sr import _cid_dict
    from pydicom.sr.codedict import codes

    def in_cid(cid, code, meaning):
        keywords = _cid_dict.cid_concepts[cid]["SCT"]
        found = {(getattr(codes.SCT, k).value, getattr(codes.SCT, k).meaning) for k in keywords}
        return (code, meaning) in found
    assert in_cid(7150, *SNOMED_CATEGORY)
    for side, (code, meaning) in SNOMED_LATERALITY.items():
        assert in_cid(244, code, meaning), side
    assert sorted(SNOMED_TYPE) == sorted(k for k in LABELS if k)
    for label, (code, meaning, side) in SNOMED_TYPE.items():
        assert in_cid(7151, code, meaning), (label, code, meaning)
        name = LABELS[label]
        assert meaning.lower().replace(" ", "_") in name, (name, meaning)     # liver -> Liver, ...
        assert (side is None) == (not name.startswith(("left_", "right_"))) and (side is None or name.startswith(side))
    print(f"\n  {len(SNOMED_TYPE)} organ codes in CID 7151, category in CID 7150, sides in CID 244")


# ---------------------------------------------------------------------------- one network run per module --

@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """run(*argv) -> stderr of `npunet segment ...` (asserting exit 0), with the network cached."""
    weights = npunet.default_weights_path()
    if not weights.exists():
        pytest.skip(f"no shipped weights at {weights}")
    real = segment_array
    cache, calls = {}, {"network": 0}

    def cached(volume, affine, model, **options):
        key = hashlib.sha256(np.ascontiguousarray(volume).tobytes() + np.asarray(affine).tobytes()).hexdigest()
        if key not in cache:
            calls["network"] += 1
            cache[key] = real(volume, affine, model, **options)
        return cache[key].copy()

    def run_segment(*argv, capsys=None):
        """stderr without the anatomy line (a chest scan cuts its organs; tests/test_anatomy.py tests it)."""
        rc = main(["segment", *map(str, argv), "--quiet"], segment_volume=cached)
        err = capsys.readouterr().err if capsys is not None else ""
        assert rc == 0, err
        return "".join(line for line in err.splitlines(True) if ": warning: anatomy check: " not in line)
    run_segment.calls = calls
    yield run_segment
    print(f"\n  the network ran {calls['network']} time(s) for this module")


@pytest.fixture(scope="module")
def outputs(run, data_dir, tmp_path_factory):
    """The NIfTI label map and the DICOM SEG of dicom/ts_chest."""
    out = tmp_path_factory.mktemp("chest")
    series = data_dir / "dicom" / "ts_chest"
    run(series, "-o", out / "labels.nii.gz")
    run(series, "-o", out / "seg.dcm", "--output-type", "dicom-seg")
    return {"series": series, "nifti": out / "labels.nii.gz", "seg": out / "seg.dcm"}


def source_slices(series: Path):
    """[(file, SOP Instance UID, header)] in the source's own order (file names), the UID from the dataset
    or, where an anonymiser blanked it, from the file meta (the same identifier by definition)."""
    slices = []
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uid = str(ds.get("SOPInstanceUID", "") or "") or str(ds.file_meta.MediaStorageSOPInstanceUID)
        slices.append((f, uid, ds))
    return slices


def nifti_slice(img, ds) -> np.ndarray:
    """The (rows, columns) plane of a label image that lies at the DICOM image `ds`'s position."""
    lps = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
    i, j, k = (np.linalg.inv(img.affine) @ ras)[:3]
    assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3, (i, j, k)
    return np.asarray(img.dataobj)[:, :, int(round(k))].T


def seg_labels_by_source(seg_path: Path, uids: list[str]) -> np.ndarray:
    """The SEG decoded per source image (in the order of `uids`), as npunet label ids."""
    seg = hd.seg.segread(seg_path)
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False,
                                                assert_missing_frames_are_empty=True)
    to_label = np.zeros(int(numbers.max()) + 1 if numbers.size else 1, np.uint8)
    for item in seg.SegmentSequence:
        to_label[int(item.SegmentNumber)] = NAME_TO_LABEL[item.SegmentLabel]
    return to_label[numbers]


# ----------------------------------------------------------------------------------------- DICOM SEG --

def test_seg_masks_equal_the_nifti_result_in_source_order(outputs):
    ds = pydicom.dcmread(outputs["seg"])
    assert ds.SOPClassUID == SEGMENTATION_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    slices = source_slices(outputs["series"])
    uids = [uid for _, uid, _ in slices]
    decoded = seg_labels_by_source(outputs["seg"], uids)
    img = nib.load(outputs["nifti"])
    expected = np.stack([nifti_slice(img, header) for _, _, header in slices])
    assert decoded.shape == expected.shape == (len(slices), int(slices[0][2].Rows), int(slices[0][2].Columns))
    found = sorted(set(np.unique(expected)) - {0})
    print(f"\n  {len(slices)} source images, {int(ds.NumberOfFrames)} frames, segments "
          f"{[item.SegmentLabel for item in ds.SegmentSequence]}; voxels differing from the NIfTI result: "
          f"{int((decoded != expected).sum())} of {expected.size}")
    assert len(found) >= 3       # liver and more: a real comparison, not of two empty maps
    assert np.array_equal(decoded, expected)
    assert [int(item.SegmentNumber) for item in ds.SegmentSequence] == list(range(1, len(found) + 1))
    assert [NAME_TO_LABEL[item.SegmentLabel] for item in ds.SegmentSequence] == found   # one per organ found


def test_seg_references_the_input(outputs):
    ds = pydicom.dcmread(outputs["seg"])
    slices = source_slices(outputs["series"])
    uids = {uid for _, uid, _ in slices}
    assert ds.FrameOfReferenceUID == slices[0][2].FrameOfReferenceUID
    (series_item,) = ds.ReferencedSeriesSequence
    referenced = {item.ReferencedSOPInstanceUID for item in series_item.ReferencedInstanceSequence}
    per_frame = {src.ReferencedSOPInstanceUID for frame in ds.PerFrameFunctionalGroupsSequence
                 for derivation in frame.DerivationImageSequence for src in derivation.SourceImageSequence}
    print(f"\n  referenced {len(referenced)} instances ({len(per_frame)} by frames) of {len(uids)} in the input")
    assert referenced == uids and per_frame <= uids
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, series_item.SeriesInstanceUID):
        assert uid and len(uid) <= 64
    assert ds.SeriesInstanceUID != series_item.SeriesInstanceUID     # a new series, not the CT's


def test_anonymised_series_gets_derived_uids_and_a_warning(run, outputs, data_dir, tmp_path, capsys):
    """dicom/ts_chest has blank Study/Series/SOP Instance UIDs in its datasets (its file meta has the SOP
    Instance UIDs): the SEG uses the file meta's, derives the others the same way every run, and says so."""
    err = run(outputs["series"], "-o", tmp_path / "again.dcm", "--output-type", "dicom-seg", capsys=capsys)
    print(f"\n  {err.strip()}")
    assert len(err.strip().splitlines()) == 1 and "warning" in err and "StudyInstanceUID" in err
    first, again = pydicom.dcmread(outputs["seg"]), pydicom.dcmread(tmp_path / "again.dcm")
    assert first.StudyInstanceUID == again.StudyInstanceUID
    assert (first.ReferencedSeriesSequence[0].SeriesInstanceUID
            == again.ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert first.SeriesInstanceUID != again.SeriesInstanceUID and first.SOPInstanceUID != again.SOPInstanceUID


@pytest.fixture(scope="module")
def identified_series(outputs, tmp_path_factory):
    """A copy of the series with its identifiers filled in, as a PACS export has them."""
    folder = tmp_path_factory.mktemp("identified") / "series"
    folder.mkdir()
    for f in sorted(outputs["series"].iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.11111"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.22222"
        ds.PatientID, ds.PatientName, ds.StudyID, ds.SeriesNumber = "NPUNET-7", "Test^Patient", "42", 3
        ds.save_as(folder / f.name)
    return folder


def test_study_and_patient_kept(run, identified_series, tmp_path, capsys):
    out = tmp_path / "seg.dcm"
    err = run(identified_series, "-o", out, "--output-type", "dicom-seg", capsys=capsys)
    assert err.strip() == ""      # nothing derived, nothing to warn about
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.11111" and ds.StudyID == "42"
    assert ds.PatientID == "NPUNET-7" and str(ds.PatientName) == "Test^Patient"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.22222"
    assert ds.SeriesInstanceUID not in ("1.2.826.0.1.3680043.8.498.22222", "")


def test_segments_are_coded_and_name_the_algorithm(outputs):
    ds = pydicom.dcmread(outputs["seg"])
    weights_sha256 = hashlib.sha256(npunet.default_weights_path().read_bytes()).hexdigest()
    for item in ds.SegmentSequence:
        label = NAME_TO_LABEL[item.SegmentLabel]
        code, meaning, side = SNOMED_TYPE[label]
        (category,) = item.SegmentedPropertyCategoryCodeSequence
        (kind,) = item.SegmentedPropertyTypeCodeSequence
        assert (category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning) == \
               (SNOMED_CATEGORY[0], "SCT", SNOMED_CATEGORY[1])
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == (code, "SCT", meaning)
        modifiers = [(m.CodeValue, m.CodeMeaning) for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        assert modifiers == ([] if side is None else [SNOMED_LATERALITY[side]])
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "npunet"
        (algorithm,) = item.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "npunet" and algorithm.AlgorithmVersion == npunet.__version__
        assert f"weights_sha256={weights_sha256}" in algorithm.AlgorithmParameters
    print(f"\n  {len(ds.SegmentSequence)} segments coded; weights SHA-256 {weights_sha256[:16]}...")
    assert ds.SoftwareVersions == npunet.__version__ and ds.Manufacturer == "npunet"


@pytest.mark.parametrize("which", ["anonymised", "identified"])
def test_seg_passes_a_dicom_validator(run, outputs, identified_series, tmp_path, capsys, which):
    """dciodvfy (Debian's dicom3tools; .ci/run installs it where it can) when present; otherwise highdicom's
    read-back and the Type 1 identifiers dciodvfy is known to check. The test says which one ran."""
    if which == "anonymised":
        path = outputs["seg"]
    else:
        path = tmp_path / "seg.dcm"
        run(identified_series, "-o", path, "--output-type", "dicom-seg")
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        report = (result.stdout + result.stderr).splitlines()
        errors = [line for line in report if line.startswith("Error")]
        warnings = [line for line in report if line.startswith("Warning")]
        iod = next((line for line in report if not line.startswith(("Warning", "Error"))), "?")
        print(f"\n  validator: dciodvfy ({which}): IOD {iod}, {len(errors)} errors, {len(warnings)} warnings")
        for line in warnings:
            print(f"    {line}")
        assert "Segmentation" in report and not errors, "\n".join(errors)
    else:
        seg = hd.seg.segread(path)
        print(f"\n  validator: highdicom read-back ({which}; dciodvfy is not installed: "
              f"apt-get install dicom3tools)")
        assert seg.SOPClassUID == SEGMENTATION_STORAGE
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            assert str(seg.get(key, "") or ""), key
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)


# ------------------------------------------------------------------------------------- --split, --organs --

def test_split_masks_equal_the_full_map(run, outputs, tmp_path):
    run(outputs["series"], "-o", tmp_path / "masks", "--split", "--statistics")
    full = nib.load(outputs["nifti"])
    labels = np.asarray(full.dataobj)
    names = json.loads((tmp_path / "masks" / "labels.json").read_text())
    assert names == {str(k): v for k, v in LABELS.items()}
    files = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert files == sorted([f"{v}.nii.gz" for k, v in LABELS.items() if k] +
                           ["labels.json", "statistics.csv", "statistics.json"])
    empty = []
    for k, name in LABELS.items():
        if k == 0:
            continue
        mask = nib.load(tmp_path / "masks" / f"{name}.nii.gz")
        assert mask.get_data_dtype() == np.uint8 and np.array_equal(mask.affine, full.affine)
        assert mask.shape == full.shape and int(mask.header["sform_code"]) == int(full.header["sform_code"])
        data = np.asarray(mask.dataobj)
        assert np.array_equal(data, (labels == k).astype(np.uint8)), name
        if not data.any():
            empty.append(name)
    print(f"\n  13 masks equal the full map's labels; written empty: {empty}")
    assert empty and len(empty) < 13     # some organs are not in this chest scan: their masks exist, empty
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


def test_organs_subset_in_every_output(run, outputs, tmp_path, capsys):
    full = np.asarray(nib.load(outputs["nifti"]).dataobj)
    keep = (1, 3, 13)
    expected = np.where(np.isin(full, keep), full, 0).astype(np.uint8)
    series = outputs["series"]
    run(series, "-o", tmp_path / "sub.nii.gz", "--organs", "liver,Spleen,13", "--statistics")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "sub.nii.gz").dataobj), expected)
    assert json.loads((tmp_path / "sub.labels.json").read_text()) == \
        {"0": "background", "1": "liver", "3": "spleen", "13": "left_kidney"}
    rows = json.loads((tmp_path / "sub.statistics.json").read_text())
    assert sorted(rows) == ["left_kidney", "liver", "spleen"]
    assert all(rows[LABELS[k]]["voxels"] == int((full == k).sum()) for k in keep)

    run(series, "-o", tmp_path / "masks", "--split", "--organs", "spleen,liver,left kidney")
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == \
        ["labels.json", "left_kidney.nii.gz", "liver.nii.gz", "spleen.nii.gz"]
    for k in keep:
        mask = np.asarray(nib.load(tmp_path / "masks" / f"{LABELS[k]}.nii.gz").dataobj)
        assert np.array_equal(mask, (full == k).astype(np.uint8))

    run(series, "-o", tmp_path / "sub.dcm", "--output-type", "dicom-seg", "--organs", "1,3,13")
    slices = source_slices(series)
    decoded = seg_labels_by_source(tmp_path / "sub.dcm", [uid for _, uid, _ in slices])
    img = nib.load(tmp_path / "sub.nii.gz")
    assert np.array_equal(decoded, np.stack([nifti_slice(img, h) for _, _, h in slices]))
    labels = [item.SegmentLabel for item in pydicom.dcmread(tmp_path / "sub.dcm").SegmentSequence]
    print(f"\n  --organs liver,spleen,left_kidney: kept {[LABELS[k] for k in keep if (full == k).any()]}, "
          f"SEG segments {labels}")
    assert labels == [LABELS[k] for k in keep if (full == k).any()]


def test_python_api_choices(run, outputs, tmp_path):
    results = npunet.segment(outputs["series"], tmp_path / "api.dcm", output_type="dicom-seg", organs=["liver"])
    assert [(r.ok, r.output.name) for r in results] == [(True, "api.dcm")]
    assert [item.SegmentLabel for item in pydicom.dcmread(tmp_path / "api.dcm").SegmentSequence] == ["liver"]
    results = npunet.segment(outputs["series"], tmp_path / "api_masks", split=True, organs="liver,2")
    assert sorted(p.name for p in results[0].output.iterdir()) == \
        ["labels.json", "liver.nii.gz", "right_kidney.nii.gz"]
