"""Per-CPU work sizes (npunet.tuning): every candidate gives the same bits, the choice is stored and read back,
a choice stored for another CPU or build is measured again, and `npunet tune` redoes it."""

import json

import numba
import numpy as np
import pytest

import npunet
from npunet import kernels as K
from npunet import tuning
from npunet.cli import main


@pytest.fixture
def wisdom(tmp_path, monkeypatch):
    """tiles.json in a temporary folder, the process's choice forgotten before and restored after."""
    path = tmp_path / "tiles.json"
    monkeypatch.setattr(tuning, "wisdom_path", lambda: path)
    before = tuning.tiles()
    monkeypatch.setattr(tuning, "_chosen", None)
    yield path
    tuning.apply(before)
    tuning._chosen = before


def test_every_candidate_gives_identical_bits(wisdom):
    rng = np.random.default_rng(3)
    net = npunet.load()
    x = rng.random((3, 3, 96, 96), dtype=np.float32)
    xk = rng.standard_normal((2, 40, 37, 45), dtype=np.float32)
    w3, wp, wd = (rng.standard_normal(s, dtype=np.float32) for s in [(24, 40, 3, 3), (24, 40, 1, 1), (40, 1, 3, 3)])
    calls = {"network": lambda: net(x), "winograd": lambda: K.conv3x3(xk, w3),
             "pointwise": lambda: K.pointwise_conv(xk, wp), "depthwise": lambda: K.depthwise_conv3x3(xk, wd)}
    tuning.apply(tuning.DEFAULTS)
    want = {name: f() for name, f in calls.items()}
    threads = numba.get_num_threads()
    try:
        for n_threads in sorted({1, threads}):
            numba.set_num_threads(n_threads)
            for knob, values in tuning.CANDIDATES.items():
                for value in values:
                    tuning.apply(dict(tuning.DEFAULTS, **{knob: value}))
                    for name, f in calls.items():
                        got = f()
                        print(f"  {knob}={value} threads={n_threads} {name}: max|diff| "
                              f"{float(np.abs(got - want[name]).max()):.1e}")
                        assert np.array_equal(got, want[name]), (knob, value, n_threads, name)
    finally:
        numba.set_num_threads(threads)


def test_choice_is_measured_once_stored_and_read_back(wisdom, monkeypatch):
    choice = tuning.tiles()
    assert choice["source"].startswith("measured")
    stored = json.loads(wisdom.read_text())
    assert stored["key"] == tuning.wisdom_key()
    assert all(stored[k] == choice[k] and choice[k] in tuning.CANDIDATES[k] for k in tuning.CANDIDATES)
    assert set(stored["seconds"]["tile"]) == {str(v) for v in tuning.CANDIDATES["tile"]}
    # a new process reads the file instead of measuring: tune must not run
    monkeypatch.setattr(tuning, "_chosen", None)
    monkeypatch.setattr(tuning, "tune", lambda **_: pytest.fail("measured again despite a stored choice"))
    stored.update(winograd_scratch_floats=tuning.CANDIDATES["winograd_scratch_floats"][0],
                  tile=tuning.CANDIDATES["tile"][-1])
    wisdom.write_text(json.dumps(stored))
    again = tuning.tiles()
    assert (again["winograd_scratch_floats"], again["tile"]) == (stored["winograd_scratch_floats"], stored["tile"])
    from npunet.kernels import conv, winograd
    assert (winograd.SCRATCH_FLOATS, conv.TILE) == (stored["winograd_scratch_floats"], stored["tile"])
    assert "measured" in tuning.describe() and str(stored["tile"]) in tuning.describe()


@pytest.mark.parametrize("change", [{"key": {"cpu": "another CPU"}}, {"tile": 333}, "not json"])
def test_a_choice_for_another_machine_or_a_bad_file_is_measured_again(wisdom, monkeypatch, change):
    tuning.tiles()
    stored = json.loads(wisdom.read_text())
    if isinstance(change, dict):
        text = json.dumps({**stored, **{k: {**stored[k], **v} if isinstance(v, dict) else v
                                        for k, v in change.items()}})
    else:
        text = change
    wisdom.write_text(text)
    monkeypatch.setattr(tuning, "_chosen", None)
    measured = []
    real_tune = tuning.tune
    monkeypatch.setattr(tuning, "tune", lambda **kw: measured.append(1) or real_tune(repeats=1))
    tuning.tiles()
    assert measured == [1]
    assert json.loads(wisdom.read_text())["key"] == tuning.wisdom_key()


def test_a_first_run_keeps_the_defaults_and_the_next_measures(wisdom, monkeypatch):
    """tiles(defer=True) (from_file after compiling the kernels) measures nothing and stores nothing when no
    choice is stored; a later process measures and stores; a stored choice is used even on a first run."""
    monkeypatch.setattr(tuning, "tune", lambda **_: pytest.fail("measured on a first run"))
    choice = tuning.tiles(defer=True)
    assert {k: choice[k] for k in tuning.DEFAULTS} == tuning.DEFAULTS and "first run" in choice["source"]
    assert not wisdom.exists()
    monkeypatch.undo()                                        # the fixture's patches too: set them again
    monkeypatch.setattr(tuning, "wisdom_path", lambda: wisdom)
    monkeypatch.setattr(tuning, "_chosen", None)
    assert tuning.tiles()["source"].startswith("measured") and wisdom.exists()
    monkeypatch.setattr(tuning, "_chosen", None)
    monkeypatch.setattr(tuning, "tune", lambda **_: pytest.fail("measured again despite a stored choice"))
    assert tuning.tiles(defer=True)["source"].startswith("measured")


def test_npunet_tiles_default_skips_the_measurement(wisdom, monkeypatch):
    monkeypatch.setenv("NPUNET_TILES", "default")
    monkeypatch.setattr(tuning, "tune", lambda **_: pytest.fail("measured despite NPUNET_TILES=default"))
    choice = tuning.tiles()
    assert {k: choice[k] for k in tuning.DEFAULTS} == tuning.DEFAULTS and not wisdom.exists()


def test_npunet_tune_command(wisdom, capsys):
    threads = numba.get_num_threads()
    try:
        assert main(["tune", "--repeats", "1", "--threads", "1"]) == 0
    finally:
        numba.set_num_threads(threads)
    out = capsys.readouterr().out
    stored = json.loads(wisdom.read_text())
    assert f"tile: {stored['tile']}" in out and str(wisdom) in out
    assert main(["tune", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err
