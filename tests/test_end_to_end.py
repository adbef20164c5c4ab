"""`npunet segment` with the shipped weights on the real CTs in $NPUNET_DATA, as a user runs it:
DICOM and NIfTI inputs agree, the output keeps the input's grid for RAS / LAS / LPS inputs, a folder of
cases works, statistics agree with voxel counts, and evaluating a label map against itself gives 1.0."""

import json

import nibabel as nib
import numpy as np
import pytest

import npunet
from npunet.cli import main

pytestmark = pytest.mark.skipif(not npunet.default_weights_path().exists(),
                                reason=f"no shipped weights at {npunet.default_weights_path()}")


def segment(capsys, *argv):
    rc = main(["segment", *map(str, argv), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return rc


def labels_of(path):
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def chest_labels(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("chest") / "ts_chest.nii.gz"
    assert main(["segment", str(data_dir / "imagesTr" / "ts_chest_0000.nii.gz"), "-o", str(out), "--quiet",
                 "--statistics"]) == 0
    return out


def test_nifti_output_keeps_grid_and_has_sidecar(data_dir, chest_labels):
    src = nib.load(data_dir / "imagesTr" / "ts_chest_0000.nii.gz")
    out = nib.load(chest_labels)
    assert out.shape == src.shape and out.get_data_dtype() == np.uint8
    assert np.array_equal(out.affine, src.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == \
           (int(src.header["qform_code"]), int(src.header["sform_code"]))
    names = json.loads(chest_labels.with_name("ts_chest.labels.json").read_text())
    assert names["1"] == "liver" and len(names) == 14
    found = sorted(set(np.unique(labels_of(chest_labels))) - {0})
    print(f"\n  ts_chest: labels present {found}")
    assert 1 in found   # the liver fills much of this upper-abdomen scan


def test_dicom_series_gives_the_same_label_map(data_dir, chest_labels, tmp_path, capsys):
    out = tmp_path / "from_dicom.nii.gz"
    segment(capsys, data_dir / "dicom" / "ts_chest", "-o", out)
    dicom_img, nifti_img = nib.load(out), nib.load(chest_labels)
    # The DICOM reader keeps DICOM's own row order; compare both in RAS.
    a = np.asarray(nib.as_closest_canonical(dicom_img).dataobj)
    b = np.asarray(nib.as_closest_canonical(nifti_img).dataobj)
    agree = float((a == b).mean())
    print(f"\n  DICOM vs NIfTI label agreement {agree * 100:.4f} % over {a.size} voxels")
    assert np.allclose(nib.as_closest_canonical(dicom_img).affine, nib.as_closest_canonical(nifti_img).affine,
                       atol=1e-3)
    assert np.array_equal(a, b)


def test_statistics_agree_with_voxel_counts(chest_labels):
    rows = json.loads(chest_labels.with_name("ts_chest.statistics.json").read_text())
    img = nib.load(chest_labels)
    labels = labels_of(chest_labels)
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
    rows = list(rows.values())      # {organ: {"label", "voxels", "volume_ml", "mean_hu"}}
    checked = 0
    for row in rows:
        label = int(row["label"])
        count = int((labels == label).sum())
        assert int(row["voxels"]) == count
        assert row["volume_ml"] == pytest.approx(count * voxel_ml, rel=1e-3, abs=1e-3)
        checked += count > 0
    assert checked >= 1


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS"])
def test_geometry_kept_for_each_orientation(data_dir, tmp_path, capsys, codes):
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(src.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    img = src.as_reoriented(ornt)
    inp = tmp_path / f"abd_{codes}_0000.nii.gz"
    nib.save(img, inp)
    out = tmp_path / f"abd_{codes}.nii.gz"
    segment(capsys, inp, "-o", out)
    res = nib.load(out)
    assert res.shape == img.shape and np.array_equal(res.affine, img.affine)
    assert nib.aff2axcodes(res.affine) == tuple(codes)
    # the same anatomy gets the same labels whatever the storage order
    canon = np.asarray(nib.as_closest_canonical(res).dataobj)
    ref_path = tmp_path / "ref.nii.gz"
    if not ref_path.exists():
        segment(capsys, data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz", "-o", ref_path)
    assert np.array_equal(canon, np.asarray(nib.as_closest_canonical(nib.load(ref_path)).dataobj))


def test_folder_of_cases_and_self_evaluation(data_dir, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    for case in ("ts_abdomen", "ts_chest"):
        (cases / f"{case}_0000.nii.gz").symlink_to(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
    out = tmp_path / "pred"
    segment(capsys, cases, "-o", str(out) + "/")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["ts_abdomen.nii.gz", "ts_chest.nii.gz"]
    js = tmp_path / "self.json"
    assert main(["evaluate", str(out), str(out), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    values = [v for case in report["cases"].values() for organ in case.values() for v in organ.values()]
    print(f"\n  self-evaluation: {len(values)} values, min {min(values)}")
    assert values and all(v == 1.0 for v in values)
