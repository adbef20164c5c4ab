"""The U-Net, built from its spec and run with npunet's kernels.

Read `Network.forward_plain` first: the architecture as the paper draws it, one kernel call per layer. The
encoder stages (a 2x2 max-pool from the second stage on, two conv units, each a depthwise-separable or dense
3x3 conv followed by GroupNorm + ReLU, then ECA), the last of them the bottleneck; the decoder stages
(upsample x2, concatenate the encoder's skip, two conv units); the 1x1 head. Every tensor's name is the torch
module path that owns its weights (`encoder.1.convs.0.pointwise.weight`), so a torch state_dict loads by name
alone (npunet.spec.expected_tensors).

`net(x)` computes the same logits faster: it runs the fused list of steps that npunet.steps compiles once from
the layer plan, each step naming its kernel and the values it reads (bit-identical to the plain forward;
tests/test_network.py ties them together). `Network.run_layers(x)` is the public per-layer hook: it yields a
LayerStep per layer (its output and wall time; with keep=True also a copy of its input, an ECA layer's gates
and a GroupNorm's per-group statistics), for teaching (`npunet explain`), profiling (docs/profile_layers.py)
and debugging parity; `Network.trace(x)` is its short form, the list of (layer, output).

Memory: every step writes into a buffer that the network keeps and reuses from call to call (writing
never-touched memory is slow, and a batch loop would otherwise allocate ~70 fresh arrays per call). GroupNorm
+ReLU and ECA run in place. Buffers are shared by steps whose outputs are never alive at the same time
(Network._buffer: a step's output goes to an arena array that none of the values still to be read occupies),
per thread, so one Network may serve several threads; they grow to the largest batch seen (a smaller batch
uses a leading part). Only the returned logits are a fresh array.

    net = npunet.load()                    # the shipped weights, or npunet.load("my.npuw")
    logits = net(x)                        # x (N, 3, H, W) float32 -> (N, 14, H, W) float32
    for step in net.run_layers(x, keep=True):
        print(step.layer.name, step.output.shape, f"{step.seconds * 1e3:.2f} ms")
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from npunet import kernels as K
from npunet.resources import advise_huge_pages
from npunet.spec import Layer, expected_tensors, layer_plan
from npunet.steps import Step, compile_steps


@dataclass
class LayerStep:
    """One layer of a forward pass, as Network.run_layers yields it. Arrays are (N, C, H, W) unless noted.

    output      the layer's output: with keep=True a copy; without, the network's own buffer, valid only
                until the next layer runs (and, where the fused path leaves a layer's work to the next conv,
                the layer's input unchanged: see npunet.steps)
    seconds     wall time of the layer's kernel call(s) (copies and the extras below not included)
    input       keep=True only: the layer's input, i.e. the previous step's output (the network input for
                the first layer; a concat also reads the skip saved by its encoder stage)
    gate        keep=True, eca layers: (N, C) float32, the gates the kernel applied,
                output[n, c] == input[n, c] * gate[n, c]
    group_mean, group_std    keep=True, norm_relu layers: (N, groups) float64, the per-group mean and
                standard deviation (biased, before eps) of the input that GroupNorm normalised
    """
    index: int
    layer: Layer
    output: np.ndarray
    seconds: float
    input: np.ndarray | None = None
    gate: np.ndarray | None = None
    group_mean: np.ndarray | None = None
    group_std: np.ndarray | None = None


def _reused_buffer(size: int) -> np.ndarray:
    """A float32 arena array of `size`, backed by huge pages where Linux offers them (npunet.resources
    .advise_huge_pages: every batch writes and reads it)."""
    buffer = np.empty(size, np.float32)
    advise_huge_pages(buffer)
    return buffer


@dataclass(frozen=True)
class Stage:
    """The layers of one stage of the U-Net, grouped for the plain forward."""
    down: Layer | None              # encoder: the max-pool (None for the first stage); decoder: upsample/transpose
    units: tuple[tuple[Layer, ...], ...]    # conv units: (conv or depthwise[, norm], pointwise, norm)
    eca: Layer | None = None        # encoder only


class Network:
    def __init__(self, spec: dict, tensors: dict[str, np.ndarray], labels: dict | None = None,
                 preprocessing: dict | None = None, metadata: dict | None = None, weights_sha256: str | None = None):
        want = expected_tensors(spec)
        missing = [k for k in want if k not in tensors]
        if missing:
            raise ValueError(f"tensors missing for spec {spec['name']!r}: {missing[:5]}")
        self.spec = spec
        self.tensors = {k: np.ascontiguousarray(tensors[k], dtype=np.float32) for k in want}
        self.plan = layer_plan(spec)
        self.labels = {int(k): v for k, v in (labels or {}).items()}
        self.preprocessing = dict(preprocessing or {})
        self.metadata = dict(metadata or {})
        self.weights_sha256 = weights_sha256          # the weights file's SHA-256, when loaded from one
        self.weights_path: str | None = None          # and its absolute path (from_file)
        self.groups = spec["norm"]["groups"]
        self.eps = float(spec["norm"]["eps"])
        self.align_corners = bool(spec["upsample"].get("align_corners", False))
        self.downsampling = 2 ** (len(spec["encoder"]) - 1)
        self.encoder, self.decoder = _stages(self.plan, "encoder"), _stages(self.plan, "decoder")
        self.fused = compile_steps(self.plan, fuse=True)         # net(x), run_layers(x)
        self.unfused = compile_steps(self.plan, fuse=False)      # run_layers(x, keep=True), trace(x)
        self.winograd = {layer.name: K.winograd_weights(self.tensors[f"{layer.name}.weight"])   # transformed once
                         for layer in self.plan if layer.op == "conv3x3"}
        self._local = threading.local()        # per-thread layer buffers, see _buffer

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    # The kernels (npunet.precompile.EXERCISES) that each step's method below calls.
    _STEP_KERNELS = {"conv3x3_winograd_normalised": ("winograd",), "conv3x3_winograd_upsampling": ("winograd",),
                     "depthwise": ("depthwise",), "pointwise": ("pointwise",), "head": ("pointwise",),
                     "head_normalised": ("pointwise",), "norm_relu": ("group_norm",),
                     "group_norm_coefficients": ("group_norm_coefficients",), "eca": ("eca",),
                     "maxpool": ("max_pool",), "upsample_concat": ("bilinear",), "transpose": ("conv_transpose2x2",),
                     "concat_channels": ("concat",), "alias": (), "defer": ()}

    def kernels(self) -> list[str]:
        """The kernels that segmenting with this network runs (names of npunet.precompile.EXERCISES): those of
        its fused forward, the bilinear resize to its input size, the upsample + argmax of its logits back to
        the slice, and the closing and counts of the label map (npunet.pipeline, npunet.case)."""
        names = {"bilinear", "upsample_argmax", "label_map"}
        for step in self.fused:
            if step.kernel == "conv3x3":
                names.add("winograd" if step.layer.in_channels >= K.WINOGRAD_MIN_CI else "conv3x3")
            else:
                names.update(self._STEP_KERNELS[step.kernel])
        return sorted(names)

    # ------------------------------------------------------------------------------ the architecture --

    def forward_plain(self, x: np.ndarray) -> np.ndarray:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W): the U-Net read top to bottom, one kernel
        call per layer, every intermediate tensor a new array. net(x) gives the same logits, faster."""
        x = self._check_input(x)
        skips = []
        for stage in self.encoder:                         # the last encoder stage is the bottleneck
            if stage.down is not None:
                x = K.max_pool2x2(x)
            for unit in stage.units:
                x = self._conv_unit(unit, x)
            if stage.eca is not None:
                x = K.eca(x, self.tensors[f"{stage.eca.name}.conv.weight"])
            skips.append(x)
        skips.pop()                                        # the bottleneck's output is upsampled, not skipped
        for stage in self.decoder:
            if stage.down.op == "transpose":
                x = K.conv_transpose2x2(x, self.tensors[f"{stage.down.name}.weight"],
                                        self.tensors[f"{stage.down.name}.bias"])
            else:
                x = K.upsample_bilinear2x(x, self.align_corners)
            x = K.concat_channels(skips.pop(), x)          # [skip, upsampled] on channels
            for unit in stage.units:
                x = self._conv_unit(unit, x)
        return K.pointwise_conv(x, self.tensors["head.weight"], self.tensors["head.bias"])

    def _conv_unit(self, unit: tuple[Layer, ...], x: np.ndarray) -> np.ndarray:
        """A conv (dense 3x3, or depthwise 3x3 then pointwise 1x1) with GroupNorm + ReLU after it."""
        t = self.tensors
        for layer in unit:
            w = t.get(f"{layer.name}.weight")
            if layer.op == "conv3x3":
                x = K.conv3x3(x, w, winograd_weights=self.winograd[layer.name])
            elif layer.op == "depthwise":
                x = K.depthwise_conv3x3(x, w)
            elif layer.op == "pointwise":
                x = K.pointwise_conv(x, w)
            else:                                          # norm_relu
                x = K.group_norm(x, w, t[f"{layer.name}.bias"], self.groups, self.eps, relu=True)
        return x

    # ----------------------------------------------------------------------------- the fast forward --

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W), float32: the fused steps."""
        values = {"input": self._check_input(x)}
        for step in self.fused:
            self._run_step(step, values)
        return values["head"]

    def trace(self, x: np.ndarray) -> list[tuple[Layer, np.ndarray]]:
        """Every layer with a copy of its output, in execution order (for teaching and parity debugging)."""
        return [(step.layer, step.output) for step in self.run_layers(x, keep=True)]

    def run_layers(self, x: np.ndarray, keep: bool = False) -> Iterator[LayerStep]:
        """The forward pass of x (N, in_channels, H, W), one LayerStep per layer of self.plan, in order.

        keep=False runs exactly what net(x) runs (the fused steps: same kernels, same buffers), for timing it
        layer by layer; a layer whose work the fused path leaves to the next conv takes ~0 s and yields its
        input unchanged (its work is timed in that conv). keep=True runs the unfused steps, so every output is
        there to look at (bit-identical: the last output equals net(x)), and fills the LayerStep's input,
        gate and group statistics."""
        values = {"input": self._check_input(x)}
        before = values["input"]      # with keep: a copy of the current layer's input (layers run in place)
        for i, step in enumerate(self.unfused if keep else self.fused):
            gate = np.empty(before.shape[:2], np.float32) if keep and step.kernel == "eca" else None
            t0 = time.perf_counter()
            self._run_step(step, values, gate=gate)
            seconds = time.perf_counter() - t0
            output = values[step.shows]
            if not keep:
                yield LayerStep(i, step.layer, output, seconds)
                continue
            shown = LayerStep(i, step.layer, output.copy(), seconds, input=before, gate=gate)
            if step.kernel == "norm_relu":
                shown.group_mean, shown.group_std = K.group_norm_statistics(before, self.groups)
            before = shown.output
            yield shown

    def _run_step(self, step: Step, values: dict, gate=None) -> None:
        """Run one step: read its inputs from `values`, write its outputs there."""
        args = [values[name] for name in step.inputs]
        busy = args + [values[name] for name in step.alive_after if name in values]
        result = getattr(self, f"_{step.kernel}")(step.layer, busy, *args, **({"gate": gate} if gate is not None
                                                                               else {}))
        if len(step.outputs) == 1:
            values[step.outputs[0]] = result
        else:
            values.update(zip(step.outputs, result))

    # One method per kernel a step can name: (layer, busy arrays, *inputs) -> output(s). `busy` are the arrays a
    # new output must not overlap (the step's inputs and every value a later step reads).

    def _conv3x3(self, layer, busy, x):
        return K.conv3x3(x, self.tensors[f"{layer.name}.weight"], out=self._out(layer, x, busy),
                         winograd_weights=self.winograd[layer.name])

    def _conv3x3_winograd_normalised(self, layer, busy, x, coefficients):     # relu(group_norm(x)) read as it goes
        return K.conv3x3_winograd(x, self.tensors[f"{layer.name}.weight"], out=self._out(layer, x, busy),
                                  u=self.winograd[layer.name], norm_relu=coefficients)

    def _conv3x3_winograd_upsampling(self, layer, busy, skip, low):           # [skip, upsample(low)] read as it goes
        return K.conv3x3_winograd(skip, self.tensors[f"{layer.name}.weight"], out=self._out(layer, skip, busy),
                                  u=self.winograd[layer.name], low=low, align_corners=self.align_corners)

    def _depthwise(self, layer, busy, x):
        return K.depthwise_conv3x3(x, self.tensors[f"{layer.name}.weight"], out=self._out(layer, x, busy))

    def _pointwise(self, layer, busy, x):
        return K.pointwise_conv(x, self.tensors[f"{layer.name}.weight"], out=self._out(layer, x, busy))

    def _norm_relu(self, layer, busy, x):                                       # in place
        t = self.tensors
        return K.group_norm(x, t[f"{layer.name}.weight"], t[f"{layer.name}.bias"], self.groups, self.eps,
                            relu=True, out=x)

    def _group_norm_coefficients(self, layer, busy, x):
        t = self.tensors
        return K.group_norm_coefficients(x, t[f"{layer.name}.weight"], t[f"{layer.name}.bias"], self.groups,
                                         self.eps)

    def _eca(self, layer, busy, x, gate=None):                                  # in place
        return K.eca(x, self.tensors[f"{layer.name}.conv.weight"], out=x, gate=gate)

    def _maxpool(self, layer, busy, x):
        n, c, h, w = x.shape
        return K.max_pool2x2(x, out=self._buffer((n, c, h // 2, w // 2), busy))

    def _upsample_concat(self, layer, busy, skip, x):                          # -> (concat, its upsampled part)
        n, c, h, w = x.shape
        cat = K.upsample_concat(skip, x, self.align_corners,
                                out=self._buffer((n, skip.shape[1] + c, 2 * h, 2 * w), busy))
        return cat, cat[:, skip.shape[1]:]

    def _transpose(self, layer, busy, x):
        n, c, h, w = x.shape
        return K.conv_transpose2x2(x, self.tensors[f"{layer.name}.weight"], self.tensors[f"{layer.name}.bias"],
                                   out=self._buffer((n, c, 2 * h, 2 * w), busy))

    def _concat_channels(self, layer, busy, skip, x):
        n, c, h, w = x.shape
        return K.concat_channels(skip, x, out=self._buffer((n, skip.shape[1] + c, h, w), busy))

    def _head(self, layer, busy, x):                                            # a fresh array: the logits
        return K.pointwise_conv(x, self.tensors["head.weight"], self.tensors["head.bias"])

    def _head_normalised(self, layer, busy, x, coefficients):
        return K.pointwise_conv(x, self.tensors["head.weight"], self.tensors["head.bias"], norm_relu=coefficients)

    def _alias(self, layer, busy, x):                                           # a name for the same array
        return x

    _defer = _alias                     # work left to the next conv: the value passes through unchanged

    # ----------------------------------------------------------------------------------------- memory --

    def _out(self, layer: Layer, x: np.ndarray, busy: list) -> np.ndarray:
        """The buffer of a conv's output: (N, layer.out_channels, H, W) at x's batch and size."""
        return self._buffer((x.shape[0], layer.out_channels) + x.shape[2:], busy)

    def _buffer(self, shape: tuple, busy: list) -> np.ndarray:
        """A reusable output buffer of `shape` (N, C, H, W) that overlaps none of the `busy` arrays: a leading
        part of one of the thread's arena arrays, the smallest free one that fits (a free one too small is
        replaced by a larger one). Buffers are shared by steps whose outputs are never alive at once, so the
        arena holds a few tensors, not one per layer; the same sequence of calls picks the same arrays every
        time, so after the first call nothing is allocated."""
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = self._local.arena = []
        need = math.prod(shape)
        taken = {id(b if b.base is None else b.base) for b in busy if isinstance(b, np.ndarray)}
        free = [k for k, a in enumerate(arena) if id(a) not in taken]
        fits = [k for k in free if arena[k].size >= need]
        if fits:
            k = min(fits, key=lambda k: arena[k].size)
        elif free:
            k = max(free, key=lambda k: arena[k].size)
            arena[k] = _reused_buffer(need)
        else:
            k = len(arena)
            arena.append(_reused_buffer(need))
        return arena[k][:need].reshape(shape)

    def _check_input(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        c, d = self.spec["in_channels"], self.downsampling
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"input must be (N, {c}, H, W), got {x.shape}")
        if x.shape[2] % d or x.shape[3] % d:
            raise ValueError(f"input height and width must be multiples of {d} for "
                             f"{len(self.spec['encoder'])} encoder stages, got {x.shape[2]}x{x.shape[3]}")
        return x


def _stages(plan: list[Layer], part: str) -> list[Stage]:
    """The plan's layers of `part` ("encoder" or "decoder") grouped by stage, for forward_plain."""
    stages = []
    for index in sorted({int(layer.name.split(".")[1]) for layer in plan if layer.name.startswith(part + ".")}):
        prefix = f"{part}.{index}."
        layers = [layer for layer in plan if layer.name.startswith(prefix) or layer.name == prefix[:-1]]
        down = next((layer for layer in layers if layer.op in ("maxpool", "upsample", "transpose")), None)
        units: dict[str, list[Layer]] = {}
        for layer in layers:
            if ".convs." in layer.name:
                units.setdefault(layer.name.split(".convs.")[1].split(".")[0], []).append(layer)
        eca = next((layer for layer in layers if layer.op == "eca"), None)
        stages.append(Stage(down, tuple(tuple(u) for u in units.values()), eca))
    return stages


def from_file(path) -> Network:
    """A Network from an npunet weights file (verified by npunet.weights.read_weights), its kernels compiled
    for this machine (npunet.precompile: on a first run only, in two processes where there are two cores) and
    its kernel work sizes in place (npunet.tuning: stored, or measured once, 0.5 s, on the run after the
    first).
    Its weights_sha256 is the file's SHA-256 (what `sha256sum` prints), recorded in the outputs that name
    the model."""
    from npunet import precompile, tuning
    from npunet.weights import read_weights
    header, tensors = read_weights(path)
    net = Network(header["spec"], tensors, header["labels"], header["preprocessing"], header.get("metadata"),
                  weights_sha256=header["file_sha256"])
    compiled = precompile.ensure(net.kernels())
    tuning.tiles(defer=bool(compiled))         # a first run: measured on the next one
    net.weights_path = str(Path(path).absolute())       # recorded in a run's report (npunet.io.report)
    return net
