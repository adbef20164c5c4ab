"""The U-Net, built from its spec and run with npunet's kernels.

`Network(spec, tensors)` walks `npunet.spec.layer_plan(spec)`: every layer is one kernel call on NCHW float32
arrays, and its tensors are looked up by the torch module path (`encoder.1.convs.0.pointwise.weight`), so
there is no hand-written mapping between torch and npunet. `Network.run_layers(x)` is the public
per-layer hook: it yields a LayerStep per layer (its output and wall time; with keep=True also a copy of
its input, an ECA layer's gates and a GroupNorm's per-group statistics), for teaching (`npunet explain`),
profiling (docs/profile_layers.py) and debugging parity; `Network.trace(x)` is its short form, the list of
(layer, output).

Memory: every layer writes into a buffer that the network keeps and reuses from call to call (writing
never-touched memory is slow, and a batch loop would otherwise allocate ~70 fresh arrays per call).
GroupNorm+ReLU and ECA run in place; the bilinear upsample writes straight into its concat buffer, after
the skip (kernels.upsample_concat). Two intermediate tensors that only feed a Winograd conv are not written
at all by `net(x)`: a concat (the conv reads the skip and upsamples the low-resolution rows as it goes,
conv3x3_winograd's `low`) and a GroupNorm+ReLU output (the conv normalises its input rows as it reads
them, `norm_relu`; the head's 1x1 conv does the same for the last GroupNorm+ReLU); all bit-identical, and `trace` builds them, to show them. Only the returned logits
are a fresh array. Buffers are shared by layers whose
outputs are never alive at the same time (Network._buffer: a layer's output goes to an arena array that
neither its inputs nor a saved skip occupy), per thread, so one Network may serve several threads; they grow
to the largest batch seen (a smaller batch uses a leading part). For the default model at 192x192 they hold
about 9 MB per slice of batch (one buffer per layer would be 37 MB).

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
from typing import Iterator

import numpy as np

from npunet import kernels as K
from npunet import tuning
from npunet.spec import Layer, expected_tensors, layer_plan


@dataclass
class LayerStep:
    """One layer of a forward pass, as Network.run_layers yields it. Arrays are (N, C, H, W) unless noted.

    output      the layer's output: with keep=True a copy; without, the network's own buffer, valid only
                until the next layer runs (and, where the fused path leaves a step to the next conv, the
                step's input unchanged: see Network.run_layers)
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


class Network:
    def __init__(self, spec: dict, tensors: dict[str, np.ndarray], labels: dict | None = None,
                 preprocessing: dict | None = None, metadata: dict | None = None):
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
        self.groups = spec["norm"]["groups"]
        self.eps = float(spec["norm"]["eps"])
        self.align_corners = bool(spec["upsample"].get("align_corners", False))
        self.downsampling = 2 ** (len(spec["encoder"]) - 1)
        self._local = threading.local()        # per-thread layer buffers, see _buffer
        tuning.tiles()                         # this machine's work sizes: stored, or measured once (~1 s)
        self.winograd = {layer.name: K.winograd_weights(self.tensors[f"{layer.name}.weight"])   # transformed once
                         for layer in self.plan if layer.op == "conv3x3"}

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W), float32."""
        x = self._check_input(x)
        skips: dict = {}
        for i, layer in enumerate(self.plan):
            x = self._apply(i, layer, x, skips, fuse=True)
        return x

    def trace(self, x: np.ndarray) -> list[tuple[Layer, np.ndarray]]:
        """Every layer with a copy of its output, in execution order (for teaching and parity debugging)."""
        return [(step.layer, step.output) for step in self.run_layers(x, keep=True)]

    def run_layers(self, x: np.ndarray, keep: bool = False) -> Iterator[LayerStep]:
        """The forward pass of x (N, in_channels, H, W), one LayerStep per layer of self.plan, in order.

        keep=False runs exactly what net(x) runs (same kernels, same buffers, same fusions), for timing it
        layer by layer: an upsample+concat or a GroupNorm+ReLU that feeds a Winograd conv (or, for the
        GroupNorm+ReLU, the head) is left to that conv (those steps take ~0 s and yield their input unchanged; their work is timed in the conv).
        keep=True runs every step on its own, so every output is there to look at (bit-identical results:
        the last output equals net(x)), and fills the LayerStep's input, gate and group statistics."""
        x = self._check_input(x)
        before = x                     # with keep: a copy of the current layer's input (layers run in place)
        skips: dict = {}
        for i, layer in enumerate(self.plan):
            gate = np.empty(x.shape[:2], np.float32) if keep and layer.op == "eca" else None
            t0 = time.perf_counter()
            x = self._apply(i, layer, x, skips, fuse=not keep, gate=gate)
            seconds = time.perf_counter() - t0
            if not keep:
                yield LayerStep(i, layer, x, seconds)
                continue
            step = LayerStep(i, layer, x.copy(), seconds, input=before, gate=gate)
            if layer.op == "norm_relu":
                step.group_mean, step.group_std = K.group_norm_statistics(before, self.groups)
            before = step.output
            yield step

    def _buffer(self, shape: tuple, busy: tuple) -> np.ndarray:
        """A reusable output buffer of `shape` (N, C, H, W) that overlaps none of the `busy` arrays (the layer's
        inputs and the saved skips): a leading part of one of the thread's arena arrays, the smallest free one
        that fits (a free one too small is replaced by a larger one). Buffers are shared by layers whose
        outputs are never alive at once, so the arena holds a few tensors, not one per layer; the same
        sequence of calls picks the same arrays every time, so after the first call nothing is allocated."""
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = self._local.arena = []
        need = math.prod(shape)
        taken = {id(b if b.base is None else b.base) for b in busy}     # a buffer view's base is its arena array
        free = [k for k, a in enumerate(arena) if id(a) not in taken]
        fits = [k for k in free if arena[k].size >= need]
        if fits:
            k = min(fits, key=lambda k: arena[k].size)
        elif free:
            k = max(free, key=lambda k: arena[k].size)
            arena[k] = np.empty(need, np.float32)
        else:
            k = len(arena)
            arena.append(np.empty(need, np.float32))
        return arena[k][:need].reshape(shape)

    def _reads_normalised_next(self, i: int) -> bool:
        """Whether layer i + 1 can normalise its input as it reads it (norm_relu): a Winograd conv or the head."""
        after = self.plan[i + 1] if i + 1 < len(self.plan) else None
        return self._winograd_next(i) or (after is not None and after.op == "head")

    def _winograd_next(self, i: int) -> bool:
        """Whether layer i + 1 is a dense 3x3 conv that runs by Winograd (and so can take over layer i)."""
        after = self.plan[i + 1] if i + 1 < len(self.plan) else None
        return after is not None and after.op == "conv3x3" and after.in_channels >= K.WINOGRAD_MIN_CI

    def _check_input(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        c, d = self.spec["in_channels"], self.downsampling
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"input must be (N, {c}, H, W), got {x.shape}")
        if x.shape[2] % d or x.shape[3] % d:
            raise ValueError(f"input height and width must be multiples of {d} for "
                             f"{len(self.spec['encoder'])} encoder stages, got {x.shape[2]}x{x.shape[3]}")
        return x

    def _apply(self, i: int, layer: Layer, x: np.ndarray, skips: dict, fuse: bool, gate=None) -> np.ndarray:
        t, n = self.tensors, layer.name
        op = layer.op
        N, C, H, W = x.shape
        co = layer.out_channels
        busy = (x, *skips.values())                        # what this layer reads: its output must not overlap
        if op == "conv3x3" and "lazy_norm" in skips:      # the conv reads relu(group_norm(x)) itself
            return K.conv3x3_winograd(x, t[f"{n}.weight"], out=self._buffer((N, co, H, W), busy),
                                      u=self.winograd[n], norm_relu=skips.pop("lazy_norm"))
        if op == "conv3x3" and "lazy_concat" in skips:    # the conv reads [skip, upsample(x)] itself
            skip = skips.pop("lazy_concat")
            return K.conv3x3_winograd(skip, t[f"{n}.weight"], out=self._buffer((N, co) + skip.shape[2:], busy),
                                      u=self.winograd[n], low=x, align_corners=self.align_corners)
        if op == "conv3x3":
            return K.conv3x3(x, t[f"{n}.weight"], out=self._buffer((N, co, H, W), busy),
                             winograd_weights=self.winograd[n])
        if op == "depthwise":
            return K.depthwise_conv3x3(x, t[f"{n}.weight"], out=self._buffer(x.shape, busy))
        if op == "pointwise":
            return K.pointwise_conv(x, t[f"{n}.weight"], out=self._buffer((N, co, H, W), busy))
        if op == "norm_relu":
            if fuse and self._reads_normalised_next(i):
                skips["lazy_norm"] = K.group_norm_coefficients(x, t[f"{n}.weight"], t[f"{n}.bias"], self.groups,
                                                               self.eps)
                return x
            return K.group_norm(x, t[f"{n}.weight"], t[f"{n}.bias"], self.groups, self.eps, relu=True, out=x)
        if op == "eca":
            return K.eca(x, t[f"{n}.conv.weight"], out=x, gate=gate)
        if op == "maxpool":
            return K.max_pool2x2(x, out=self._buffer((N, C, H // 2, W // 2), busy))
        if op == "save_skip":
            skips[dict([layer.extra])["skip"]] = x
            return x
        if op == "upsample":        # the next layer is the concat: [skip, upsampled] written as one buffer
            skip = skips.pop(dict([self.plan[i + 1].extra])["skip"])
            if fuse and self._winograd_next(i + 1):
                skips["lazy_concat"] = skip                 # left to that conv, see conv3x3_winograd's low
                return x
            cat = K.upsample_concat(skip, x, self.align_corners,
                                    out=self._buffer((N, skip.shape[1] + C, 2 * H, 2 * W), busy))
            skips["concat"] = cat
            return cat[:, skip.shape[1]:]
        if op == "transpose":
            return K.conv_transpose2x2(x, t[f"{n}.weight"], t[f"{n}.bias"],
                                       out=self._buffer((N, C, 2 * H, 2 * W), busy))
        if op == "concat":
            if "concat" in skips:     # already written by upsample_concat
                return skips.pop("concat")
            if "lazy_concat" in skips:
                return x
            skip = skips.pop(dict([layer.extra])["skip"])
            return K.concat_channels(skip, x, out=self._buffer((N, skip.shape[1] + C, H, W), busy))
        if op == "head":                                  # with lazy_norm: reads relu(group_norm(x)) itself
            return K.pointwise_conv(x, t[f"{n}.weight"], t[f"{n}.bias"], norm_relu=skips.pop("lazy_norm", None))
        raise ValueError(f"unknown layer op {op!r} in {n}")


def from_file(path) -> Network:
    """A Network from an npunet weights file (verified by npunet.weights.read_weights). Its weights_sha256
    is the file's SHA-256 (what `sha256sum` prints), recorded in the outputs that name the model."""
    import hashlib
    from pathlib import Path
    from npunet.weights import read_weights
    header, tensors = read_weights(path)
    net = Network(header["spec"], tensors, header["labels"], header["preprocessing"], header.get("metadata"))
    net.weights_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return net
