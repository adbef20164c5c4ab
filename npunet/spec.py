"""The architecture as data: load and check a spec, and list the network it describes.

A spec is a small JSON document (see npunet/specs/*.json). `layer_plan(spec)` turns it into the flat list
of layers that both the NumPy engine (npunet.network) and the PyTorch mirror (tools/torch_model.py) walk,
and `expected_tensors(spec)` is the single source of truth for the tensor names and shapes in a weights
file: the names are the torch module paths (`encoder.1.convs.0.pointwise.weight`, ...).

A spec:
    in_channels, num_classes      3 and 14 for the default
    norm                          {"type": "groupnorm", "groups": 8, "eps": 1e-5}
    depthwise_norm                true adds GroupNorm + ReLU after each depthwise conv as well
    upsample                      {"mode": "bilinear", "align_corners": false} or {"mode": "transpose"}
    encoder, decoder              lists of stages {"conv": "conv3x3" | "ds", "channels": C,
                                  "num_convs": 2, "eca_kernel": k (optional)}
Encoder stage i > 0 starts with a 2x2 max-pool; decoder stage j upsamples x2, concatenates
[skip, upsampled] on channels, then runs its convs; a 1x1 head with bias gives the logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPEC_FORMAT = "npunet-spec/1"
SPEC_DIR = Path(__file__).parent / "specs"
CONV_KINDS = ("conv3x3", "ds")
UPSAMPLE_MODES = ("bilinear", "transpose")


class SpecError(ValueError):
    """A spec that does not describe a network npunet can build."""


def builtin_spec_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.json"))


def load_spec(name_or_path: str | Path) -> dict:
    """A built-in spec by name (`dsconv_eca_unet`) or a JSON file by path, checked."""
    path = Path(name_or_path)
    if not path.suffix and (SPEC_DIR / f"{name_or_path}.json").exists():
        path = SPEC_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise SpecError(f"no spec named {str(name_or_path)!r}: give a JSON file or one of {builtin_spec_names()}")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec {path} is not valid JSON: {exc}") from None
    return check_spec(spec)


def check_spec(spec: dict) -> dict:
    """Return `spec` if it is well formed, else raise SpecError naming the first problem."""
    def need(cond, msg):
        if not cond:
            raise SpecError(f"spec {spec.get('name', '?')!r}: {msg}")

    need(isinstance(spec, dict), "must be a JSON object")
    need(spec.get("format") == SPEC_FORMAT, f"format is {spec.get('format')!r}, expected {SPEC_FORMAT!r}")
    for key in ("in_channels", "num_classes", "norm", "upsample", "encoder", "decoder"):
        need(key in spec, f"missing key {key!r}")
    need(spec["norm"].get("type") == "groupnorm", f"norm type {spec['norm'].get('type')!r} is not 'groupnorm'")
    need(spec["upsample"].get("mode") in UPSAMPLE_MODES,
         f"upsample mode {spec['upsample'].get('mode')!r} is not one of {UPSAMPLE_MODES}")
    enc, dec = spec["encoder"], spec["decoder"]
    need(len(enc) >= 1 and len(dec) == len(enc) - 1,
         f"{len(enc)} encoder stages need {len(enc) - 1} decoder stages, got {len(dec)}")
    groups = spec["norm"]["groups"]
    for where, stages in (("encoder", enc), ("decoder", dec)):
        for i, st in enumerate(stages):
            need(st.get("conv") in CONV_KINDS, f"{where}[{i}] conv {st.get('conv')!r} is not one of {CONV_KINDS}")
            need(st["channels"] % groups == 0,
                 f"{where}[{i}] has {st['channels']} channels, not divisible by {groups} groups")
            need(st.get("num_convs", 2) >= 1, f"{where}[{i}] needs at least one conv")
            k = st.get("eca_kernel")
            need(k is None or (isinstance(k, int) and k % 2 == 1), f"{where}[{i}] eca_kernel {k!r} must be odd")
    return spec


@dataclass(frozen=True)
class Layer:
    """One step of the forward pass. `name` is the torch module path that owns its tensors."""
    op: str            # conv3x3 | depthwise | pointwise | norm_relu | eca | maxpool | upsample | transpose | concat | head | save_skip
    name: str
    in_channels: int
    out_channels: int
    scale: int = 0     # resolution level: 0 is full size, 1 half, ...
    extra: tuple = ()  # ("kernel", k) for eca, ("skip", i) for concat / save_skip


def _conv_unit(plan, prefix, kind, cin, cout, level, depthwise_norm):
    """conv (plain or depthwise separable) -> GroupNorm -> ReLU."""
    if kind == "conv3x3":
        plan.append(Layer("conv3x3", f"{prefix}.conv", cin, cout, level))
    else:
        plan.append(Layer("depthwise", f"{prefix}.depthwise", cin, cin, level))
        if depthwise_norm:
            plan.append(Layer("norm_relu", f"{prefix}.depthwise_norm", cin, cin, level))
        plan.append(Layer("pointwise", f"{prefix}.pointwise", cin, cout, level))
    plan.append(Layer("norm_relu", f"{prefix}.norm", cout, cout, level))


def layer_plan(spec: dict) -> list[Layer]:
    """The forward pass as a flat list of layers, in execution order."""
    check_spec(spec)
    plan: list[Layer] = []
    dwn = bool(spec.get("depthwise_norm", False))
    channels = spec["in_channels"]
    enc = spec["encoder"]
    for i, st in enumerate(enc):
        if i > 0:
            plan.append(Layer("maxpool", f"encoder.{i}.pool", channels, channels, i))
        for j in range(st.get("num_convs", 2)):
            _conv_unit(plan, f"encoder.{i}.convs.{j}", st["conv"], channels, st["channels"], i, dwn)
            channels = st["channels"]
        if st.get("eca_kernel"):
            plan.append(Layer("eca", f"encoder.{i}.eca", channels, channels, i, ("kernel", st["eca_kernel"])))
        if i < len(enc) - 1:
            plan.append(Layer("save_skip", f"encoder.{i}", channels, channels, i, ("skip", i)))
    mode = spec["upsample"]["mode"]
    for j, st in enumerate(spec["decoder"]):
        level = len(enc) - 2 - j
        skip = enc[level]["channels"]
        if mode == "transpose":
            plan.append(Layer("transpose", f"decoder.{j}.up", channels, channels, level))
        else:
            plan.append(Layer("upsample", f"decoder.{j}.up", channels, channels, level))
        plan.append(Layer("concat", f"decoder.{j}.concat", channels, skip + channels, level, ("skip", level)))
        channels = skip + channels
        if st.get("eca_kernel"):
            raise SpecError(f"decoder[{j}]: ECA in the decoder is not supported")
        for k in range(st.get("num_convs", 2)):
            _conv_unit(plan, f"decoder.{j}.convs.{k}", st["conv"], channels, st["channels"], level, dwn)
            channels = st["channels"]
    plan.append(Layer("head", "head", channels, spec["num_classes"], 0))
    return plan


def layer_tensors(layer: Layer) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes owned by one layer (torch layouts)."""
    n, ci, co = layer.name, layer.in_channels, layer.out_channels
    if layer.op == "conv3x3":
        return {f"{n}.weight": (co, ci, 3, 3)}
    if layer.op == "depthwise":
        return {f"{n}.weight": (ci, 1, 3, 3)}
    if layer.op == "pointwise":
        return {f"{n}.weight": (co, ci, 1, 1)}
    if layer.op == "norm_relu":
        return {f"{n}.weight": (co,), f"{n}.bias": (co,)}
    if layer.op == "eca":
        return {f"{n}.conv.weight": (1, 1, dict([layer.extra])["kernel"])}
    if layer.op == "transpose":
        return {f"{n}.weight": (ci, co, 2, 2), f"{n}.bias": (co,)}
    if layer.op == "head":
        return {f"{n}.weight": (co, ci, 1, 1), f"{n}.bias": (co,)}
    return {}


def expected_tensors(spec: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network, name -> shape, in execution order."""
    out: dict[str, tuple[int, ...]] = {}
    for layer in layer_plan(spec):
        out.update(layer_tensors(layer))
    return out
