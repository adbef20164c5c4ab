"""A golden pack: test vectors for a port of the network, in files any language reads (.npy arrays and one
manifest.json), reproducible bit for bit by the same npunet version.

    cases = kernel_cases(spec)                         # small cases per op, seeded
    network = network_case(net, chosen)                # the whole network on one real slice, every layer
    write_pack(folder, cases + [network], overwrite=False)
    manifest = read_pack(folder)                       # the manifest, every file's SHA-256 verified

The pack:
    manifest.json           format, npunet version, and per case: name, op (npunet's), onnx_op and attributes
                            (in ONNX terms: what the op is in an ONNX graph), torch (the torch call it
                            mirrors), inputs and outputs (file, shape, dtype, SHA-256) and the tolerance
    CASE/NAME.npy           the arrays, C order, little-endian float32 (labels uint8)
A case's expected outputs come from npunet's NumPy twins (npunet.kernels *_reference: float64 sums, rounded
once), its inputs from a generator seeded per case; the network case holds the slice npunet.preprocess made,
the weights (one .npy per tensor, torch names), every layer's output (npunet's run_layers), the logits and
labels. Nothing in the pack depends on the time, the machine's paths or the thread count, so two packs made
by the same version from the same weights and CT are the same bytes (tests/test_ports_goldens.py).

Tolerances (`tolerance` in a case): "max_abs_diff" for float outputs, 1e-5 x max(1, max |expected|) for the
kernels (as npunet's kernel parity with torch, docs/parity.md), 0 for the impulse case (powers of two: every
value is exact); for the network, each layer's 1e-4 of its scale and 1e-4 for the logits (as `npunet
parity`); "min_agreement" for labels, the share of pixels that must match.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npunet import kernels as K
from npunet.errors import NpunetError
from npunet.publish import staged_folder
from npunet.spec import layer_plan
from npunet.version import __version__

FORMAT = "npunet-goldens/1"
MANIFEST = "manifest.json"
KERNEL_TOLERANCE = 1e-5          # of max(1, max |expected|)
LAYER_TOLERANCE = 1e-4           # of the layer's scale
LOGITS_TOLERANCE = 1e-4
LABELS_MIN_AGREEMENT = 0.9999
SEED = 23


@dataclass
class Case:
    name: str
    op: str                         # npunet's op: depthwise_conv3x3, group_norm, ..., network
    onnx_op: str                    # the ONNX op, or the ONNX nodes of a composite joined by "+"
    attributes: dict                # in ONNX terms
    torch: str                      # the torch call it mirrors
    inputs: dict                    # name -> array; "x" is the activation, the rest parameters
    outputs: dict                   # name -> expected array
    tolerance: dict                 # output name -> {"max_abs_diff": t} or {"min_agreement": share}
    about: dict = field(default_factory=dict)


def _conv_attributes(k: int, group: int = 1) -> dict:
    return {"kernel_shape": [k, k], "pads": [k // 2] * 4, "strides": [1, 1], "dilations": [1, 1], "group": group}


def _kernel_tolerance(*outputs) -> dict:
    return {"out": {"max_abs_diff": KERNEL_TOLERANCE * max(1.0, *(float(np.abs(o).max()) for o in outputs))}}


def kernel_cases(spec: dict) -> list[Case]:
    """Small seeded cases per kernel, covering its edges (see the module doc); ECA for every (channels,
    kernel size) the spec's encoder uses, GroupNorm with the spec's groups."""
    cases: list[Case] = []
    counter = iter(range(1000))

    def rng():
        return np.random.default_rng([SEED, next(counter)])

    def randn(r, *shape, scale=1.0, mean=0.0):
        return (mean + scale * r.standard_normal(shape)).astype(np.float32)

    def add(name, op, onnx_op, attributes, torch, inputs, out, tolerance=None):
        cases.append(Case(name, op, onnx_op, attributes, torch, inputs, {"out": out},
                          tolerance or _kernel_tolerance(out)))

    for label, shape in (("odd", (1, 3, 5, 7)), ("even", (2, 4, 6, 8)), ("1x1", (1, 2, 1, 1))):
        r = rng()
        x, w = randn(r, *shape), randn(r, shape[1], 1, 3, 3)
        add(f"depthwise_conv3x3_{label}", "depthwise_conv3x3", "Conv", _conv_attributes(3, shape[1]),
            f"F.conv2d(x, w, padding=1, groups={shape[1]})", {"x": x, "w": w}, K.depthwise_conv3x3_reference(x, w))
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = x[0, 0, 0, 4] = 1.0                   # impulses in the middle and in a corner
    taps = (2.0 ** np.arange(9)).reshape(1, 1, 3, 3).astype(np.float32)
    add("depthwise_conv3x3_impulse", "depthwise_conv3x3", "Conv", _conv_attributes(3, 1),
        "F.conv2d(x, w, padding=1, groups=1)", {"x": x, "w": taps}, K.depthwise_conv3x3_reference(x, taps),
        {"out": {"max_abs_diff": 0.0}})
    for label, shape, co in (("odd", (1, 3, 5, 7), 4), ("even", (1, 8, 6, 6), 5), ("odd_wide", (2, 16, 7, 9), 8)):
        r = rng()
        x, w = randn(r, *shape), randn(r, co, shape[1], 3, 3, scale=(2 / (9 * shape[1])) ** 0.5)
        add(f"conv3x3_{label}", "conv3x3", "Conv", _conv_attributes(3), "F.conv2d(x, w, padding=1)",
            {"x": x, "w": w}, K.conv3x3_reference(x, w))
    r = rng()
    x, w = randn(r, 2, 5, 4, 3), randn(r, 7, 5, 1, 1)
    add("pointwise_conv", "pointwise_conv", "Conv", _conv_attributes(1), "F.conv2d(x, w)", {"x": x, "w": w},
        K.pointwise_conv_reference(x, w))
    r = rng()
    x, w, b = randn(r, 1, 16, 5, 5), randn(r, 14, 16, 1, 1, scale=0.25), randn(r, 14)
    add("pointwise_conv_bias", "pointwise_conv", "Conv", _conv_attributes(1), "F.conv2d(x, w, b) (the head)",
        {"x": x, "w": w, "bias": b}, K.pointwise_conv_reference(x, w, b))
    r = rng()
    x, w, b = randn(r, 1, 4, 3, 5), randn(r, 4, 3, 2, 2), randn(r, 3)
    add("conv_transpose2x2", "conv_transpose2x2", "ConvTranspose",
        {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}, "F.conv_transpose2d(x, w, b, stride=2)",
        {"x": x, "w": w, "bias": b}, K.conv_transpose2x2_reference(x, w, b))
    groups, eps = spec["norm"]["groups"], float(spec["norm"]["eps"])
    for label, shape, mean, relu in (("1_per_group", (2, groups, 5, 7), 0.0, False),
                                     ("8_per_group", (1, 8 * groups, 6, 6), 0.0, False),
                                     ("32_per_group", (1, 32 * groups, 3, 3), 0.0, False),
                                     ("relu", (2, 2 * groups, 4, 4), 0.0, True),
                                     ("mean_1000", (1, 2 * groups, 9, 9), 1000.0, False)):
        r = rng()
        x = randn(r, *shape, scale=0.5 if mean else 2.0, mean=mean)
        w, b = randn(r, shape[1], scale=0.5, mean=1.0), randn(r, shape[1], scale=0.2)
        add(f"group_norm_{label}", "group_norm", "GroupNormalization" + ("+Relu" if relu else ""),
            {"num_groups": groups, "epsilon": eps, "relu": relu, "scale_and_bias": "per channel (opset 21)"},
            f"F.group_norm(x, {groups}, w, b, eps={eps:g})" + (" then F.relu" if relu else ""),
            {"x": x, "weight": w, "bias": b}, K.group_norm_reference(x, w, b, groups, eps, relu=relu))
    channels_of_kernel: dict[int, int] = {}                # each ECA kernel size, with the first width using it
    for st in spec["encoder"]:
        if st.get("eca_kernel"):
            channels_of_kernel.setdefault(st["eca_kernel"], st["channels"])
    eca_shapes = list(channels_of_kernel.items())
    if eca_shapes:
        eca_shapes.append((max(channels_of_kernel), 3))    # fewer channels than taps: padding at both ends
    for k, c in eca_shapes:
        r = rng()
        x, w = randn(r, 2, c, 5, 6), randn(r, 1, 1, k)
        add(f"eca_k{k}_c{c}", "eca", "ReduceMean+Conv+Sigmoid+Mul", {"kernel_size": k, "pads": [(k - 1) // 2] * 2},
            f"x * torch.sigmoid(F.conv1d(x.mean((2, 3))[:, None], w, padding={(k - 1) // 2}))[:, 0, :, None, None]",
            {"x": x, "w": w}, K.eca_reference(x, w))
    for shape in ((1, 3, 7, 5), (2, 4, 9, 9)):
        r = rng()
        x = randn(r, *shape)
        add(f"max_pool2x2_{shape[2]}x{shape[3]}", "max_pool2x2", "MaxPool",
            {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0], "ceil_mode": 0}, "F.max_pool2d(x, 2)",
            {"x": x}, K.max_pool2x2_reference(x))
    for align in (False, True):
        r = rng()
        x = randn(r, 1, 3, 5, 4)
        add(f"upsample_bilinear2x_align_corners_{str(align).lower()}", "upsample_bilinear2x", "Resize",
            _resize_attributes(align, scales=[1, 1, 2, 2]),
            f"F.interpolate(x, scale_factor=2, mode='bilinear', align_corners={align})", {"x": x},
            K.upsample_bilinear2x_reference(x, align))
    for label, shape, size in (("down_8_3", (1, 2, 32, 32), (12, 12)), ("up_7x9", (1, 1, 7, 9), (16, 20))):
        r = rng()
        x = randn(r, *shape)
        add(f"resize_bilinear_{label}", "resize_bilinear", "Resize", _resize_attributes(False, sizes=list(size)),
            f"F.interpolate(x, size={size}, mode='bilinear', align_corners=False)", {"x": x},
            K.resize_bilinear_reference(x, *size, align_corners=False))
    r = rng()
    skip, up = randn(r, 1, 3, 4, 4), randn(r, 1, 5, 4, 4)
    add("concat_skip_first", "concat_channels", "Concat", {"axis": 1, "order": ["skip", "x"]},
        "torch.cat([skip, x], 1)", {"x": up, "skip": skip}, K.concat_channels_reference(skip, up))
    r = rng()
    logits = randn(r, 1, 14, 12, 12, scale=3.0)
    crop = (4, 0, 24, 32)
    labels = K.upsample_argmax_reference(logits, 32, 32, *crop)
    add("upsample_argmax", "upsample_argmax", "Resize+Slice+ArgMax+Cast",
        {**_resize_attributes(False, sizes=[32, 32]), "crop": {"y0": crop[0], "x0": crop[1], "height": crop[2],
                                                              "width": crop[3]}, "axis": 1, "keepdims": 0,
         "select_last_index": 0, "to": "uint8"},
        "F.interpolate(x, size=(32, 32), mode='bilinear', align_corners=False)[:, :, 4:28, 0:32].argmax(1)",
        {"x": logits}, labels, {"out": {"min_agreement": 0.999}})
    return cases


def _resize_attributes(align_corners: bool, **scales_or_sizes) -> dict:
    """Resize's attributes, and its scales or sizes (inputs in ONNX, listed here)."""
    return {"mode": "linear", "coordinate_transformation_mode": "align_corners" if align_corners else "half_pixel",
            **scales_or_sizes}


def network_case(net, x: np.ndarray, about: dict) -> Case:
    """The whole network on x (1, C, H, W), a real preprocessed slice: the weights, every layer's output, the
    logits and the labels (argmax)."""
    inputs = {"x": np.ascontiguousarray(x, np.float32)}
    inputs.update({f"weights/{name}": tensor for name, tensor in net.tensors.items()})
    outputs, tolerance = {}, {}
    for step in net.run_layers(inputs["x"], keep=True):
        outputs[f"layers/{step.layer.name}"] = step.output
        tolerance[f"layers/{step.layer.name}"] = {"max_abs_diff": LAYER_TOLERANCE * float(np.abs(step.output).max()),
                                                  "relative_to_scale": LAYER_TOLERANCE}
    outputs["logits"] = outputs[f"layers/{net.plan[-1].name}"]
    outputs["labels"] = outputs["logits"].argmax(1).astype(np.uint8)
    tolerance["logits"] = {"max_abs_diff": LOGITS_TOLERANCE}
    tolerance["labels"] = {"min_agreement": LABELS_MIN_AGREEMENT}
    return Case("network", "network", "(npunet export onnx)", {"layers": [layer.name for layer in net.plan]},
                "tools/torch_model.py UNet(spec)", inputs, outputs, tolerance,
                {"spec": net.spec, "preprocessing": net.preprocessing, "weights_sha256": net.weights_sha256,
                 **about})


# ---------------------------------------------------------------------------------------- the files --

def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file of `array`: C order, little-endian (float32, or uint8 for labels)."""
    array = np.ascontiguousarray(array)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _entry(path: str, array: np.ndarray, data: bytes) -> dict:
    return {"file": path, "shape": list(array.shape), "dtype": str(array.dtype),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_pack(folder, cases: list[Case], overwrite: bool = False) -> tuple[Path, int]:
    """Write the cases as a pack in `folder` (published whole, npunet.publish.staged_folder); the folder and the
    bytes written."""
    manifest = {"format": FORMAT, "npunet_version": __version__,
                "read_me": "Each case: inputs ('x' the activation, the rest parameters) and expected outputs as "
                           ".npy (C order, little-endian), the op in ONNX terms, the torch call it mirrors, and the "
                           "tolerance: max_abs_diff for floats, min_agreement (share of values) for labels. "
                           "Made by `npunet goldens`; checked by `npunet goldens --check DIR --runtime R`.",
                "cases": []}
    files: dict[str, bytes] = {}
    for case in cases:
        entry = {"name": case.name, "op": case.op, "onnx_op": case.onnx_op, "attributes": case.attributes,
                 "torch": case.torch, "inputs": {}, "outputs": {}, "tolerance": case.tolerance, **case.about}
        for kind, arrays in (("inputs", case.inputs), ("outputs", case.outputs)):
            for name, array in arrays.items():
                path = f"{case.name}/{name}.npy"
                files[path] = npy_bytes(array)
                entry[kind][name] = _entry(path, np.asarray(array), files[path])
        manifest["cases"].append(entry)
    files[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    folder = Path(folder)
    with staged_folder(folder, overwrite=overwrite, may_replace=is_pack) as staging:
        for path, data in files.items():
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return folder, sum(len(d) for d in files.values())


def is_pack(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_pack(folder) -> dict:
    """The manifest of the pack in `folder`, with every file's SHA-256 verified; NpunetError otherwise."""
    folder = Path(folder)
    if not is_pack(folder):
        raise NpunetError(f"{folder}: not a golden pack (no {MANIFEST}); make one with `npunet goldens -o DIR`")
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise NpunetError(f"{folder / MANIFEST}: cannot be read as JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NpunetError(f"{folder / MANIFEST}: format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                          f", this npunet reads {FORMAT}")
    for case in manifest["cases"]:
        for entry in (*case["inputs"].values(), *case["outputs"].values()):
            path = folder / entry["file"]
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                raise NpunetError(f"{path}: missing or changed (its SHA-256 is not the manifest's): the pack is "
                                  f"damaged; make it again with `npunet goldens -o DIR`")
    return manifest


def load_array(folder, entry: dict) -> np.ndarray:
    return np.load(Path(folder) / entry["file"], allow_pickle=False)


def network_layers(case: dict, folder) -> list:
    """[(Layer, expected output)] of a pack's network case, in execution order (for npunet.ports.parity)."""
    plan = layer_plan(case["spec"])
    return [(layer, load_array(folder, case["outputs"][f"layers/{layer.name}"])) for layer in plan]
