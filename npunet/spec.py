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

Every spec, from a file or from a weights header, goes through `check_spec` (SPEC_SCHEMA: types, ranges,
known keys, bounded sizes) before anything is built from it; a problem is a SpecError of one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npunet.errors import NpunetError
from npunet.schema import Bool, Int, List, Num, Obj, Opt, Str, parse_json, validate

SPEC_FORMAT = "npunet-spec/1"
SPEC_DIR = Path(__file__).parent / "specs"
CONV_KINDS = ("conv3x3", "ds")
UPSAMPLE_MODES = ("bilinear", "transpose")
MAX_SPEC_BYTES = 2**20             # a spec is a few KB of JSON
MAX_PARAMETERS = 64_000_000        # 256 MB of float32; the default network has 406,657

_STAGE = Obj({
    "conv": Str(CONV_KINDS),
    "channels": Int(1, 4096),
    "num_convs": Opt(Int(1, 8), default=2),
    "eca_kernel": Opt(Int(1, 63, odd=True)),
})
SPEC_SCHEMA = Obj({
    "format": Str((SPEC_FORMAT,)),
    "name": Opt(Str(max_len=100), default="unnamed"),
    "description": Opt(Str(max_len=2000)),
    "in_channels": Int(1, 64),
    "num_classes": Int(2, 256),                   # labels are written as uint8
    "norm": Obj({"type": Str(("groupnorm",)), "groups": Int(1, 4096), "eps": Num(0.0, 1.0, above=True)}),
    "depthwise_norm": Opt(Bool(), default=False),
    "upsample": Obj({"mode": Str(UPSAMPLE_MODES), "align_corners": Opt(Bool(), default=False)}),
    "encoder": List(_STAGE, 1, 8),
    "decoder": List(_STAGE, 0, 7),
})


class SpecError(NpunetError, ValueError):
    """A spec that does not describe a network npunet can build (one line, naming the key at fault)."""


def builtin_spec_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.json"))


def load_spec(name_or_path: str | Path) -> dict:
    """A built-in spec by name (`dsconv_eca_unet`) or a JSON file by path, checked (see check_spec)."""
    path = Path(name_or_path)
    if not path.suffix and (SPEC_DIR / f"{name_or_path}.json").exists():
        path = SPEC_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise SpecError(f"no spec named {str(name_or_path)!r}: give a JSON file or one of {builtin_spec_names()}")
    if not path.is_file():
        raise SpecError(f"spec {path} is not a file (a folder or a device); give a JSON file")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"spec {path} is {size:,} bytes, more than the {MAX_SPEC_BYTES:,} a spec may have")
        with open(path, "rb") as f:
            data = f.read(size + 1)              # read(n) allocates n bytes first: ask for what is there
    except OSError as exc:
        raise SpecError(f"spec {path} cannot be read ({exc.strerror or exc})") from None
    return check_spec(parse_json(data, f"spec {path}", SpecError, MAX_SPEC_BYTES))


def check_spec(spec) -> dict:
    """`spec` checked against SPEC_SCHEMA (types, ranges, known keys) and for consistency (decoder stages,
    GroupNorm groups dividing every normalised width, no ECA in the decoder, at most MAX_PARAMETERS
    parameters); returns a copy with the defaults filled in, or raises SpecError naming the first problem."""
    name = spec.get("name") if isinstance(spec, dict) else None
    where = f"spec {name!r}" if isinstance(name, str) and name.isprintable() and len(name) <= 100 else "spec"
    spec = validate(spec, SPEC_SCHEMA, where, SpecError)
    enc, dec = spec["encoder"], spec["decoder"]
    if len(dec) != len(enc) - 1:
        raise SpecError(f"{where}: {len(enc)} encoder stages need {len(enc) - 1} decoder stages, got {len(dec)}")
    for j, st in enumerate(dec):
        if st.get("eca_kernel") is not None:
            raise SpecError(f"{where}: decoder[{j}]: ECA in the decoder is not supported")
    groups = spec["norm"]["groups"]
    plan = _plan(spec)
    for layer in plan:
        if layer.op == "norm_relu" and layer.out_channels % groups:
            raise SpecError(f"{where}: {layer.name} normalises {layer.out_channels} channels, not divisible by "
                            f"{groups} groups")
    params = sum(_numel(shape) for layer in plan for shape in layer_tensors(layer).values())
    if params > MAX_PARAMETERS:
        raise SpecError(f"{where}: {params:,} parameters, more than the {MAX_PARAMETERS:,} npunet accepts")
    return spec


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


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
    """The forward pass as a flat list of layers, in execution order (the spec is checked first)."""
    return _plan(check_spec(spec))


def _plan(spec: dict) -> list[Layer]:
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


BUFFERED_OPS = ("conv3x3", "depthwise", "pointwise", "maxpool", "transpose", "concat", "head")


def activation_elements(spec: dict, height: int, width: int) -> int:
    """The float32 values that the network's layer buffers hold per slice of (height, width): one output per
    layer that writes a new array (GroupNorm+ReLU and ECA work in place; the bilinear upsample writes into
    its concat's buffer). An upper bound: fused layers write less (npunet.network)."""
    return sum(layer.out_channels * (height >> layer.scale) * (width >> layer.scale)
               for layer in layer_plan(spec) if layer.op in BUFFERED_OPS)


def expected_tensors(spec: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network, name -> shape, in execution order."""
    out: dict[str, tuple[int, ...]] = {}
    for layer in layer_plan(spec):
        out.update(layer_tensors(layer))
    return out
