"""The ONNX form of each npunet op: one function per op that appends its nodes to a Graph, so that the whole
network (npunet.ports.onnx_export) and the golden pack's one-op models (npunet.ports.goldens) are built from
the same nodes.

Each function takes the Graph, the layer's name, the names of the values it reads and its parameters as
float32 arrays in npunet's (torch's) layouts, and returns the name of the value it writes. The node that
writes the layer's output and that value are both named after the layer (`encoder.1.convs.0.pointwise`);
the helper nodes and values of a composite op are `<layer>/<what>`. Values are (N, C, H, W) float32.

    op                 ONNX nodes                                                  torch
    depthwise 3x3      Conv group=C, kernel 3x3, pads 1                            F.conv2d(groups=C, padding=1)
    dense 3x3          Conv kernel 3x3, pads 1                                     F.conv2d(padding=1)
    pointwise, head    Conv kernel 1x1 (the head with its bias)                    F.conv2d
    ConvTranspose 2x2  ConvTranspose kernel 2x2, strides 2, W (Ci, Co, 2, 2)       F.conv_transpose2d(stride=2)
    GroupNorm + ReLU   Reshape (N, G, C/G*H, W), Sub each group's first value,    F.relu(F.group_norm)
                       mean (of the row means), Sub, Mul, mean, Add eps, Sqrt,
                       Div, Reshape back, Mul scale (C,1,1), Add bias (C,1,1), Relu
    ECA                mean over H, W (of the row means), Reshape (N, 1, C),       x * sigmoid(conv1d(mean))
                       Conv 1D kernel k, pads (k-1)/2, no bias, Sigmoid,
                       Reshape (N, C, 1, 1), Mul
    max-pool 2x2       MaxPool kernel 2, strides 2 (ceil_mode 0: floor)            F.max_pool2d(x, 2)
    bilinear x2        Resize linear, scales (1, 1, 2, 2), coordinate mode         F.interpolate(scale_factor=2)
                       half_pixel (align_corners False) or align_corners
    concat             Concat axis 1, [skip, upsampled]                            torch.cat([skip, up], 1)
    resize to a size   Resize linear, sizes (N, C, h, w), half_pixel/align_corners F.interpolate(size=...)
    upsample + argmax  Resize to a size, Slice the crop, ArgMax axis 1, Cast uint8 argmax(interpolate(...))[crop]

GroupNorm is a decomposition, not ONNX's GroupNormalization: version 18 of that op has one scale and bias per
group (the network's affine is per channel; version 21 fixed that), and version 21 gave NaN on groups of mean
1000 in ONNX Runtime 1.32 (a negative variance: one float32 pass, E[x^2] - E[x]^2) and was 7.0 off there in
onnx's reference evaluator. The obvious decomposition, one ReduceMean over each group (up to 73,728 values at
192x192), sums them in float32 in one run: 5.5e-4 off on the first GroupNorm of real CT slices in ONNX Runtime,
more than the 1e-4 asked of the whole network's logits. This one takes the mean of row means (a few
hundred values each), twice (mean, then variance of the centred values), over values shifted by the group's
first value (npunet's fast path shifts the same way): 3.8e-6 off on that real slice and 9.5e-7 on mean 1000,
in ONNX Runtime, OpenVINO and the reference evaluator alike (`python -m pytest -q -s
tests/test_ports_export.py -k group_norm_forms` prints every figure). It runs at every opset from 13.

Bilinear x2 with half_pixel reads src = (dst + 0.5) / 2 - 0.5 and clamps it at the first row, as torch's
align_corners=False does (torch's "pytorch_half_pixel" differs only for an output of length 1).
"""

from __future__ import annotations

import numpy as np

MIN_OPSET = 13      # Resize, Slice, ReduceMean as used here; empty optional inputs ("")
AXES_AS_INPUT = 18  # from opset 18 ReduceMean takes its axes as an input, not an attribute


class Graph:
    """The nodes and initializers of one ONNX graph under construction, for one opset."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self.values: set[str] = set()     # every value written so far (initializers included)

    def constant(self, name: str, array) -> str:
        """An initializer named `name` holding `array` (its dtype kept); returns the name."""
        from onnx import numpy_helper
        self._claim(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op_type: str, inputs: list[str], output: str, name: str | None = None, **attributes) -> str:
        """A node `op_type` reading `inputs`, writing the value `output`, named `name` (default: the output's
        name); returns the output's name."""
        from onnx import helper
        self._claim(output)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name or output, **attributes))
        return output

    def _claim(self, name: str) -> None:
        if name in self.values:
            raise ValueError(f"ONNX value {name!r} written twice")
        self.values.add(name)

    def reduce_mean(self, x: str, axes: list[int], output: str, keepdims: bool = True) -> str:
        """ReduceMean over `axes`, in the form of this graph's opset."""
        if self.opset >= AXES_AS_INPUT:
            return self.add("ReduceMean", [x, self.constant(f"{output}/axes", np.array(axes, np.int64))], output,
                            keepdims=int(keepdims))
        return self.add("ReduceMean", [x], output, axes=list(axes), keepdims=int(keepdims))

    def mean_of_rows(self, x: str, output: str) -> str:
        """(N, A, R, W) -> (N, A, 1): the mean over the last two axes, as the mean of the row means. Two
        ReduceMeans of at most a few hundred values each, with keepdims 0 between them so that no runtime
        merges them into one float32 sum over all R*W values (OpenVINO merges two keepdims-1 reductions)."""
        rows = self.reduce_mean(x, [3], f"{output}/rows", keepdims=False)                   # (N, A, R)
        return self.reduce_mean(rows, [2], output)                                           # (N, A, 1)


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def conv(g: Graph, name: str, x: str, weight, bias=None, group: int = 1) -> str:
    """Conv of x (N, Ci, H, W) with weight (Co, Ci/group, k, k), stride 1, zero padding k//2 (1 for 3x3, 0 for
    1x1), optional bias (Co,): depthwise (group = Ci), dense 3x3, pointwise and the head."""
    k = int(weight.shape[-1])
    inputs = [x, g.constant(f"{name}.weight", _f32(weight))]
    if bias is not None:
        inputs.append(g.constant(f"{name}.bias", _f32(bias)))
    return g.add("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1], dilations=[1, 1],
                 group=int(group))


def conv_transpose2x2(g: Graph, name: str, x: str, weight, bias) -> str:
    """x (N, Ci, H, W), weight (Ci, Co, 2, 2) (torch's and ONNX's layout), bias (Co,) -> (N, Co, 2H, 2W)."""
    inputs = [x, g.constant(f"{name}.weight", _f32(weight)), g.constant(f"{name}.bias", _f32(bias))]
    return g.add("ConvTranspose", inputs, name, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])


def group_norm(g: Graph, name: str, x: str, weight, bias, groups: int, eps: float, relu: bool = True) -> str:
    """GroupNorm of x (N, C, H, W) in `groups` groups (biased variance, eps), per-channel weight and bias (C,),
    then ReLU when `relu`: the decomposition of the module doc."""
    c = int(weight.shape[0])
    p = f"{name}/"
    shape = g.add("Shape", [x], p + "shape")
    grouped = g.add("Reshape", [x, g.constant(p + "group_rows", np.array([0, groups, -1, 0], np.int64))],
                    p + "grouped")                                                # (N, G, C/G*H, W)
    first = g.add("Slice", [grouped, g.constant(p + "zeros", np.array([0, 0], np.int64)),
                            g.constant(p + "ones", np.array([1, 1], np.int64)),
                            g.constant(p + "row_axes", np.array([2, 3], np.int64))], p + "first")   # (N, G, 1, 1)
    shifted = g.add("Sub", [grouped, first], p + "shifted")
    to_4d = g.constant(p + "as_4d", np.array([0, 0, 1, 1], np.int64))
    mean = g.add("Reshape", [g.mean_of_rows(shifted, p + "mean_3d"), to_4d], p + "mean")          # (N, G, 1, 1)
    centred = g.add("Sub", [shifted, mean], p + "centred")
    squares = g.add("Mul", [centred, centred], p + "squares")
    variance = g.add("Reshape", [g.mean_of_rows(squares, p + "variance_3d"), to_4d], p + "variance")
    std = g.add("Sqrt", [g.add("Add", [variance, g.constant(p + "eps", np.array(eps, np.float32))],
                               p + "variance_eps")], p + "std")
    normalised = g.add("Reshape", [g.add("Div", [centred, std], p + "normalised_grouped"), shape], p + "normalised")
    scaled = g.add("Mul", [normalised, g.constant(f"{name}.weight", _f32(weight).reshape(c, 1, 1))], p + "scaled")
    bias = g.constant(f"{name}.bias", _f32(bias).reshape(c, 1, 1))
    if not relu:
        return g.add("Add", [scaled, bias], name)
    return g.add("Relu", [g.add("Add", [scaled, bias], p + "affine")], name)


def eca(g: Graph, name: str, x: str, weight) -> str:
    """Efficient Channel Attention on x (N, C, H, W) with the 1D kernel weight (1, 1, k), k odd (from the
    weight's shape, never recomputed): x * sigmoid(conv1d over channels of the mean over H, W)."""
    k = int(weight.shape[-1])
    p = f"{name}/"
    mean = g.mean_of_rows(x, p + "mean")                                                      # (N, C, 1)
    sequence = g.add("Reshape", [mean, g.constant(p + "sequence_shape", np.array([0, 1, -1], np.int64))],
                     p + "sequence")                                                          # (N, 1, C)
    conv1d = g.add("Conv", [sequence, g.constant(f"{name}.conv.weight", _f32(weight))], p + "conv",
                   kernel_shape=[k], pads=[(k - 1) // 2] * 2, strides=[1], dilations=[1], group=1)
    gate = g.add("Sigmoid", [conv1d], p + "gate")                                             # (N, 1, C)
    gates = g.add("Reshape", [gate, g.constant(p + "gates_shape", np.array([0, -1, 1, 1], np.int64))],
                  p + "gates")                                                                # (N, C, 1, 1)
    return g.add("Mul", [x, gates], name)


def max_pool2x2(g: Graph, name: str, x: str) -> str:
    """(N, C, H, W) -> (N, C, H//2, W//2), the max of each 2x2 window (floor)."""
    return g.add("MaxPool", [x], name, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0)


def coordinate_mode(align_corners: bool) -> str:
    """Resize's coordinate_transformation_mode for torch's bilinear align_corners."""
    return "align_corners" if align_corners else "half_pixel"


def upsample_bilinear2x(g: Graph, name: str, x: str, align_corners: bool = False) -> str:
    """(N, C, H, W) -> (N, C, 2H, 2W), bilinear, no antialias."""
    scales = g.constant(f"{name}/scales", np.array([1, 1, 2, 2], np.float32))
    return g.add("Resize", [x, "", scales], name, mode="linear",
                 coordinate_transformation_mode=coordinate_mode(align_corners))


def concat(g: Graph, name: str, skip: str, up: str) -> str:
    """[skip (N, Cs, H, W), up (N, Cu, H, W)] -> (N, Cs + Cu, H, W): the skip first."""
    return g.add("Concat", [skip, up], name, axis=1)


def resize_bilinear(g: Graph, name: str, x: str, out_h: int, out_w: int, align_corners: bool = False) -> str:
    """(N, C, H, W) -> (N, C, out_h, out_w), bilinear to a given size, no antialias."""
    p = f"{name}/"
    batch_channels = g.add("Slice", [g.add("Shape", [x], p + "shape"), g.constant(p + "zero", np.array([0], np.int64)),
                                     g.constant(p + "two", np.array([2], np.int64))], p + "batch_channels")
    sizes = g.add("Concat", [batch_channels, g.constant(p + "size", np.array([out_h, out_w], np.int64))],
                  p + "sizes", axis=0)
    return g.add("Resize", [x, "", "", sizes], name, mode="linear",
                 coordinate_transformation_mode=coordinate_mode(align_corners))


def upsample_argmax(g: Graph, name: str, logits: str, out_h: int, out_w: int, crop_y0: int = 0, crop_x0: int = 0,
                    crop_h: int | None = None, crop_w: int | None = None) -> str:
    """logits (N, K, H, W) -> labels (N, crop_h, crop_w) uint8: bilinear to (out_h, out_w) (align_corners
    False), the crop, argmax over the classes (the first of equal values wins)."""
    crop_h = out_h if crop_h is None else crop_h
    crop_w = out_w if crop_w is None else crop_w
    p = f"{name}/"
    up = resize_bilinear(g, p + "resize", logits, out_h, out_w)
    crop = g.add("Slice", [up, g.constant(p + "starts", np.array([crop_y0, crop_x0], np.int64)),
                           g.constant(p + "ends", np.array([crop_y0 + crop_h, crop_x0 + crop_w], np.int64)),
                           g.constant(p + "axes", np.array([2, 3], np.int64))], p + "crop")
    index = g.add("ArgMax", [crop], p + "argmax", axis=1, keepdims=0, select_last_index=0)
    from onnx import TensorProto
    return g.add("Cast", [index], name, to=TensorProto.UINT8)
