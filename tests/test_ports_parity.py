"""`npunet parity` (npunet.ports.parity, npunet.ports.runtimes): within tolerance on a correct export (exit 0,
the table and --json); a deliberately broken export (Resize in the wrong coordinate mode) found at the right
layer (exit 1); a port's .npz of activations, with a perturbed layer named as the first beyond tolerance; a
torch checkpoint through the torch mirror; ULP distances and the label-margin classes on arrays made to show
them; user mistakes as one-line errors (exit 2)."""

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

import npunet  # noqa: E402
from npunet.cli import main  # noqa: E402
from npunet.io.ct import load_ct  # noqa: E402
from npunet.ports.ct_slices import parse_slices, prepare, spread_slices  # noqa: E402
from npunet.ports.onnx_export import export_onnx, write_onnx  # noqa: E402
from npunet.ports.parity import compare_labels, ulp_distances  # noqa: E402
from npunet.ports.runtimes import OnnxEngine  # noqa: E402

CT = "ts_chest_0000.nii.gz"
SLICES = "4,15"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The shipped network's export, and the same with every Resize in the "asymmetric" coordinate mode (what
    a port that forgets align_corners=False's half-pixel offset computes)."""
    folder = tmp_path_factory.mktemp("models")
    net = npunet.load()
    model = export_onnx(net.spec, net.tensors, weights_sha256=net.weights_sha256)
    good = write_onnx(model, folder / "model.onnx")
    for node in model.graph.node:
        if node.op_type == "Resize":
            for attribute in node.attribute:
                if attribute.name == "coordinate_transformation_mode":
                    attribute.s = b"asymmetric"
    return {"good": good, "broken": write_onnx(model, folder / "broken.onnx"), "folder": folder}


def parity(argv, capsys):
    code = main(["parity", *argv])
    captured = capsys.readouterr()
    print("\n" + captured.out + captured.err)
    return code, captured.out, captured.err


def test_a_correct_export_is_within_tolerance(models, data_dir, tmp_path, capsys):
    report = tmp_path / "parity.json"
    code, out, _ = parity([str(data_dir / "imagesTr" / CT), "--against", str(models["good"]), "--slices", SLICES,
                           "--json", str(report)], capsys)
    assert code == 0
    assert "result: within tolerance (exit 0)" in out and "first layer beyond" not in out
    data = json.loads(report.read_text())
    assert data["within"] is True and data["first_beyond"] is None
    assert len(data["rows"]) == len(npunet.load().plan)              # every layer compared
    assert data["logits_max_diff"] <= 1e-4 and data["labels"]["agree_percent"] >= 99.99
    row = data["rows"][0]
    assert sum(row["ulp_histogram"]) == np.prod(row["shape"]) and len(data["ulp_edges"]) == 34


def test_a_broken_resize_is_found_at_the_first_upsample(models, data_dir, tmp_path, capsys):
    """The deliberately broken export of docs/ports.md: every layer before the first Resize agrees, and that
    layer is named; exit 1."""
    report = tmp_path / "broken.json"
    code, out, _ = parity([str(data_dir / "imagesTr" / CT), "--against", str(models["broken"]), "--slices", SLICES,
                           "--json", str(report)], capsys)
    assert code == 1
    data = json.loads(report.read_text())
    names = [r["name"] for r in data["rows"]]
    first = names.index("decoder.0.up")
    assert data["first_beyond"] == "decoder.0.up"
    assert all(r["status"] == "ok" for r in data["rows"][:first])
    assert data["rows"][first]["relative"] > 1e-2                      # far beyond rounding, not near it
    assert "first layer beyond tolerance: decoder.0.up (upsample)" in out
    assert "result: BEYOND tolerance (exit 1)" in out


def test_the_runtime_is_chosen_with_runtime(models, data_dir, capsys):
    pytest.importorskip("openvino")
    code, out, _ = parity([str(data_dir / "imagesTr" / CT), "--against", str(models["good"]), "--slices", "10",
                           "--runtime", "openvino", "--threads", "2"], capsys)
    assert code == 0 and "run by openvino" in out


def port_activations(path: Path, x, models, perturb: str | None = None, with_input: bool = True) -> Path:
    """An .npz as another port would write it: its layer outputs and logits (here ONNX Runtime's), optionally
    with one layer's output off by 1e-3 of its scale."""
    net = npunet.load()
    engine = OnnxEngine(onnx.load(str(models["good"])), "onnxruntime", [layer.name for layer in net.plan])
    arrays = engine.run(x)
    if perturb:
        arrays[perturb] = arrays[perturb] + 1e-3 * np.abs(arrays[perturb]).max()
    if with_input:
        arrays["input"] = x
    np.savez(path, **arrays)
    return path


def test_a_ports_activations_are_compared_and_a_perturbed_layer_named(models, data_dir, tmp_path, capsys):
    ct = data_dir / "imagesTr" / CT
    x_file = tmp_path / "slices.npy"
    code, out, _ = parity([str(ct), "--slices", SLICES, "--write-input", str(x_file)], capsys)
    assert code == 0 and "wrote" in out
    x = np.load(x_file)
    net = npunet.load()
    chosen = prepare(load_ct(ct), parse_slices(SLICES, 200), net.preprocessing)
    assert np.array_equal(x, chosen.x)                                 # the slices parity runs
    good = port_activations(tmp_path / "port.npz", x, models)
    code, out, _ = parity([str(ct), "--slices", SLICES, "--against", str(good)], capsys)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert code == 0 and lines[header + 1].startswith("input ")        # the port's own input, compared first
    bad = port_activations(tmp_path / "bad.npz", x, models, perturb="encoder.2.convs.0.pointwise", with_input=False)
    code, out, _ = parity([str(ct), "--slices", SLICES, "--against", str(bad)], capsys)
    assert code == 1
    assert "first layer beyond tolerance: encoder.2.convs.0.pointwise (pointwise)" in out


def test_a_torch_checkpoint_runs_through_the_torch_mirror(data_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed (the test extra has it)")
    net = npunet.load()
    checkpoint = tmp_path / "shipped.pt"
    torch.save({"spec": net.spec, "state_dict": {k: torch.from_numpy(v) for k, v in net.tensors.items()}}, checkpoint)
    code, out, _ = parity([str(data_dir / "imagesTr" / CT), "--against", str(checkpoint), "--slices", "10"], capsys)
    assert code == 0
    layer_rows = [line for line in out.splitlines() if line.split(" ")[0] in {layer.name for layer in net.plan}]
    assert len(layer_rows) == len(net.plan)                            # every layer caught by a hook


def test_ulp_distances():
    one = np.float32(1.0)
    up = np.nextafter(one, np.float32(2))
    a = np.array([1.0, 1.0, 0.0, -0.0, -1.0, 1e-30], np.float32)
    b = np.array([1.0, up, -0.0, np.nextafter(np.float32(0), np.float32(-1)), np.nextafter(np.float32(-1),
                  np.float32(-2)), -1e-30], np.float32)
    got = ulp_distances(a, b)
    print(f"\n  ULP distances {got.tolist()}")
    assert got[:5].tolist() == [0, 1, 0, 1, 1]
    assert got[5] == 2 * int(np.float32(1e-30).view(np.int32))         # tiny values of opposite sign: far apart


def test_label_flips_are_classed_by_npunets_top2_margin():
    want = np.zeros((1, 3, 1, 4), np.float32)
    want[0, :, 0, 0] = [1.0, 1.00005, 0.0]           # margin 5e-5: a flip here is rounding
    want[0, :, 0, 1] = [2.0, 1.0, 0.0]               # margin 1: a flip here is a real difference
    want[0, :, 0, 2:] = [[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]]
    got = want.copy()
    got[0, 0, 0, 0] = 1.0001                         # label 1 -> 0
    got[0, 1, 0, 1] = 2.5                            # label 0 -> 1
    labels = compare_labels(want, got, 1e-4, slice_numbers=[7])
    print(f"\n  {labels}")
    assert labels["differ"] == 2 and labels["agree_percent"] == 50.0
    assert labels["within_rounding"] == 1 and labels["beyond_rounding"] == 1
    assert labels["largest_margin"] == {"margin": 1.0, "slice": 7, "y": 0, "x": 1, "npunet_label": 0,
                                        "engine_label": 1}


def test_slices_spread_over_the_ct_and_parse():
    assert spread_slices(112) == [11, 33, 56, 78, 100]
    assert spread_slices(3) == [0, 1, 2]
    assert parse_slices("4,15", 20) == [4, 15]


@pytest.mark.parametrize("argv, message", [
    (["--against", "missing.onnx"], "missing.onnx: no such file"),
    (["--against", "{fixtures}/kernels.npz"], "has no 'logits'"),
    (["--against", "{fixtures}/dsconv_eca_unet.npuw"], "--against takes an .onnx model"),
    (["--against", "{fixtures}/kernels.npz", "--slices", "999"], "--slices 999: 999 is out of range"),
    (["--against", "{fixtures}/kernels.npz", "--layer-tol", "-1"], "--layer-tol must be at least 0, got -1"),
    (["--against", "{fixtures}/kernels.npz", "--json", "out.txt"], "must be a .json file name"),
    ([], "give --against ENGINE"),
])
def test_user_mistakes_are_one_line(argv, message, data_dir, capsys):
    fixtures = Path(__file__).resolve().parent / "fixtures"
    argv = [a.format(fixtures=fixtures) for a in argv]
    assert main(["parity", str(data_dir / "imagesTr" / CT), *argv]) == 2
    err = capsys.readouterr().err
    print("\n  " + err.strip())
    assert err.count("\n") == 1 and message in err
