"""Cohort runs (npunet.cohort) on a real Dask LocalCluster with the real network: the outputs are byte-identical
to a serial `npunet segment`, a bad case fails alone (exit 1, its one-line error in the manifest), a worker
killed while it holds a case loses nothing (the case is retried on another worker; nothing missing, duplicated
or partial), and an interrupted run, re-run, skips what was done. The cases are slabs of a few slices cut from
the real CTs in ../shared/data. One LocalCluster, started as `--workers 2` starts it, serves the whole module
(starting workers and loading their Numba cache costs seconds).

The bookkeeping (claims, completion records, re-run rules, two runs at once, the command line's errors)
is tested in this process with the fast fake network of test_segment_cli."""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet.cli import main
from npunet.cohort.claims import CaseBusy, acquire, owner_record
from npunet.cohort.manifest import (file_digest, foreign_files, read_manifest, record_path, record_problem,
                                state_folder, write_record)

from test_segment_cli import INJECTED, FakeModel, fake, save, small_ct  # noqa: F401  (fake is a fixture)

pytest.importorskip("distributed")

SLABS = {  # case: (source CT, axial slices kept): small, but real anatomy at each CT's own size and spacing
    "amos_0013": ("amos_0013", slice(3, 7)),
    "ts_abdomen": ("ts_abdomen", slice(60, 64)),
    "ts_chest": ("ts_chest", slice(6, 10)),
    "ts_cta": ("ts_cta", slice(80, 84)),
    "tsds_s0002": ("tsds_s0002", slice(40, 44)),
    "tsds_s0003": ("tsds_s0003", slice(60, 64)),
}
BIG = ("tsds_s0009", slice(60, 92))      # 32 slices: holds a worker for a second or more
BAD = b"this is not a NIfTI file " * 40


def make_folder(data_dir, folder: Path, cases: dict, bad: bool = True) -> Path:
    folder.mkdir(parents=True)
    for case, (source, slab) in cases.items():
        img = nib.load(data_dir / "imagesTr" / f"{source}_0000.nii.gz")
        nib.save(img.slicer[:, :, slab], folder / f"{case}_0000.nii.gz")
    if bad:
        (folder / "broken_0000.nii.gz").write_bytes(BAD)
    return folder


def run_cli(capsys, *argv):
    """(exit code, stderr), without the anatomy line of the fake network's noise labels (see test_segment_cli)."""
    rc = main(["segment", *map(str, argv)], **INJECTED)
    captured = capsys.readouterr()
    return rc, "".join(line for line in captured.err.splitlines(True) if ": warning: anatomy check: " not in line)


def leftovers(folder: Path) -> list[str]:
    """Temporary files, stale-lock names and locks: what a clean finish leaves none of."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".tmp" in p.name or p.name.endswith((".lock", ".stale")))


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("npunet_manifest"))


def expected_files(case_names) -> list[str]:
    return sorted(f"{c}{suffix}" for c in case_names for suffix in (".nii.gz", ".labels.json"))


@pytest.fixture(scope="module")
def cases(data_dir, tmp_path_factory):
    """Input folders and the serial `npunet segment` outputs to compare with (real network, 2 threads)."""
    root = tmp_path_factory.mktemp("cohort")
    small = make_folder(data_dir, root / "small", SLABS)
    big = make_folder(data_dir, root / "big", {"big": BIG, **{k: SLABS[k] for k in ("ts_cta", "amos_0013")}})
    serial = root / "serial"
    assert main(["segment", str(small), "-o", str(serial), "--quiet"]) == 1        # the broken case fails
    big_case = big / "big_0000.nii.gz"
    assert main(["segment", str(big_case), "-o", str(serial) + os.sep, "--quiet"]) == 0
    return {"small": small, "big": big, "serial": serial}


@pytest.fixture(scope="module")
def client():
    """The LocalCluster that `--workers 2` starts (2 worker processes, one case at a time each), started once
    for the module: the tests below share it."""
    from npunet.cohort import cluster
    client, close = cluster.connect(workers=2)
    yield client
    close()


@pytest.fixture
def workers_2_is_the_shared_cluster(client, monkeypatch):
    """`--workers N` calls npunet.cohort.cluster.connect(workers=N); hand it the module's cluster (started by that
    same call) instead of a second one, and record the call."""
    from npunet.cohort import cluster
    calls = []

    def connect(workers=None, scheduler=None):
        calls.append({"workers": workers, "scheduler": scheduler})
        return client, lambda: None
    monkeypatch.setattr(cluster, "connect", connect)
    return calls


def assert_identical_to_serial(out: Path, serial: Path, case_names) -> None:
    for case in case_names:
        for name in (f"{case}.nii.gz", f"{case}.labels.json"):
            got, want = (out / name).read_bytes(), (serial / name).read_bytes()
            assert got == want, f"{name}: {len(got)} bytes differ from the serial output's {len(want)}"
    print(f"\n  {len(case_names)} cases byte-identical to serial `npunet segment`")


# ------------------------------------------------------------------------------ on a real LocalCluster --

def test_workers_2_matches_serial_and_a_bad_case_fails_alone(cases, workers_2_is_the_shared_cluster, tmp_path,
                                                             capsys):
    out = tmp_path / "pred"
    rc, err = run_cli(capsys, cases["small"], "-o", out, "--workers", "2")
    print("\n" + err)
    assert workers_2_is_the_shared_cluster == [{"workers": 2, "scheduler": None}]
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[-1] == "7 cases: 6 segmented, 0 skipped (complete already), 1 failed (broken)"
    assert any("Dask cluster of 2 workers; dashboard http" in line for line in lines)
    assert any("cases/min" in line and "remaining of 7" in line for line in lines)
    error_lines = [line for line in lines if line.startswith("npunet segment: broken: error: ")]
    assert len(error_lines) == 1 and "not a readable NIfTI" in error_lines[0]
    assert_identical_to_serial(out, cases["serial"], SLABS)
    assert outputs(out) == expected_files(SLABS)            # no more, none partial
    assert leftovers(out) == []

    rows = read_manifest(out)
    by_case = {r["case"]: r for r in rows}
    assert sorted(by_case) == sorted([*SLABS, "broken"]) and len(rows) == 7
    broken = by_case.pop("broken")
    assert broken["status"] == "failed" and "not a readable NIfTI" in broken["error"] and "\n" not in broken["error"]
    assert {r["status"] for r in by_case.values()} == {"done"}
    assert len({r["worker"] for r in by_case.values()}) == 2, "both workers should have taken cases"
    for case, r in by_case.items():
        assert r["slices"] == SLABS[case][1].stop - SLABS[case][1].start and r["attempt"] == 1
        labels = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        zooms = nib.load(out / f"{case}.nii.gz").header.get_zooms()
        liver_ml = np.count_nonzero(labels == 1) * float(np.prod(zooms)) / 1000
        assert r["volumes_ml"]["liver"] == pytest.approx(liver_ml, abs=1e-3)
    csv_lines = (out / "npunet_manifest.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,input,output,status,error,seconds,worker,attempt,slices,liver_ml,")
    assert len(csv_lines) == 8 and any(line.startswith("broken,") and ",failed," in line for line in csv_lines)


def test_killed_worker_loses_nothing(cases, client, tmp_path):
    from npunet import segment_many
    out = tmp_path / "pred"
    lock = state_folder(out) / "big.lock"
    seen = {}

    def kill_the_holder():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            seen.update(holder)
            os.kill(int(holder["pid"]), signal.SIGKILL)
            return

    killer = threading.Thread(target=kill_the_holder)
    killer.start()
    rows = segment_many(cases["big"], out, client=client, threads=1)
    killer.join()
    print(f"\n  killed worker {seen.get('worker')} (pid {seen.get('pid')}) while it held 'big'")
    assert seen and int(seen["pid"]) != os.getpid(), "the big case was never seen held"
    by_case = {r["case"]: r for r in rows}
    assert sorted(by_case) == ["amos_0013", "big", "broken", "ts_cta"] and len(rows) == 4
    big = by_case["big"]
    print(f"  'big' then done by {big['worker']}, attempt {big['attempt']}")
    assert big["status"] == "done" and big["attempt"] == 2 and big["worker"] != seen["worker"]
    assert [by_case[c]["status"] for c in ("amos_0013", "ts_cta", "broken")] == ["done", "done", "failed"]
    assert_identical_to_serial(out, cases["serial"], ["big", "amos_0013", "ts_cta"])
    assert outputs(out) == expected_files(["big", "amos_0013", "ts_cta"])
    assert leftovers(out) == []
    assert read_manifest(out) == rows


def test_workers_write_a_report_per_case_and_the_serial_bytes(cases, client, tmp_path):
    """--workers with --report: each case's label map has the serial run's bytes (the serial run used 2 threads,
    the workers 1), its report says so by digest, the manifest names it, and a report verifies in this process."""
    from npunet import segment_many, verify
    from npunet.io.report import read_report
    out = tmp_path / "pred"
    rows = segment_many(cases["small"], out, client=client, threads=1, report=True)
    done = {r["case"]: r for r in rows if r["status"] == "done"}
    assert sorted(done) == sorted(SLABS)
    for case, row in done.items():
        assert row["report"] == str(out / f"{case}.report.json")
        report = read_report(row["report"])
        labels = next(o for o in report["outputs"] if o["role"] == "labels")
        serial = hashlib.sha256((cases["serial"] / f"{case}.nii.gz").read_bytes()).hexdigest()
        assert labels["sha256"] == serial and report["run"]["threads"] == 1 and report["case"] == case
        assert report["input"]["sha256"] == hashlib.sha256(Path(row["input"]).read_bytes()).hexdigest()
    assert_identical_to_serial(out, cases["serial"], SLABS)
    csv_lines = (out / "npunet_manifest.csv").read_text().splitlines()
    assert csv_lines[0].endswith(",report") and any(line.endswith("ts_cta.report.json") for line in csv_lines)
    assert outputs(out) == sorted(expected_files(SLABS) + [f"{c}.report.json" for c in SLABS])
    outcome = verify(out / "ts_cta.report.json")
    print(f"\n  {len(done)} reports; verify ts_cta: {outcome.lines[-1]}")
    assert outcome.ok


def test_interrupted_run_resumes_without_redoing(cases, client, tmp_path, capsys):
    from npunet import segment_many
    out = tmp_path / "pred"
    finished = []

    def interrupt_after_two(row):           # as Ctrl-C would, while the client waits for the next case
        finished.append(row["case"])
        if len(finished) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        segment_many(cases["small"], out, client=client, threads=1, on_case=interrupt_after_two)
    statuses = {r["case"]: r["status"] for r in read_manifest(out)}
    print(f"\n  manifest after the interrupt: {statuses}")
    assert len(statuses) == 7 and "pending" in statuses.values()
    assert sum(s in ("done", "failed") for s in statuses.values()) == 2

    # the cases a worker had started when the client was interrupted run to their end there (a running
    # thread cannot be stopped); wait until no worker executes anything and no claim is held
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (any(client.call_stack().values()) or
                                           list(state_folder(out).glob("*.lock"))):
        time.sleep(0.1)
    complete = sorted(c for c in SLABS if record_path(out, c).exists())
    stamps = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in complete}
    assert len(complete) >= 1 and len(complete) < len(SLABS)

    rc, err = run_cli(capsys, cases["small"], "-o", out, "--scheduler", client.scheduler.address, "--threads", "1")
    print(err)
    assert rc == 1
    rows = {r["case"]: r for r in read_manifest(out)}
    assert sorted(c for c, r in rows.items() if r["status"] == "skipped") == complete
    assert sorted(c for c, r in rows.items() if r["status"] == "done") == sorted(set(SLABS) - set(complete))
    assert rows["broken"]["status"] == "failed"
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in complete} == stamps, "a done case was redone"
    assert err.strip().splitlines()[-1] == (f"7 cases: {6 - len(complete)} segmented, {len(complete)} skipped "
                                            f"(complete already), 1 failed (broken)")
    assert_identical_to_serial(out, cases["serial"], SLABS)
    assert leftovers(out) == []


# ----------------------------------------------------------------------- bookkeeping, in this process --

def test_claims_busy_takeover_heartbeat(tmp_path):
    import subprocess
    lock = tmp_path / ".npunet" / "case.lock"
    first = acquire(lock, owner_record("run-a", "tcp://w1"))
    assert first.attempt == 1 and json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(CaseBusy, match="run run-b"[:7]):            # another run, holder alive: busy
        acquire(lock, owner_record("run-b"))
    retry = acquire(lock, owner_record("run-a", "tcp://w2"))       # the same run again: its holder is gone
    assert retry.attempt == 2 and retry.previous["worker"] == "tcp://w1"
    assert retry.reason == "an earlier attempt of this run"
    assert not first.held() and retry.held()
    first.release()                                                # a superseded claim removes nothing
    assert lock.exists()
    retry.release()
    assert not lock.exists()

    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({**owner_record("run-c"), "pid": gone.pid}))
    claim = acquire(lock, owner_record("run-d"))
    print(f"\n  a dead holder's lock: taken over ({claim.reason})")
    assert claim.reason == f"its process {gone.pid} on this host is gone" and claim.attempt == 1
    claim.release()

    elsewhere = {**owner_record("run-e"), "host": "another-machine"}
    lock.write_text(json.dumps(elsewhere))
    with pytest.raises(CaseBusy, match="another-machine"):
        acquire(lock, owner_record("run-f"), stale_after=60)
    os.utime(lock, (time.time() - 120, time.time() - 120))
    claim = acquire(lock, owner_record("run-f"), stale_after=60, heartbeat=0.05)
    assert claim.reason.startswith("no heartbeat for ")
    os.utime(lock, (time.time() - 120, time.time() - 120))
    time.sleep(0.5)
    assert time.time() - lock.stat().st_mtime < 5, "the heartbeat did not refresh the lock"
    claim.release()
    assert sorted(p.name for p in lock.parent.iterdir()) == []


def test_completion_record_verifies_every_file(tmp_path):
    files = [tmp_path / "c.nii.gz", tmp_path / "c.labels.json"]
    files[0].write_bytes(b"label map bytes")
    files[1].write_text("{}")
    expected = {"case": "c", "input_identity": {"name": "c_0000.nii.gz", "size": 10}, "weights_sha256": "ab" * 32,
                "options": {"postprocess": True, "statistics": False, "preview": False}}
    write_record(tmp_path, {**expected, "files": [file_digest(f) for f in files]})
    record = json.loads(record_path(tmp_path, "c").read_text())
    assert record_problem(record, expected, files) is None
    problems = {
        "other weights": record_problem(record, {**expected, "weights_sha256": "cd" * 32}, files),
        "other options": record_problem(record, {**expected, "options": {**expected["options"], "preview": True}},
                                        files),
        "other input": record_problem(record, {**expected, "input_identity": {"name": "d", "size": 10}}, files),
        "no record": record_problem(None, expected, files),
    }
    files[1].unlink()
    problems["missing"] = record_problem(record, expected, files)
    assert foreign_files(record, files) == []
    files[0].write_bytes(b"label map bytez")                     # same size, other bytes
    problems["changed"] = record_problem(record, expected, files)
    assert foreign_files(record, files) == [files[0]] and foreign_files(None, files) == [files[0]]
    for what, problem in problems.items():
        print(f"\n  {what}: {problem}", end="")
    assert problems["other weights"] == "made with other weights (SHA-256 abababababab..., now cdcdcdcdcdcd...)"
    assert problems["other options"] == "made with other options (preview False, now True)"
    assert problems["other input"] == "made from another input (c_0000.nii.gz of 10 bytes, now d of 10 bytes)"
    assert problems["no record"] == "no completion record"
    assert "changed" in problems["changed"] and "c.labels.json is missing" == problems["missing"]


def fake_folder(tmp_path, n=3, bad=True) -> Path:
    folder = tmp_path / "in"
    for i in range(n):
        save(folder / f"c{i}_0000.nii.gz", small_ct(seed=i))
    if bad:
        (folder / "broken_0000.nii.gz").write_bytes(BAD)
    return folder


def statuses(rows) -> dict:
    return {r["case"]: r["status"] for r in rows}


def test_in_process_reruns_skip_complete_cases_and_refuse_foreign_files(tmp_path, capsys, fake):
    from npunet import segment_many
    inp, out = fake_folder(tmp_path), tmp_path / "out"
    rows = segment_many(inp, out, **fake.inject)
    assert statuses(rows) == {"broken": "failed", "c0": "done", "c1": "done", "c2": "done"} and fake["segment"] == 3
    assert rows[1]["worker"] == f"local:{os.getpid()}" and rows[1]["slices"] == 8
    again = segment_many(inp, out, **fake.inject)
    assert statuses(again) == {"broken": "failed", "c0": "skipped", "c1": "skipped",
                                                "c2": "skipped"} and fake["segment"] == 3

    (out / "c1.nii.gz").write_bytes((out / "c1.nii.gz").read_bytes() + b"\0")   # damaged since
    rows = segment_many(inp, out, **fake.inject)
    assert statuses(rows)["c1"] == "failed" and fake["segment"] == 3
    assert rows[2]["error"] == (f"{out / 'c1.nii.gz'} exists and is not as npunet wrote it (c1.nii.gz changed "
                                f"since it was written (size or SHA-256 differ)); pass --overwrite to replace it")
    rows = segment_many(inp, out, preview=True, **fake.inject)    # other options: not complete, not replaced
    assert statuses(rows)["c0"] == "failed"
    assert "(made with other options (preview False, now True))" in rows[1]["error"]
    rows = segment_many(inp, out, overwrite=True, **fake.inject)
    assert statuses(rows) == {"broken": "failed", "c0": "done", "c1": "done", "c2": "done"} and fake["segment"] == 6

    (out / "c2.nii.gz").unlink()                                   # a lost output: the case is redone
    assert statuses(segment_many(inp, out, **fake.inject))["c2"] == "done" and fake["segment"] == 7
    assert sorted(p.name for p in state_folder(out).iterdir()) == ["c0.done.json", "c1.done.json", "c2.done.json"]


def test_two_runs_at_once_never_write_the_same_case(tmp_path, fake):
    from npunet import segment_many
    inp, out = fake_folder(tmp_path, n=6, bad=False), tmp_path / "out"
    fast_segment = fake.inject["segment_volume"]

    def slower(*args, **kwargs):
        time.sleep(0.1)
        return fast_segment(*args, **kwargs)
    results = {}
    runs = [threading.Thread(target=lambda k=k: results.setdefault(
        k, segment_many(inp, out, load_model=fake.inject["load_model"], segment_volume=slower))) for k in "ab"]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    both = {case: (statuses(results["a"])[case], statuses(results["b"])[case]) for case in statuses(results["a"])}
    print(f"\n  (run a, run b) per case: {both}")
    assert fake["segment"] == 6, "a case was segmented twice"
    for case, pair in both.items():
        assert sorted(pair) in (["busy", "done"], ["done", "skipped"]), (case, pair)


def test_a_case_held_by_another_live_run_is_busy(tmp_path, capsys, fake):
    inp, out = fake_folder(tmp_path, n=2, bad=False), tmp_path / "out"
    lock = state_folder(out) / "c1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({**owner_record("other-run"), "host": "node17", "pid": 4242}))
    rc, err = run_cli(capsys, "--list", write_list(tmp_path, ["in/c0_0000.nii.gz", "in/c1_0000.nii.gz"]), "-o", out)
    print("\n" + err)
    assert rc == 1 and err.strip().splitlines()[-1] == ("2 cases: 1 segmented, 0 skipped (complete already), "
                                                        "0 failed, 1 busy in another run (c1)")
    row = {r["case"]: r for r in read_manifest(out)}["c1"]
    assert row["status"] == "busy" and "host node17, pid 4242" in row["error"]
    assert not (out / "c1.nii.gz").exists() and lock.exists()


def write_list(tmp_path, lines) -> Path:
    path = tmp_path / "cases.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_list_file_mixes_files_and_dicom_series(data_dir, tmp_path, capsys, fake):
    pytest.importorskip("pydicom")
    import shutil
    archive = tmp_path / "archive"
    save(archive / "ward1" / "p1_0000.nii.gz", small_ct(1))
    save(archive / "ward2" / "p2.nii", small_ct(2))
    shutil.copytree(data_dir / "dicom" / "ts_chest", archive / "ward3" / "p3")
    cases = write_list(archive, ["# the cohort", "ward1/p1_0000.nii.gz", "", "  ward2/p2.nii  ", "ward3/p3",
                                 "ward4/gone_0000.nii.gz"])
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "--list", cases, "-o", out, "--quiet")
    print("\n" + err)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"npunet segment: gone: error: {archive / 'ward4' / 'gone_0000.nii.gz'}: no such file or folder",
        "4 cases: 3 segmented, 0 skipped (complete already), 1 failed (gone)"]
    assert outputs(out) == expected_files(["p1", "p2", "p3"])
    rows = {r["case"]: r for r in read_manifest(out)}
    assert rows["p3"]["input"] == str(archive / "ward3" / "p3") and rows["p3"]["slices"] == 20

    # the same, serially and in one folder of DICOM series folders: the same bytes
    series = tmp_path / "series"
    shutil.copytree(archive / "ward3", series)
    shutil.copytree(data_dir / "dicom" / "ts_chest", series / "p4")
    rc, err = run_cli(capsys, series, "-o", tmp_path / "serial", "--quiet")
    assert rc == 0, err
    assert outputs(tmp_path / "serial") == expected_files(["p3", "p4"])
    assert (tmp_path / "serial" / "p3.nii.gz").read_bytes() == (out / "p3.nii.gz").read_bytes()


def test_two_inputs_for_one_case_are_refused(tmp_path, capsys, fake):
    save(tmp_path / "a" / "ct_0000.nii.gz", small_ct(1))
    save(tmp_path / "b" / "ct.nii.gz", small_ct(2))
    rc, err = run_cli(capsys, "--list", write_list(tmp_path, ["a/ct_0000.nii.gz", "b/ct.nii.gz"]), "-o",
                      tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "two inputs for case 'ct'" in err
    assert not (tmp_path / "out").exists() and fake["segment"] == 0


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COHORT_MISTAKES = {
    # name: (arguments after INPUT -o OUT, words of the one-line error)
    "workers 0": (["--workers", "0"], "--workers must be at least 1, got 0"),
    "threads 0": (["--list", "LIST", "--threads", "0"], "--threads must be at least 1, got 0"),
    "workers and scheduler": (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not several"),
    "INPUT and --list": (["--list", "LIST", "INPUT"], "give INPUT or --list FILE, not both"),
    "missing list": (["--list", "nowhere.txt"], "nowhere.txt: no such file (the --list of inputs)"),
    "empty list": (["--list", "EMPTY"], "the --list names no inputs"),
    "output a file name": (["--workers", "1", "OUT.nii.gz"], "a cohort run writes into a folder"),
    "no scheduler there": (["--scheduler", "tcp://127.0.0.1:PORT"], "cannot reach the Dask scheduler at tcp://"),
    "split": (["--workers", "2", "--split"], "--split is for serial runs; a cohort run"),
    "organs": (["--list", "LIST", "--organs", "liver"], "--organs is for serial runs"),
}


@pytest.mark.parametrize("name", list(COHORT_MISTAKES))
def test_cohort_mistakes_give_one_line_and_write_nothing(tmp_path, capsys, fake, name):
    import dask
    args, words = COHORT_MISTAKES[name]
    inp = fake_folder(tmp_path, n=1, bad=False)
    listed = write_list(tmp_path, [inp / "c0_0000.nii.gz"])
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    out = tmp_path / "out"
    subst = {"LIST": str(listed), "EMPTY": str(tmp_path / "empty.txt"), "INPUT": str(inp),
             "nowhere.txt": str(tmp_path / "nowhere.txt"), "OUT.nii.gz": str(tmp_path / "out.nii.gz")}
    args = [subst.get(a, a).replace("PORT", str(free_port())) for a in args]
    if "--list" not in args:
        args = [str(inp), *args]
    if "OUT.nii.gz" in COHORT_MISTAKES[name][0]:
        args = [a for a in args if a != subst["OUT.nii.gz"]] + ["-o", subst["OUT.nii.gz"]]
    else:
        args += ["-o", str(out)]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc, err = run_cli(capsys, *args)
    print(f"\n  {name}: rc {rc}: {err.strip()}")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("npunet segment: error: ") and words in err, err
    assert not out.exists() and not (tmp_path / "out.nii.gz").exists() and fake["segment"] == 0


def test_without_dask_the_cluster_options_say_what_to_install(tmp_path, capsys, fake, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "distributed", None)          # `import distributed` fails as if absent
    inp = fake_folder(tmp_path, n=1, bad=False)
    for option in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]):
        rc, err = run_cli(capsys, inp, "-o", tmp_path / "out", *option)
        print(f"\n  {option[0]}: {err.strip()}")
        assert rc == 2 and err == (f"npunet segment: error: {option[0]} runs on Dask, an optional extra that is "
                                   f"not installed: pip install 'npunet[cluster]'\n")
    assert not (tmp_path / "out").exists()
    rc, err = run_cli(capsys, "--list", write_list(tmp_path, ["in/c0_0000.nii.gz"]), "-o", tmp_path / "out",
                      "--quiet")
    assert rc == 0 and err == "" and (tmp_path / "out" / "c0.nii.gz").exists()   # in-process needs no Dask


def test_help_describes_the_cohort_options(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for words in ("--workers N", "--scheduler tcp://HOST:PORT", "--list FILE", "npunet_manifest.csv",
                  "pip install 'npunet[cluster]'", "docs/cohort.md"):
        assert words in text, words


def test_worker_plugin_refuses_other_weights(tmp_path):
    from npunet.cohort import cluster
    from npunet.errors import NpunetError
    from npunet.weights import default_weights_path, read_weights, save_weights
    shipped = default_weights_path()
    other = tmp_path / "other.npuw"                 # valid weights, other bytes (another metadata note)
    header, tensors = read_weights(shipped)
    save_weights(other, header["spec"], tensors, header["labels"], header["preprocessing"],
                 {**header.get("metadata", {}), "note": "another file"})
    sha = file_digest(shipped)["sha256"]
    for weights, words in ((other, f"have SHA-256 {file_digest(other)['sha256'][:12]}..., the run uses {sha[:12]}"),
                           (tmp_path / "absent.npuw", "no weights file at")):
        plugin = cluster.ModelOnWorker(str(weights), sha, threads=1)
        plugin.setup()
        with pytest.raises(NpunetError, match="give every worker the same file") as e:
            plugin.call(lambda model, address: "ran", "tcp://w")
        print(f"\n  {weights.name}: {e.value}")
        assert words in str(e.value)
    plugin = cluster.ModelOnWorker(None, sha, threads=1)
    plugin.setup()
    assert plugin.call(lambda model, address, x: (type(model).__name__, address, x), "tcp://w", 7) == \
        ("Network", "tcp://w", 7)


def test_assume_orientation_reaches_every_case(tmp_path, capsys, fake):
    from npunet import segment_many
    inp = tmp_path / "in"
    save(inp / "plain_0000.nii.gz", small_ct(3), qcode=0, scode=0)       # no orientation in the header
    listed = write_list(tmp_path, ["in/plain_0000.nii.gz"])
    rc, err = run_cli(capsys, "--list", listed, "-o", tmp_path / "out", "--quiet")
    assert rc == 1 and "orientation" in err and not (tmp_path / "out" / "plain.nii.gz").exists()
    rc, err = run_cli(capsys, "--list", listed, "-o", tmp_path / "out", "--quiet", "--assume-orientation", "LPS")
    assert rc == 0, err
    record = json.loads(record_path(tmp_path / "out", "plain").read_text())
    assert record["options"]["assume_orientation"] == "LPS"
    rows = segment_many([inp / "plain_0000.nii.gz"], tmp_path / "out", assume_orientation="RAS", **fake.inject)
    assert rows[0]["status"] == "failed" and "assume_orientation LPS, now RAS" in rows[0]["error"]
