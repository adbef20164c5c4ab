"""Per-layer summary of a network: output shape, parameters and multiply-adds, from the spec alone.

    npunet summary                         the default network at 3x192x192
    npunet summary --spec standard_unet    another built-in spec, or a JSON file, or --weights FILE
    npunet summary --compare standard      beside each layer, what a standard 3x3 conv would cost

Multiply-adds count the convolutions (conv3x3, depthwise, pointwise, transpose, head, ECA's conv1d);
GroupNorm, ReLU, pooling and resizing are counted as zero, as papers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from npunet.spec import Layer, layer_plan, layer_tensors


@dataclass
class LayerCost:
    layer: Layer
    shape: tuple           # output shape (C, H, W)
    params: int
    macs: int
    standard_params: int   # a plain 3x3 conv (no bias) with the same in/out channels, for --compare
    standard_macs: int


def layer_costs(spec: dict, height: int = 192, width: int = 192) -> list[LayerCost]:
    """One LayerCost per layer of `spec` for an input of (in_channels, height, width)."""
    rows = []
    dw_in = None  # a depthwise conv's input channels, to pair it with its pointwise conv in --compare
    for layer in layer_plan(spec):
        h, w = height >> layer.scale, width >> layer.scale
        params = sum(_numel(s) for s in layer_tensors(layer).values())
        ci, co = layer.in_channels, layer.out_channels
        macs = {
            "conv3x3": h * w * co * ci * 9,
            "depthwise": h * w * ci * 9,
            "pointwise": h * w * co * ci,
            "head": h * w * co * ci,
            "transpose": h * w * co * ci,
            "eca": ci * dict([layer.extra]).get("kernel", 0) if layer.extra else 0,
        }.get(layer.op, 0)
        std_p = std_m = 0
        if layer.op == "conv3x3":
            std_p, std_m = params, macs
        elif layer.op == "depthwise":
            dw_in = ci
        elif layer.op == "pointwise":
            std_p, std_m = co * dw_in * 9, h * w * co * dw_in * 9
        rows.append(LayerCost(layer, (co, h, w), params, macs, std_p, std_m))
    return rows


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def format_summary(spec: dict, height: int = 192, width: int = 192, compare: bool = False) -> str:
    rows = layer_costs(spec, height, width)
    head = f"{'layer':<34} {'op':<10} {'output':>16} {'params':>10} {'MACs':>14}"
    if compare:
        head += f" {'std 3x3 params':>15} {'std 3x3 MACs':>14} {'ratio':>7}"
    lines = [f"{spec['name']} at {spec['in_channels']}x{height}x{width}", head, "-" * len(head)]
    for r in rows:
        line = (f"{r.layer.name:<34} {r.layer.op:<10} {'x'.join(map(str, r.shape)):>16} "
                f"{r.params:>10,} {r.macs:>14,}")
        if compare and r.standard_macs:
            pair = r.macs + (_depthwise_before(rows, r) if r.layer.op == "pointwise" else 0)
            line += f" {r.standard_params:>15,} {r.standard_macs:>14,} {r.standard_macs / pair:>6.1f}x"
        lines.append(line)
    total_p, total_m = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines.append("-" * len(head))
    total = f"total: {total_p:,} parameters, {total_m:,} multiply-adds ({total_m / 1e9:.3f} G)"
    if compare:
        sp = total_p - sum(r.params for r in rows if r.layer.op in ("depthwise", "pointwise", "conv3x3")) \
            + sum(r.standard_params for r in rows)
        sm = total_m - sum(r.macs for r in rows if r.layer.op in ("depthwise", "pointwise", "conv3x3")) \
            + sum(r.standard_macs for r in rows)
        total += (f"; with standard 3x3 convs: {sp:,} parameters ({sp / total_p:.1f}x), "
                  f"{sm / 1e9:.3f} G multiply-adds ({sm / total_m:.1f}x)")
    lines.append(total)
    return "\n".join(lines)


def _depthwise_before(rows: list[LayerCost], pointwise: LayerCost) -> int:
    i = rows.index(pointwise)
    for r in reversed(rows[:i]):
        if r.layer.op == "depthwise":
            return r.macs
    return 0
