"""Ctrl-C, SIGTERM, closed pipes and concurrent writers, with real processes and real signals.

The runs that must be caught at a precise moment (a temporary output file exists; two runs about to
publish the same output) use a small driver: the real `npunet` command in a child process, where the test
replaces the network by a fast fake and makes nibabel's save (or the statistics writer) wait after writing
its temporary file. Nothing in npunet itself knows about the tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet.errors import InputError
from npunet.labels import LABELS
from npunet.publish import atomic_write, remove_temporaries, staged_folder, unpublish

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "tests" / "fixtures" / "tiny_standard_unet.npuw"

DRIVER = r'''
import os, sys, time
from npunet import signals
signals.install()
import nibabel as nib
import numpy as np
import npunet.io.statistics as st
from npunet.labels import LABELS

class FakeModel:
    labels = dict(LABELS)
    preprocessing = {}

load_model = lambda weights=None: FakeModel()
segment_volume = lambda volume, affine, model, **kw: np.zeros(volume.shape, "uint8")   # no organ, no anatomy line
mode, flags = sys.argv[1], sys.argv[2]

def wait_here(path):
    if mode.startswith("pause"):          # a temporary file exists now: say where, wait for the signal
        print("TEMP", path, flush=True)
        time.sleep(120)
    elif mode == "race":                  # both runs stop here, temporary file written, then go at once
        open(os.path.join(flags, "ready-%d" % os.getpid()), "w").close()
        while not os.path.exists(os.path.join(flags, "go")):
            time.sleep(0.01)

real_save, real_text = nib.save, st._write_text
def save(img, filename):
    real_save(img, filename)
    if mode != "pause-statistics":
        wait_here(filename)
def write_text(path, text):
    real_text(path, text)
    if mode == "pause-statistics":
        wait_here(path)
nib.save, st._write_text = save, write_text
from npunet.cli import console
sys.exit(console(sys.argv[3:], load_model=load_model, segment_volume=segment_volume))
'''


def small_ct(path: Path, slices: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(-1000, 1200, (12, 10, slices)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]))
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return path


def start_driver(tmp_path, mode, *argv) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), mode, str(tmp_path), *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("sig,code,words", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                            (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("mode", ["pause", "pause-statistics"])
def test_signal_while_writing_removes_every_file(tmp_path, sig, code, words, mode):
    """A signal while a temporary output exists (the label map's; or the statistics', after the label map
    and its sidecar were published): exit 128+signal, one line, and the output folder left empty."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    proc = start_driver(tmp_path, mode, "segment", inp, "-o", f"{out}/", "--quiet", "--statistics")
    try:
        line = proc.stdout.readline()
        assert line.startswith("TEMP "), (line, proc.stderr.read() if proc.poll() is not None else "")
        temp = Path(line.split(" ", 1)[1].strip())
        present = files_in(out)
        assert temp.exists() and temp.parent == out and temp.name.startswith(".")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    print(f"\n  {mode}, {signal.Signals(sig).name}: files before the signal {present}; rc {proc.returncode}; "
          f"stderr {err.strip()!r}; left {files_in(out)}")
    assert proc.returncode == code
    assert err.strip() == f"npunet segment: {words}"
    assert not temp.exists() and files_in(out) == []


@pytest.mark.parametrize("delay", [0.15, 0.4, 1.0])
def test_ctrl_c_during_start_up(tmp_path, delay):
    """Ctrl-C while Python and npunet start (imports, weights, kernels): exit 130 and one line, whenever it
    falls. The CT has 160 slices (each one 192x192 forward, about 15 ms here) so that the run outlasts the
    longest delay on a fast idle machine too (with 8 slices it had ended within 1.0 s, and the test skipped);
    there the signal falls in the segmenting, which must end the same way."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz", slices=160)
    proc = subprocess.Popen([sys.executable, "-m", "npunet", "segment", str(inp), "-o", str(tmp_path / "o.nii.gz"),
                             "--weights", str(WEIGHTS)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(delay)
    if proc.poll() is not None:
        pytest.skip(f"the run ended within {delay} s")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    print(f"\n  SIGINT after {delay} s: rc {proc.returncode}, stderr {lines[-1:]}")
    if proc.returncode == 0 and (tmp_path / "o.nii.gz").exists():     # it came as the finished run exited
        assert "Traceback" not in err and not list(tmp_path.glob(".o.nii.gz*"))
        pytest.skip(f"the run had finished its work within {delay} s")
    if "init_import_site" in err:     # a loaded machine: the signal came inside Python's own start, before npunet
        pytest.skip(f"SIGINT after {delay} s fell inside the interpreter's start (site), before any npunet code")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and lines[-1] in ("npunet segment: interrupted", "npunet: interrupted")
    assert all(not line.startswith("npunet") or line == lines[-1] for line in lines), err   # progress lines only
    assert not (tmp_path / "o.nii.gz").exists() and not list(tmp_path.glob(".o.nii.gz*"))


def test_sigterm_during_start_up(tmp_path):
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    proc = subprocess.Popen([sys.executable, "-m", "npunet", "segment", str(inp), "-o", str(tmp_path / "o.nii.gz"),
                             "--weights", str(WEIGHTS), "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() in ("npunet segment: terminated (SIGTERM)",
                                                      "npunet: terminated (SIGTERM)"), err


SWALLOWED_SIGNAL = """
import signal, sys, weakref
from npunet import signals
from npunet.publish import atomic_write
signals.install()
class Thing: pass
thing = Thing()
ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))
del thing                               # the handler raises inside the weakref callback: Python ignores it
print("went on", flush=True)
try:
    atomic_write(sys.argv[1], lambda tmp: open(tmp, "w").write("result"))
except signals.Terminated as exc:
    sys.exit(signals.finish_interrupted(exc, "test"))
"""


def test_signal_swallowed_by_python_still_stops_publication(tmp_path):
    """A SIGTERM whose exception Python ignores (it landed in a weakref callback, as in the import system's
    module locks during start-up) is raised again before anything is published: exit 143, no output, and one
    line (Python's "Exception ignored" report of the swallowed exception is dropped after a signal)."""
    out = tmp_path / "o.nii.gz"
    proc = subprocess.run([sys.executable, "-c", SWALLOWED_SIGNAL, str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    print(f"\n  rc {proc.returncode}; stdout {proc.stdout.split()}; stderr {proc.stderr.strip().splitlines()}")
    assert "went on" in proc.stdout                                     # the exception was swallowed
    assert proc.returncode == 143 and proc.stderr.strip() == "npunet test: terminated (SIGTERM)"
    assert list(tmp_path.iterdir()) == []


def run_race(tmp_path, argv) -> tuple[list[int], list[str]]:
    """Two drivers in race mode: both hold at their first nib.save until both are there, then go at once."""
    procs = [start_driver(tmp_path, "race", *argv) for _ in range(2)]
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2:
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1] for p in procs if p.poll() is not None]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], [e.strip() for _, e in results]


def test_two_concurrent_runs_one_output(tmp_path):
    """Two runs write the same output without --overwrite, both past the up-front existence check, both with
    their temporary files written: exactly one publishes, the other says "exists already"."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out" / "ct.nii.gz"
    codes, errs = run_race(tmp_path, ["segment", inp, "-o", out, "--quiet"])
    print(f"\n  exit codes {codes}; stderr {errs}; files {files_in(out.parent)}")
    assert sorted(codes) == [0, 2]
    loser = errs[codes.index(2)]
    assert loser.count("\n") == 0 and "exists already" in loser and loser.startswith("npunet segment: error: ")
    assert files_in(out.parent) == ["ct.labels.json", "ct.nii.gz"]
    assert nib.load(out).shape == (12, 10, 8)


def one_winner_of(publish, threads: int = 8) -> list[int]:
    """Run publish(i, barrier) in `threads` threads at once; assert that all but one got "exists already"
    (InputError) and return the winners (the one)."""
    barrier = threading.Barrier(threads)
    outcome = {}

    def writer(i):
        try:
            publish(i, barrier)
            outcome[i] = "won"
        except InputError as exc:
            outcome[i] = str(exc)
    running = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    winners = [i for i, o in outcome.items() if o == "won"]
    assert len(winners) == 1 and all("exists already" in o for o in outcome.values() if o != "won"), outcome
    return winners


def test_atomic_write_exclusive_between_threads(tmp_path):
    """Eight threads publish the same name at once without overwrite: one wins, seven get InputError, and
    the file holds the winner's bytes; no temporary file remains."""
    target = tmp_path / "same.json"

    def publish(i, barrier):
        def write(tmp):
            Path(tmp).write_text(f"writer {i}\n")
            barrier.wait()
        atomic_write(target, write, overwrite=False)
    winners = one_winner_of(publish)
    assert target.read_text() == f"writer {winners[0]}\n" and files_in(tmp_path) == ["same.json"]


def test_closed_pipe_is_quiet(tmp_path):
    """`npunet summary | head -0`: the reader is gone; no traceback, the conventional 141."""
    proc = subprocess.Popen([sys.executable, "-m", "npunet", "summary"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 141 and err == "", err


# ---------------------------------------------------------------------------- --split: a whole folder --

MASK_FILES = sorted([f"{name}.nii.gz" for k, name in LABELS.items() if k] + ["labels.json"])


@pytest.mark.parametrize("sig,code,mode", [(signal.SIGTERM, 143, "pause"), (signal.SIGINT, 130, "pause"),
                                           (signal.SIGTERM, 143, "pause-statistics")])
def test_signal_during_split_leaves_no_staging_folder(tmp_path, sig, code, mode):
    """A signal while --split fills its staging folder (at the first mask; or at the statistics, every mask
    written): exit 128+signal, one line, and neither the folder nor the hidden staging folder is left."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    proc = start_driver(tmp_path, mode, "segment", inp, "-o", out / "masks", "--split", "--statistics", "--quiet")
    try:
        line = proc.stdout.readline()
        assert line.startswith("TEMP "), (line, proc.stderr.read() if proc.poll() is not None else "")
        temp = Path(line.split(" ", 1)[1].strip())
        staging = temp.parent
        inside = files_in(staging)
        assert staging.parent == out and staging.name.startswith(".masks.") and staging.name.endswith(".tmp")
        assert files_in(out) == [staging.name]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    print(f"\n  {mode}, {signal.Signals(sig).name}: {len(inside)} files in {staging.name} at the signal; "
          f"rc {proc.returncode}; stderr {err.strip()!r}; left {files_in(out)}")
    assert proc.returncode == code and err.strip().startswith("npunet segment: ") and err.count("\n") == 1
    assert files_in(out) == []
    if mode == "pause-statistics":
        assert set(MASK_FILES) <= set(inside)


def test_two_concurrent_split_runs_one_folder(tmp_path):
    """Two --split runs into the same new folder, both past the up-front check, both with their staging
    folders filled: exactly one publishes, the other says "exists already"; the folder is the winner's,
    whole, and no staging folder is left."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    codes, errs = run_race(tmp_path, ["segment", inp, "-o", out / "masks", "--split", "--quiet"])
    print(f"\n  exit codes {codes}; stderr {errs}; left {files_in(out)}")
    assert sorted(codes) == [0, 2]
    loser = errs[codes.index(2)]
    assert loser.count("\n") == 0 and "exists already" in loser and loser.startswith("npunet segment: error: ")
    assert files_in(out) == ["masks"] and files_in(out / "masks") == MASK_FILES
    assert nib.load(out / "masks" / "liver.nii.gz").shape == (12, 10, 8)


def test_two_concurrent_split_runs_with_overwrite(tmp_path):
    """With --overwrite over an older folder of masks, two concurrent runs both succeed; what is left is one
    complete folder (the last to publish), without the older folder's files and without anything hidden."""
    inp = small_ct(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "labels.json").write_text("{}\n")
    (out / "masks" / "stale.nii.gz").write_bytes(b"older run")
    codes, errs = run_race(tmp_path, ["segment", inp, "-o", out / "masks", "--split", "--overwrite", "--quiet"])
    print(f"\n  exit codes {codes}; stderr {errs}; left {files_in(out)}")
    assert codes == [0, 0] and errs == ["", ""]
    assert files_in(out) == ["masks"] and files_in(out / "masks") == MASK_FILES


def test_staged_folder_exclusive_between_threads(tmp_path):
    """Eight threads publish a folder under the same name at once without overwrite: one wins, seven get
    InputError, the folder holds the winner's file only, and no staging folder remains."""
    target = tmp_path / "masks"

    def publish(i, barrier):
        with staged_folder(target) as folder:
            (folder / "who.txt").write_text(f"writer {i}\n")
            barrier.wait()
    winners = one_winner_of(publish)
    assert files_in(tmp_path) == ["masks"] and (target / "who.txt").read_text() == f"writer {winners[0]}\n"


def test_staged_folder_clean_up(tmp_path):
    """The staging folder is listed for remove_temporaries (what the signal handler calls) while it is being
    filled; an exception removes it; may_replace guards what --overwrite may replace; unpublish takes back
    only the folder this process published."""
    with pytest.raises(InputError, match="cannot write"):
        with staged_folder(tmp_path / "a") as folder:
            (folder / "x.nii.gz").write_bytes(b"x")
            assert remove_temporaries() == [str(folder)] and not folder.exists()
    assert files_in(tmp_path) == []
    with staged_folder(tmp_path / "a") as folder:
        (folder / "x.nii.gz").write_bytes(b"x")
    assert files_in(tmp_path) == ["a"] and files_in(tmp_path / "a") == ["x.nii.gz"]
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "b") as folder:
            (folder / "x.nii.gz").write_bytes(b"x")
            raise RuntimeError("failed halfway")
    assert files_in(tmp_path) == ["a"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="did not write"):
        with staged_folder(tmp_path / "mine", overwrite=True, may_replace=lambda p: False) as folder:
            (folder / "x").write_text("x")
    assert files_in(tmp_path / "mine") == ["thesis.tex"] and files_in(tmp_path) == ["a", "mine"]
    assert not unpublish(tmp_path / "mine") and unpublish(tmp_path / "a") and files_in(tmp_path) == ["mine"]


def test_interrupted_process_ends_without_the_interpreter_shutdown(tmp_path):
    """After the one line, the process ends at once (npunet.signals.exit_after_interruption): an object the
    signal cut half-built (llvmlite's PassBuilder, in a compilation) would otherwise print its destructor's
    error at shutdown, and LLVM aborts (exit -6) when the interpreter is torn down under a compiling thread."""
    code = (
        "import sys\n"
        "from npunet import __main__ as entry, cli\n"
        "class HalfBuilt:\n"
        "    def __del__(self):\n"
        "        raise AttributeError('half-built object destroyed at shutdown')\n"
        "kept = HalfBuilt()\n"
        "def interrupted_console(argv=None):      # as console() ends after Ctrl-C in a command\n"
        "    from npunet import signals\n"
        "    return signals.finish_interrupted(KeyboardInterrupt(), 'segment')\n"
        "cli.console = interrupted_console\n"
        "sys.exit(entry.run())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    print(f"\n  rc {proc.returncode}, stderr {proc.stderr.strip().splitlines()}")
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == ["npunet segment: interrupted"]


def test_a_destructor_of_an_object_the_signal_cut_half_built_stays_quiet():
    """The handler's exception can land inside a third-party constructor (llvmlite's, during a first run's
    compilation); that object's destructor then fails, and Python would print "Exception ignored in ..."
    after the one line. After a signal such errors are dropped (npunet.signals._quiet_after_signal)."""
    code = """
import os, signal, sys
from npunet import signals
from npunet.errors import Terminated
signals.install()
class HalfBuilt:
    def __init__(self):
        os.kill(os.getpid(), signal.SIGTERM)      # the handler raises here, before `pointer` is set
        self.pointer = 1
    def __del__(self):
        self.pointer                              # AttributeError, as llvmlite's OutputString._ptr
try:
    HalfBuilt()
except Terminated:
    print("terminated", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    print(f"\n  stderr: {proc.stderr.strip()!r}", end="")
    assert proc.returncode == 0 and proc.stderr.strip() == "terminated"
