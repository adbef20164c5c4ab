"""The network as an ONNX model, built from its spec and weights with the `onnx` package alone (no torch).

    model = export_onnx(spec, tensors, opset=17, layers=False)     # onnx.ModelProto, checked
    write_onnx(model, "model.onnx", overwrite=False)

The graph walks npunet.spec.layer_plan, the flat list of layers the NumPy network runs, and writes each layer
with its ONNX form from npunet.ports.onnx_ops (depthwise as a grouped Conv, GroupNorm as a two-pass
decomposition, ECA as ReduceMean + Conv 1D + Sigmoid + Mul, bilinear Resize in the spec's coordinate mode,
...). Every layer's output value, and the node that writes it, is named after the layer, i.e. after the torch
module path that owns its weights (`encoder.1.convs.0.pointwise`; an encoder stage's output, the skip, is
`encoder.1`), and the weights keep their torch names (`encoder.1.convs.0.pointwise.weight`). The input is
`input` (batch, in_channels, height, width), the output `logits` (batch, num_classes, height, width); batch,
height and width are dynamic (height and width multiples of 2^(encoder stages - 1), as for npunet).
With layers=True every layer's output is a graph output as well, under its layer's name, so a runtime
returns them all (what `npunet parity` compares layer by layer).

The model records where it came from in its metadata_props: npunet's version, the spec, the preprocessing a
port must apply before it, and the SHA-256 of the weights file. It passes onnx.checker.check_model with
full_check (strict shape inference) before it is returned. Opsets MIN_OPSET (13) to MAX_OPSET (21) are
offered (ReduceMean's axes are an attribute before 18 and an input from 18 on) and all give the same numbers
in the three runtimes measured; the default, 17, is an older opset (more runtimes and converters read it)
and the forms need nothing newer.
"""

from __future__ import annotations

import json
from pathlib import Path

from npunet.errors import NpunetError
from npunet.ports import onnx_ops as ops
from npunet.ports.extras import need
from npunet.publish import atomic_write
from npunet.spec import Layer, expected_tensors, layer_plan
from npunet.version import __version__

DEFAULT_OPSET = 17
MIN_OPSET = ops.MIN_OPSET
MAX_OPSET = 21          # the newest opset onnx 1.16 (the oldest the extra allows) knows; 13-21 all run in ONNX
                        # Runtime, OpenVINO and the reference evaluator (tests/test_ports_export.py)
INPUT, OUTPUT = "input", "logits"


def check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise NpunetError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    return opset


def export_onnx(spec: dict, tensors: dict, *, opset: int = DEFAULT_OPSET, layers: bool = False,
                preprocessing: dict | None = None, weights_sha256: str | None = None):
    """The ONNX model (onnx.ModelProto) of the network `spec` with `tensors` (name -> float32 array, the names
    and shapes of npunet.spec.expected_tensors); see the module doc. NpunetError when onnx is missing."""
    onnx = need("onnx", "the ONNX export")
    from onnx import TensorProto, helper
    opset = check_opset(opset)
    missing = [name for name in expected_tensors(spec) if name not in tensors]
    if missing:
        raise NpunetError(f"the weights of spec {spec['name']!r} lack {len(missing)} tensors: {missing[:3]}")
    plan = layer_plan(spec)
    g = ops.Graph(opset)
    current = INPUT
    for layer in plan:
        current = _write_layer(g, layer, current, tensors, spec)
    g.add("Identity", [current], OUTPUT)
    k = spec["num_classes"]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", k, "height", "width"])]
    if layers:
        outputs += [helper.make_tensor_value_info(layer.name, TensorProto.FLOAT,
                                                  ["batch", layer.out_channels, None, None]) for layer in plan]
    graph = helper.make_graph(
        g.nodes, spec["name"],
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", spec["in_channels"], "height", "width"])],
        outputs, g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="npunet", producer_version=__version__,
                              doc_string=f"{spec['name']}, exported by npunet {__version__} (npunet export onnx)")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    about = {"npunet.version": __version__, "npunet.spec": json.dumps(spec, sort_keys=True),
             "npunet.layers": json.dumps([layer.name for layer in plan])}
    if preprocessing is not None:
        about["npunet.preprocessing"] = json.dumps(preprocessing, sort_keys=True)
    if weights_sha256 is not None:
        about["npunet.weights_sha256"] = weights_sha256
    helper.set_model_props(model, about)
    onnx.checker.check_model(model, full_check=True)
    return model


def _write_layer(g: ops.Graph, layer: Layer, x: str, tensors: dict, spec: dict) -> str:
    """Append one layer of the plan reading the value `x`; the name of the value it writes (the layer's)."""
    op, name = layer.op, layer.name
    weight = tensors.get(f"{name}.weight")
    if op in ("conv3x3", "pointwise"):
        return ops.conv(g, name, x, weight)
    if op == "depthwise":
        return ops.conv(g, name, x, weight, group=layer.in_channels)
    if op == "head":
        return ops.conv(g, name, x, weight, tensors[f"{name}.bias"])
    if op == "norm_relu":
        return ops.group_norm(g, name, x, weight, tensors[f"{name}.bias"], spec["norm"]["groups"],
                              float(spec["norm"]["eps"]))
    if op == "eca":
        return ops.eca(g, name, x, tensors[f"{name}.conv.weight"])
    if op == "maxpool":
        return ops.max_pool2x2(g, name, x)
    if op == "save_skip":
        return g.add("Identity", [x], name)
    if op == "upsample":
        return ops.upsample_bilinear2x(g, name, x, bool(spec["upsample"].get("align_corners", False)))
    if op == "transpose":
        return ops.conv_transpose2x2(g, name, x, weight, tensors[f"{name}.bias"])
    if op == "concat":
        return ops.concat(g, name, f"encoder.{dict([layer.extra])['skip']}", x)
    raise ValueError(f"layer {name}: no ONNX form for op {op!r}")


def model_bytes(model) -> bytes:
    return model.SerializeToString()


def write_onnx(model, path, overwrite: bool = False) -> Path:
    """Publish the model as the file `path` (npunet.publish.atomic_write: whole or not at all)."""
    data = model_bytes(model)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write, overwrite=overwrite)
