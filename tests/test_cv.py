"""python -m tools.cv, the judge of training recipes: how fold scores become the table, what it refuses, and
how it tells a trained fold from a partial one without torch.

Training a fold takes minutes, so these tests feed the summary hand-made evaluate results; the folds
themselves are trained and scored by the same `python -m tools.train`, npunet segment and npunet evaluate
that their own tests cover (tests/test_train.py checks the status.json a run writes).
"""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from npunet.labels import LABELS  # noqa: E402
from tools import cv  # noqa: E402

ORGANS = [k for k in sorted(LABELS) if k != 0]


def fold_result(case, dsc):
    """An `npunet evaluate --json` result for one case: organ name -> {"DSC", "NSD"}."""
    return {"cases": {case: {LABELS[k]: {"DSC": dsc.get(k, 0.0), "NSD": dsc.get(k, 0.0) / 2} for k in ORGANS}}}


def test_mean_counts_only_folds_where_the_organ_is_labelled_and_present():
    folds = {"a": fold_result("a", {1: 0.9, 2: 0.5}), "b": fold_result("b", {1: 0.7, 2: 1.0}),
             "c": fold_result("c", {1: 0.8, 2: 1.0})}
    status = {"a": {k: "scored" for k in ORGANS},
              "b": {**{k: "scored" for k in ORGANS}, 2: "absent"},             # FLARE gives 1.0: not a score
              "c": {**{k: "scored" for k in ORGANS}, 2: "absent, predicted", 10: "unlabelled"}}
    table = cv.summarise(folds, status)["organs"]
    print("liver", table["liver"]["mean"], "right_kidney", table["right_kidney"]["mean"],
          table["right_kidney"]["false_positive"])
    assert table["liver"]["mean"] == {"DSC": 0.8, "NSD": 0.4, "n": 3}
    assert table["right_kidney"]["mean"] == {"DSC": 0.5, "NSD": 0.25, "n": 1}
    assert table["right_kidney"]["false_positive"] == "1 of 2"
    assert table["right_kidney"]["folds"]["b"] == "absent"
    assert table["esophagus"]["folds"]["c"] == "unlabelled" and table["esophagus"]["mean"]["n"] == 2


def test_an_organ_scored_nowhere_has_no_mean_and_stays_out_of_the_overall_mean():
    folds = {"a": fold_result("a", {k: 0.6 for k in ORGANS})}
    status = {"a": {**{k: "scored" for k in ORGANS}, 9: "absent"}}
    summary = cv.summarise(folds, status)
    assert summary["organs"]["gallbladder"]["mean"]["DSC"] is None
    assert math.isclose(summary["mean_over_organs"]["DSC"], 0.6)
    assert "| gallbladder | absent | - | 0 of 1 |" in cv.markdown(summary, ["a"])


def test_another_recipe_in_a_used_output_folder_is_refused(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"folds": ["ts_abdomen"], "recipe": ["--epochs", "20"]}))
    with pytest.raises(SystemExit) as stop:
        cv.main(["--output", str(tmp_path), "--data", str(tmp_path / "no_data"), "--", "--epochs", "40"])
    print(stop.value.code)
    assert "another recipe (--epochs 20)" in str(stop.value.code) and "--epochs 40" in str(stop.value.code)


def test_recipe_must_not_choose_the_folds_own_options(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cv.main(["--output", str(tmp_path), "--data", str(tmp_path / "no_data"), "--", "--holdout", "ts_chest"])
    assert "must not choose" in str(stop.value.code)


def test_importing_cv_imports_no_torch():
    """cv reads dataset.json and the folds' status.json itself; torch is loaded only to train or convert."""
    code = "import sys, tools.cv; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cv.REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_fold_state_reads_status_json_and_falls_back_to_the_checkpoint(tmp_path):
    import torch
    from tools.training.status import write_status
    assert cv.fold_state(tmp_path) == "new"
    torch.save({"complete": True}, tmp_path / "checkpoint.pt")
    assert cv.fold_state(tmp_path) == "trained"                     # no status.json: the checkpoint says
    write_status(tmp_path, 3, 6, False)
    assert cv.fold_state(tmp_path) == "partial"                     # status.json, newer: believed
    ns = (tmp_path / "checkpoint.pt").stat().st_mtime_ns
    os.utime(tmp_path / "status.json", ns=(ns - 10**9, ns - 10**9))
    assert cv.fold_state(tmp_path) == "trained"                     # older than the checkpoint: not trusted


def test_so_far_scores_the_kept_checkpoints_of_running_folds_without_training(data_dir, tmp_path, capsys):
    """--so-far: a fold that has kept its step-2000 checkpoint (its score already cached beside it) is tabled
    under step 2000; a fold with no checkpoint yet and the steps nobody reached are left out; the recipe comes
    from recipe.json, which is not rewritten."""
    import os
    recipe = {"folds": ["ts_chest", "amos_0013"], "recipe": ["--epochs", "200"], "command": "the first one"}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    fold = tmp_path / "fold_ts_chest"
    (fold / "pred").mkdir(parents=True)
    (fold / "checkpoint.pt").write_bytes(b"partial")
    (fold / "status.json").write_text(json.dumps({"step": 3100, "total_steps": 20000, "complete": False}))
    (fold / "checkpoint_step2000.pt").write_bytes(b"kept")
    (fold / "evaluate_step2000.json").write_text(json.dumps(fold_result("ts_chest", {1: 0.91, 3: 0.77})))
    os.utime(fold / "checkpoint_step2000.pt", (1, 1))                       # the score is newer: reused
    (fold / "pred" / "ts_chest_step2000.nii.gz").symlink_to(data_dir / "labelsTr" / "ts_chest.nii.gz")
    (tmp_path / "fold_amos_0013").mkdir()
    argv = ["--output", str(tmp_path), "--data", str(data_dir), "--folds", "ts_chest,amos_0013",
            "--curve", "2000,5000", "--so-far"]
    assert cv.main(argv) == 0
    text = capsys.readouterr().out
    print(text)
    assert "### step 2000" in text and "step 5000" not in text and "final" not in text
    assert "| organ | ts_chest DSC / NSD |" in text and "amos_0013" not in text
    assert "| liver | 0.910 / 0.455 |" in text
    assert (tmp_path / "cv_curve_so_far.md").read_text() == text.rstrip("\n") + "\n"
    assert json.loads((tmp_path / "recipe.json").read_text()) == recipe
    with pytest.raises(SystemExit, match="has kept a checkpoint of --curve 5000 yet"):
        cv.main(argv[:-3] + ["--curve", "5000", "--so-far"])
