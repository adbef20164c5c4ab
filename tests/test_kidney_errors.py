"""python -m tools.kidney_errors: where a prediction's kidney voxels went, on a made-up case whose answer is known
by construction (a data folder in tmp_path, so no shared data is needed)."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from npunet.labels import LABELS
from tools import kidney_errors

BY_NAME = {name: index for index, name in LABELS.items()}
REPO = kidney_errors.__file__.rsplit("/tools/", 1)[0]


def made_up_case(tmp_path):
    """A right kidney over axial slices 0-29 of a RAS volume (index 29 is the most superior): the prediction
    finds it in the upper ten slices, calls the middle ten spleen and misses the lower ten; a left kidney over
    6 slices only (too short for thirds), found in 4 of them."""
    truth = np.zeros((20, 20, 40), np.uint8)
    truth[2:8, 2:8, 0:30] = BY_NAME["right_kidney"]
    truth[12:18, 12:18, 30:36] = BY_NAME["left_kidney"]
    prediction = np.zeros_like(truth)
    prediction[2:8, 2:8, 20:30] = BY_NAME["right_kidney"]
    prediction[2:8, 2:8, 10:20] = BY_NAME["spleen"]
    prediction[12:18, 12:18, 30:34] = BY_NAME["left_kidney"]
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(truth, np.eye(4)), tmp_path / "labelsTr" / "case_a.nii.gz")
    nib.save(nib.Nifti1Image(prediction, np.eye(4)), tmp_path / "case_a_step5000.nii.gz")
    return tmp_path / "case_a_step5000.nii.gz"


def test_shares_and_poles_of_a_known_prediction(tmp_path):
    prediction = made_up_case(tmp_path)
    lines = kidney_errors.report(prediction, tmp_path, ["case_a", "case"])
    print("\n" + "\n".join(lines))
    right, left = lines[1], lines[2]
    assert "right_kidney (1,080 voxels): itself 0.33, background 0.33, spleen 0.33" in right
    assert right.endswith("recall upper / middle / lower third 1.00 / 0.00 / 0.00")
    assert "left_kidney (216 voxels): itself 0.67, background 0.33; slab too short for thirds" in left


def test_the_poles_follow_the_header_not_the_index(tmp_path):
    """The same voxels with the head-feet axis reversed in the affine (LPI-like): index 0 is now the most
    superior slice, so the found slices are the lower pole."""
    prediction = made_up_case(tmp_path)
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    for path in (tmp_path / "labelsTr" / "case_a.nii.gz", prediction):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), flip), path)
    right = kidney_errors.report(prediction, tmp_path, ["case_a"])[1]
    assert right.endswith("recall upper / middle / lower third 0.00 / 0.00 / 1.00")


def test_a_prediction_of_no_known_case_is_one_line(tmp_path):
    prediction = made_up_case(tmp_path)
    renamed = prediction.rename(tmp_path / "other.nii.gz")
    result = subprocess.run([sys.executable, "-m", "tools.kidney_errors", str(renamed), "--data", str(tmp_path)],
                            check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "does not start with a case name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_draws_of_a_fold_split_the_kidney_slices_into_thirds_and_slabs(data_dir):
    """Uniform over an organ's slices (power 0), the thirds of the one whole-kidney case get equal shares
    within a slice and the slabs the rest; every row sums to 1; power 0.5 moves draws towards small
    cross-sections, so the shares change."""
    pytest.importorskip("torch")
    lines = kidney_errors.draw_shares(data_dir, "tsds_s0009", [0.0, 0.5])
    print("\n" + "\n".join(lines))
    rows = {line.split(":")[0].strip(): [float(v) for v in line.split("slabs ")[1].split(" (")[0].split(" / ")]
            for line in lines[1:]}
    assert set(rows) == {f"{k}, power {p}" for k in ("right_kidney", "left_kidney") for p in ("0", "0.5")}
    for shares in rows.values():
        assert abs(sum(shares) - 1) < 0.02
    for kidney in ("right_kidney", "left_kidney"):
        upper, middle, lower, slabs = rows[f"{kidney}, power 0"]
        assert max(upper, middle, lower) - min(upper, middle, lower) <= 0.02 and slabs > 0.2
        assert rows[f"{kidney}, power 0.5"] != rows[f"{kidney}, power 0"]
