"""A runtime checked against a golden pack (npunet.ports.goldens): each kernel case run as a one-op ONNX model
built from the manifest (its op and attributes, in the ONNX forms of npunet.ports.onnx_ops), the network case
as npunet's ONNX export of the pack's spec and weights; every output held to the case's tolerance.

    rows = check_pack("goldens/", runtime="onnxruntime")
    print(format_check(rows)); all(row.ok for row in rows)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npunet.errors import NpunetError
from npunet.ports import onnx_ops as ops
from npunet.ports.extras import need
from npunet.ports.goldens import load_array, network_layers, read_pack
from npunet.ports.onnx_export import DEFAULT_OPSET, export_onnx
from npunet.ports.parity import Tolerances, compare
from npunet.ports.runtimes import OnnxEngine


@dataclass
class CheckRow:
    case: str
    op: str
    output: str          # the output's name and shape
    figure: str          # max |diff|, or the share of labels that agree
    tolerance: str
    ok: bool


def one_op_model(case: dict, arrays: dict, opset: int = DEFAULT_OPSET):
    """The ONNX model of one kernel case: graph input "x" (the case's input x), output "out"; the other inputs
    are initializers."""
    need("onnx", "checking a golden pack")
    from onnx import TensorProto, helper
    g = ops.Graph(opset)
    a, op = case["attributes"], case["op"]
    p = {name: array for name, array in arrays.items() if name != "x"}
    if op in ("depthwise_conv3x3", "conv3x3", "pointwise_conv"):
        ops.conv(g, "out", "x", p["w"], p.get("bias"), group=a["group"])
    elif op == "conv_transpose2x2":
        ops.conv_transpose2x2(g, "out", "x", p["w"], p["bias"])
    elif op == "group_norm":
        ops.group_norm(g, "out", "x", p["weight"], p["bias"], a["num_groups"], a["epsilon"], relu=a["relu"])
    elif op == "eca":
        ops.eca(g, "out", "x", p["w"])
    elif op == "max_pool2x2":
        ops.max_pool2x2(g, "out", "x")
    elif op == "upsample_bilinear2x":
        ops.upsample_bilinear2x(g, "out", "x", a["coordinate_transformation_mode"] == "align_corners")
    elif op == "resize_bilinear":
        ops.resize_bilinear(g, "out", "x", *a["sizes"], a["coordinate_transformation_mode"] == "align_corners")
    elif op == "concat_channels":
        ops.concat(g, "out", g.constant("skip", p["skip"]), "x")
    elif op == "upsample_argmax":
        crop = a["crop"]
        ops.upsample_argmax(g, "out", "x", *a["sizes"], crop["y0"], crop["x0"], crop["height"], crop["width"])
    else:
        raise NpunetError(f"golden case {case['name']}: no ONNX form for op {op!r} (a newer pack?)")
    out = case["outputs"]["out"]
    x = case["inputs"]["x"]
    element = TensorProto.UINT8 if out["dtype"] == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, case["name"],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x["shape"])],
                              [helper.make_tensor_value_info("out", element, out["shape"])], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="npunet goldens")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def check_pack(folder, runtime: str = "onnxruntime", opset: int = DEFAULT_OPSET,
               threads: int | None = None) -> list[CheckRow]:
    """Every case of the pack in `folder` run by `runtime` and compared with its expected outputs."""
    manifest = read_pack(folder)
    rows = []
    for case in manifest["cases"]:
        arrays = {name: load_array(folder, entry) for name, entry in case["inputs"].items()}
        if case["op"] == "network":
            rows += _check_network(case, arrays, folder, runtime, opset, threads)
            continue
        engine = OnnxEngine(one_op_model(case, arrays, opset), runtime, threads=threads)
        got = engine.run(arrays["x"])["logits"]            # the model's only output, "out"
        want = load_array(folder, case["outputs"]["out"])
        rows.append(_compare(case["name"], case["op"], "out", want, got, case["tolerance"]["out"]))
    return rows


def _compare(name: str, op: str, output: str, want: np.ndarray, got: np.ndarray, tolerance: dict) -> CheckRow:
    shape = f"{output} {'x'.join(map(str, want.shape))}"
    if got.shape != want.shape:
        return CheckRow(name, op, shape, f"shape {'x'.join(map(str, got.shape))}", "same shape", False)
    if "min_agreement" in tolerance:
        agree = float((got == want).mean())
        return CheckRow(name, op, shape, f"{100 * agree:.4f} % agree", f">= {100 * tolerance['min_agreement']:g} %",
                        agree >= tolerance["min_agreement"])
    diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    if not np.isfinite(got).all():
        diff = np.inf
    return CheckRow(name, op, shape, f"{diff:.1e}", f"{tolerance['max_abs_diff']:.1e}",
                    diff <= tolerance["max_abs_diff"])


def _check_network(case: dict, arrays: dict, folder, runtime: str, opset: int, threads) -> list[CheckRow]:
    """The pack's network case: npunet's export of its spec and weights, every layer compared (npunet.ports.parity)."""
    tensors = {name.split("/", 1)[1]: array for name, array in arrays.items() if name.startswith("weights/")}
    layers = network_layers(case, folder)
    model = export_onnx(case["spec"], tensors, opset=opset, layers=True)
    engine = OnnxEngine(model, runtime, [layer.name for layer, _ in layers], threads)
    tolerance = case["tolerance"]
    tolerances = Tolerances(layer=tolerance[f"layers/{layers[0][0].name}"]["relative_to_scale"],
                            logits=tolerance["logits"]["max_abs_diff"],
                            labels=100 * tolerance["labels"]["min_agreement"])
    report = compare(layers, engine.run(arrays["x"]), tolerances)
    worst = max(report.rows, key=lambda r: r.relative if r.relative is not None else np.inf)
    first = report.first_beyond
    labels = report.labels
    return [CheckRow("network", "network", f"{len(report.rows)} layers",
                     f"{worst.relative:.1e} of scale at most" if first is None else f"{first} beyond",
                     f"{tolerances.layer:.0e} of scale", first is None),
            CheckRow("network", "network", "logits", f"{report.logits_max_diff:.1e}", f"{tolerances.logits:.1e}",
                     report.logits_max_diff <= tolerances.logits),
            CheckRow("network", "network", "labels", f"{labels['agree_percent']:.4f} % agree",
                     f">= {tolerances.labels:g} %", labels["agree_percent"] >= tolerances.labels)]


def format_check(rows: list[CheckRow]) -> str:
    """One line per output: case, op, output, what was measured, the tolerance, ok or FAILED; then the count."""
    table = [("case", "op", "output", "measured", "tolerance", "result")]
    table += [(r.case, r.op, r.output, r.figure, r.tolerance, "ok" if r.ok else "FAILED") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    lines = ["  ".join(f"{cell:>{w}}" if i in (3, 4) else f"{cell:<{w}}" for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in table]
    failed = [r for r in rows if not r.ok]
    lines.append(f"{len(rows) - len(failed)} of {len(rows)} outputs within tolerance"
                 + (f"; failed: {', '.join(sorted({r.case for r in failed}))}" if failed else ""))
    return "\n".join(lines)
