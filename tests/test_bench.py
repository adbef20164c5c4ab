"""tools/bench.py's whole-case report: the stage table comes from the case's own timings (npunet.case.CaseResult,
printed by tools/bench_children/npunet_case.py), adds up to the wall time, and runs end to end on a tiny CT.
No timing is asserted: only that every stage is there and the arithmetic holds."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tools import bench

RECORD = {"engine": "npunet", "nz": 100, "wall_s": 4.0, "read": 0.4, "segment": 2.6, "write": 0.3,
          "timings": {"preprocess": 0.1, "network": 1.8, "upsample_argmax": 0.3, "postprocess": 0.2,
                      "anatomy": 0.15},
          "peak_rss_mib": 500.0}


def test_stage_table_adds_up_to_the_wall_time():
    table = bench.stage_table(RECORD)
    stages = [key for key, _ in bench.STAGES]
    assert sum(table[k] for k in stages) == pytest.approx(table["wall"])
    assert table["network"] == 1.8 and table["read"] == 0.4
    assert table["preprocess_write"] == pytest.approx(0.1 + 0.3)
    assert table["rest"] == pytest.approx(2.6 - (0.1 + 1.8 + 0.3 + 0.2))
    assert table["anatomy"] == 0.15                     # after the segment's time, before the write
    assert table["start-up"] == pytest.approx(4.0 - 0.4 - 2.6 - 0.15 - 0.3)
    assert table["outside_network_share"] == pytest.approx(1 - 1.8 / 4.0)


def test_print_case_names_every_stage(capsys):
    bench.print_case([RECORD], "Some CPU (family 1, model 2)")
    out = capsys.readouterr().out
    assert "Some CPU" in out and "512x512x100" in out
    for _, label in bench.STAGES:
        assert label in out
    assert "outside the network forward: 55 %" in out and "peak RSS 500 MiB" in out


def test_stage_table_of_a_tiny_case(tmp_path):
    """The real child program on a 64x64x5 CT, in a fresh process, through the table."""
    rng = np.random.default_rng(0)
    ct = tmp_path / "tiny_0000.nii.gz"
    nib.save(nib.Nifti1Image(rng.integers(-200, 300, (64, 64, 5)).astype(np.int16), np.diag([1.5, 1.5, 3, 1])), ct)
    rec = bench.run_child("npunet_case", [str(ct), str(tmp_path / "out.nii.gz"), "--threads", "1"])
    assert rec["rc"] == 0 and set(rec["timings"]) >= {"preprocess", "network", "upsample_argmax", "postprocess",
                                                      "anatomy"}
    assert 0 < rec["cpu_s"] < 4 * rec["wall_s"]          # this process and its children (a compiling helper)
    table = bench.stage_table(rec)
    assert sum(table[k] for k, _ in bench.STAGES) == pytest.approx(table["wall"])
    assert all(table[k] >= 0 for k, _ in bench.STAGES if k != "start-up")
    assert (tmp_path / "out.nii.gz").is_file()
    json.dumps(table)                                   # --json keeps it


def test_startup_child_reports_what_it_imported():
    out = subprocess.run([sys.executable, "-m", "tools.bench_children.startup", "--threads", "1"],
                         capture_output=True, text=True, cwd=str(bench.REPO), check=True).stdout
    rec = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))[11:])
    assert rec["total_s"] > 0 and "imported" in rec


def test_numba_floor_child_sets_numba_up_with_and_without_scipy_linalg(tmp_path):
    """The floor rows of --startup: Numba alone, with its defaults (its first cache load imports scipy.linalg)
    and as `npunet segment` sets it up (without); each child is run once to fill the cache, then timed."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    records = {}
    for flag in ([], ["--without-blas"]):
        for _ in range(2):
            out = subprocess.run([sys.executable, "-m", "tools.bench_children.numba_floor", *flag], env=env,
                                 capture_output=True, text=True, cwd=str(bench.REPO), check=True).stdout
        records[bool(flag)] = json.loads(next(line for line in out.splitlines()
                                              if line.startswith("BENCH_JSON "))[11:])
    print(f"\n  defaults {records[False]['total_s']:.2f} s, without scipy.linalg {records[True]['total_s']:.2f} s",
          end="")
    assert records[False]["scipy_linalg"] is True and records[True]["scipy_linalg"] is False
    assert all(r["numpy_s"] > 0 and r["numba_s"] > 0 and r["first_cached_call_s"] > 0 for r in records.values())
