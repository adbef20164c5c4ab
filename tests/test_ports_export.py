"""`npunet export onnx` (npunet.ports.onnx_export): the graph passes onnx's full check, its values are named
after npunet's layers, batch and size are dynamic, every opset offered runs, and ONNX Runtime, OpenVINO (fp32)
and the ONNX reference evaluator each match npunet, on real CT slices, for every spec in npunet/specs: logits
within 1e-4, labels on >= 99.99 % of pixels, every layer within 1e-4 of its scale. The default spec runs with
the shipped weights, the others with seeded random weights (npunet.ports.random_weights). The figures are
printed (`python -m pytest -q -s tests/test_ports_export.py`)."""

import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

import npunet  # noqa: E402
from npunet.cli import main  # noqa: E402
from npunet.io.ct import load_ct  # noqa: E402
from npunet.labels import LABELS  # noqa: E402
from npunet.network import Network  # noqa: E402
from npunet.ports import onnx_ops as ops  # noqa: E402
from npunet.ports.ct_slices import prepare, spread_slices  # noqa: E402
from npunet.ports.onnx_export import INPUT, MAX_OPSET, MIN_OPSET, export_onnx  # noqa: E402
from npunet.ports.parity import compare  # noqa: E402
from npunet.ports.random_weights import random_tensors  # noqa: E402
from npunet.ports.runtimes import OnnxEngine  # noqa: E402
from npunet.preprocess import DEFAULT_PREPROCESSING  # noqa: E402
from npunet.spec import builtin_spec_names, expected_tensors, layer_plan, load_spec  # noqa: E402
from npunet.weights import default_weights_path, save_weights  # noqa: E402

SPECS = builtin_spec_names()                      # dsconv_eca_unet, its ConvTranspose variant, standard_unet
CT_OF_SPEC = {"dsconv_eca_unet": "ts_abdomen", "dsconv_eca_unet_transpose": "amos_0001",
              "standard_unet": "tsds_s0003"}      # a different real CT for each
RUNTIMES = ["onnxruntime", "openvino", "reference"]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def runtime_available(runtime):
    module = {"reference": "onnx"}.get(runtime, runtime)
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """spec name -> weights file: the shipped weights for the default spec, seeded random ones otherwise."""
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for seed, name in enumerate(SPECS):
        if name == "dsconv_eca_unet":
            out[name] = default_weights_path()
        else:
            spec = load_spec(name)
            out[name] = save_weights(folder / f"{name}.npuw", spec, random_tensors(spec, seed), LABELS,
                                     DEFAULT_PREPROCESSING)
    return out


@pytest.fixture(scope="module")
def checked(weights, data_dir):
    """spec name -> (network, chosen slices, npunet's layers [(Layer, output)]) on 3 slices of its CT."""
    out = {}
    for name in SPECS:
        net = npunet.load(weights[name])
        ct = load_ct(data_dir / "imagesTr" / f"{CT_OF_SPEC[name]}_0000.nii.gz")
        chosen = prepare(ct, spread_slices(ct.slices, 3), net.preprocessing)
        out[name] = (net, chosen, [(s.layer, s.output) for s in net.run_layers(chosen.x, keep=True)])
    return out


@pytest.mark.parametrize("name", SPECS)
def test_the_export_passes_the_full_check_and_is_named_after_the_layers(name, weights, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--weights", str(weights[name]), "-o", str(path), "--layers"]) == 0
    print("\n  " + capsys.readouterr().out.strip())
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    spec = load_spec(name)
    plan = layer_plan(spec)
    written = {value for node in model.graph.node for value in node.output}
    nodes = {node.name for node in model.graph.node}
    assert all(layer.name in written and layer.name in nodes for layer in plan)
    assert [o.name for o in model.graph.output] == ["logits"] + [layer.name for layer in plan]
    assert set(expected_tensors(spec)) <= {t.name for t in model.graph.initializer}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", spec["in_channels"], "height", "width"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["npunet.weights_sha256"] == npunet.load(weights[name]).weights_sha256
    ops_used = {node.op_type for node in model.graph.node}
    upsample = "ConvTranspose" if spec["upsample"]["mode"] == "transpose" else "Resize"
    assert upsample in ops_used and "GroupNormalization" not in ops_used
    if name != "standard_unet":
        assert any(node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
                   for node in model.graph.node), "depthwise convs are grouped Convs"


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", SPECS)
def test_each_runtime_matches_npunet_on_real_ct_slices(name, runtime, checked):
    runtime_available(runtime)
    net, chosen, layers = checked[name]
    rows = slice(None) if runtime != "reference" else slice(1, 2)      # the reference evaluator is slow: 1 slice
    engine = OnnxEngine(export_onnx(net.spec, net.tensors), runtime, [layer.name for layer, _ in layers], threads=2)
    report = compare([(layer, out[rows]) for layer, out in layers], engine.run(chosen.x[rows]),
                     slice_numbers=chosen.z[rows])
    worst = max(report.rows, key=lambda r: r.relative)
    print(f"\n  {name:<26} {runtime:<12} {chosen.case} slices {chosen.z[rows]}: logits max|diff| "
          f"{report.logits_max_diff:.1e}, labels {report.labels['agree_percent']:.4f} % agree, worst layer "
          f"{worst.relative:.1e} of its scale ({worst.name})")
    assert len(report.rows) == len(layers)
    assert report.logits_max_diff <= 1e-4
    assert report.labels["agree_percent"] >= 99.99
    assert report.within, report.first_beyond


def test_batch_and_size_are_dynamic(checked):
    pytest.importorskip("onnxruntime")
    net = checked["dsconv_eca_unet"][0]
    engine = OnnxEngine(export_onnx(net.spec, net.tensors), "onnxruntime")
    for shape in ((3, 3, 64, 96), (1, 3, 32, 32)):
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        got, want = engine.run(x)["logits"], net(x)
        print(f"\n  input {shape}: logits {got.shape}, max|diff| {np.abs(got - want).max():.1e}")
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_every_opset_offered_runs_in_every_runtime():
    net = npunet.load(FIXTURES / "tiny_transpose_unet.npuw")
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    want = net(x)
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        model = export_onnx(net.spec, net.tensors, opset=opset)
        diffs = {}
        for runtime in RUNTIMES:
            runtime_available(runtime)
            diffs[runtime] = float(np.abs(OnnxEngine(model, runtime).run(x)["logits"] - want).max())
        print(f"\n  opset {opset} (IR {model.ir_version}): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        assert max(diffs.values()) <= 1e-4


def one_reduction_group_norm(g, x, weight, bias, groups):
    """GroupNorm as the obvious decomposition: one ReduceMean over each whole group (N, G, C/G*H*W), two passes."""
    c = weight.shape[0]
    grouped = g.add("Reshape", [x, g.constant("groups", np.array([0, groups, -1], np.int64))], "grouped")
    centred = g.add("Sub", [grouped, g.reduce_mean(grouped, [2], "mean")], "centred")
    variance = g.reduce_mean(g.add("Mul", [centred, centred], "squares"), [2], "variance")
    std = g.add("Sqrt", [g.add("Add", [variance, g.constant("eps", np.array(1e-5, np.float32))], "ve")], "std")
    normalised = g.add("Reshape", [g.add("Div", [centred, std], "ng"), g.add("Shape", [x], "shape")], "normalised")
    scaled = g.add("Mul", [normalised, g.constant("scale", weight.reshape(c, 1, 1))], "scaled")
    return g.add("Add", [scaled, g.constant("bias", bias.reshape(c, 1, 1))], "out")


GROUP_NORM_FORMS = ("GroupNormalization-21", "one ReduceMean per group", "npunet's decomposition")


def group_norm_model(form: str, weight, bias, groups: int, channels: int):
    """GroupNorm of an (N, channels, H, W) input as one model, in one of GROUP_NORM_FORMS."""
    from onnx import TensorProto, helper
    opset = 21
    g = ops.Graph(opset)
    if form == "npunet's decomposition":
        ops.group_norm(g, "out", INPUT, weight, bias, groups, 1e-5, relu=False)
    elif form == "one ReduceMean per group":
        one_reduction_group_norm(g, INPUT, weight, bias, groups)
    else:
        g.add("GroupNormalization", [INPUT, g.constant("scale", weight), g.constant("bias", bias)], "out",
              num_groups=groups, epsilon=1e-5)
    graph = helper.make_graph(g.nodes, form, [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                            ["n", channels, "h", "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def test_group_norm_forms(checked):
    """Why GroupNorm is npunet's decomposition (docs/ports.md): GroupNormalization-21 and the one-reduction
    decomposition against the float64 definition, next to npunet's form, on the first conv's output of real
    slices and on groups of mean 1000. Asserted: npunet's form within 1e-5 of the definition in every runtime
    (the other forms' figures are printed: they are the runtimes', not npunet's, to keep)."""
    from npunet import kernels as K
    net, chosen, layers = checked["dsconv_eca_unet"]
    real = layers[0][1]                               # encoder.0.convs.0.conv, (3, 16, 192, 192)
    rng = np.random.default_rng(3)
    inputs = {"first conv of a real slice": real,
              "mean 1000": (1000 + 0.5 * rng.standard_normal((2, 64, 48, 48))).astype(np.float32)}
    for label, x in inputs.items():
        c = x.shape[1]
        weight = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32)
        bias = (0.2 * rng.standard_normal(c)).astype(np.float32)
        want = K.group_norm_reference(x, weight, bias, 8, 1e-5)
        for form in GROUP_NORM_FORMS:
            figures = {}
            for runtime in RUNTIMES:
                runtime_available(runtime)
                with np.errstate(invalid="ignore"):
                    got = OnnxEngine(group_norm_model(form, weight, bias, 8, c), runtime).run(x)["logits"]
                    figures[runtime] = float(np.abs(got.astype(np.float64) - want).max())
            print(f"\n  {label:<27} {form:<25}max|diff| from the float64 definition: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in figures.items()) + f" (output scale {np.abs(want).max():.1f})")
            if form == "npunet's decomposition":
                assert max(figures.values()) <= 1e-5


def test_without_onnx_the_command_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)           # `import onnx` now fails, as if not installed
    out = tmp_path / "model.onnx"
    assert main(["export", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    print("\n  " + err.strip())
    assert err.count("\n") == 1 and "pip install 'npunet[onnx]'" in err and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--opset", "12"], "--opset must be between"),
    (["--weights", str(FIXTURES / "kernels.npz")], "kernels.npz"),
])
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "onnx", "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()
    assert main(["export", "onnx", "-o", str(tmp_path / "model.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err


def test_an_existing_model_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    assert main(["export", "onnx", "-o", str(out)]) == 2 and "exists already" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(["export", "onnx", "-o", str(out), "--overwrite"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_random_tensors_cover_the_spec_reproducibly():
    """random_tensors gives every tensor of the spec, float32, reproducibly."""
    spec = load_spec("dsconv_eca_unet")
    a, b = random_tensors(spec, 5), random_tensors(spec, 5)
    assert list(a) == list(expected_tensors(spec))
    assert all(a[k].dtype == np.float32 and a[k].shape == tuple(s) and np.array_equal(a[k], b[k])
               for k, s in expected_tensors(spec).items())
    Network(spec, a)                                  # builds
