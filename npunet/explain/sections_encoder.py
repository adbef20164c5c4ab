"""The explain page's first four sections: the input slice, the encoder stages (feature maps, depthwise
filters beside their outputs, pointwise mixing, the cost of a depthwise-separable block against a dense
conv), Efficient Channel Attention's gates, and GroupNorm's statistics. Each section_* function returns its
HTML, built from the LayerSteps of Network.run_layers(x, keep=True).
"""

from __future__ import annotations

from html import escape

import numpy as np

from npunet.explain.charts import bar_chart, histogram
from npunet.explain.html import (DENSE_FILTERS_SHOWN, ECA_SHOWN, FILTER_PX, FILTERS_SHOWN, MAP_PX, MAPS_SHOWN,
                                 SMALL_PX, TERMS_SHOWN, figure, floats, img_tag, map_img, maps, spread_order, table,
                                 thousands)
from npunet.explain.pictures import diverging, grey, radiological
from npunet.explain.slices import SliceInput
from npunet.io.preview import colourise
from npunet.network import LayerStep, Network


def section_input(si: SliceInput, volume_shape: tuple, net: Network) -> str:
    p = si.params
    lo, hi = float(p["hu_min"]), float(p["hu_max"])
    size = si.x.shape[2]
    sx, sy, sz = si.zooms
    nx, ny = si.hu.shape
    native = colourise(radiological(si.hu), np.zeros((ny, nx), np.uint8), (lo, hi))
    names = [f"slice {f}" + (" (this one)" if i == len(si.channel_files) // 2 else "")
             for i, f in enumerate(si.channel_files)]
    channels = "".join(
        figure(img_tag(grey(radiological(si.x[0, c]), 0.0, 1.0), f"input channel {c}", 2 * MAP_PX, layer="input",
                     channel=c), f"channel {c}: {names[c]}") for c in range(si.x.shape[1]))
    facts = table(["", ""], [
        ["CT array", f"{' x '.join(map(str, volume_shape))} voxels of {sx:.3g} x {sy:.3g} x {sz:.3g} mm"],
        ["this slice", f"{nx} x {ny} pixels, {nx * sx:.0f} x {ny * sy:.0f} mm; HU from {si.hu.min():.0f} "
                       f"to {si.hu.max():.0f}"],
        ["HU window", f"clip to [{lo:g}, {hi:g}], then (HU - ({lo:g})) / {hi - lo:g}: {lo:g} HU is 0 (black), "
                      f"{hi:g} HU is 1 (white)"],
        ["2.5D channels", f"slices {', '.join(map(str, si.channel_files))} (the slice and its neighbours, "
                          f"repeated at the ends of the volume)"],
        ["square", f"already square, {si.side} x {si.side}" if nx == ny else
                   f"padded to {si.side} x {si.side} with 0 (air, after the window), the slice centred"],
        ["network input", f"{' x '.join(map(str, si.x.shape[1:]))} float32 (bilinear resize, "
                          f"{size / si.side:.3f} network pixels per CT pixel)"],
    ], "facts")
    return (f'<section id="input"><h2>1. The input slice</h2>'
            f"<p>The network sees one axial slice at a time, with its two neighbours as extra channels "
            f"(&ldquo;2.5D&rdquo;), so it has a little 3D context. Hounsfield units are clipped to a soft-tissue "
            f"window and scaled to [0, 1]; the slice is padded to a square and resized to {size} x {size}.</p>"
            f"{facts}<div class=row>"
            + figure(img_tag(native, "the CT slice in HU", 2 * MAP_PX, layer="native", aspect=(nx * sx) / (ny * sy)),
                      f"the CT slice, {nx} x {ny}, window [{lo:g}, {hi:g}] HU")
            + f"</div><h3>The three channels the network reads ({size} x {size})</h3><div class=row>{channels}</div>"
            f"</section>")


def conv_units(net: Network, prefix: str) -> list[list]:
    """The conv units of a stage, each the list of its layers in plan order (conv, or depthwise, [norm,]
    pointwise; then norm), found by name: `{prefix}.convs.{j}.*`."""
    units: dict[str, list] = {}
    for layer in net.plan:
        if layer.name.startswith(prefix + ".convs."):
            units.setdefault(".".join(layer.name.split(".")[:4]), []).append(layer)
    return list(units.values())


def _cost_rows(units: list[list], costs: dict) -> list[list]:
    """One table row per conv unit: its conv's parameters and multiply-adds, and a dense 3x3 conv's."""
    rows = []
    for unit in units:
        convs = [costs[layer.name] for layer in unit if layer.op in ("conv3x3", "depthwise", "pointwise")]
        name = ".".join(unit[0].name.split(".")[:4])
        first, last = convs[0].layer, convs[-1].layer
        params, macs = sum(c.params for c in convs), sum(c.macs for c in convs)
        dense_p = sum(c.standard_params for c in convs)
        dense_m = sum(c.standard_macs for c in convs)
        kind = "dense 3x3" if first.op == "conv3x3" else "depthwise 3x3 + pointwise 1x1"
        ratio = f"{dense_m / macs:.1f}x fewer" if first.op != "conv3x3" else "(is the dense conv)"
        rows.append([name, f"{first.in_channels} -> {last.out_channels}", kind, thousands(params), thousands(macs),
                     thousands(dense_p), thousands(dense_m), ratio])
    return rows


def _encoder_stage(i: int, net: Network, by_name: dict, costs: dict, x: np.ndarray) -> str:
    prefix = f"encoder.{i}"
    stage_in_name = f"{prefix}.pool" if f"{prefix}.pool" in by_name else "input"
    stage_in = by_name[stage_in_name].output[0] if stage_in_name != "input" else x[0]
    units = conv_units(net, prefix)
    last = by_name.get(f"{prefix}.eca") or by_name[units[-1][-1].name]
    out = last.output[0]
    ci, co = units[0][0].in_channels, units[-1][-1].out_channels
    h = out.shape[1]
    html = [f'<section class="stage" id="encoder-{i}"><h3>Stage {i}: {ci} -> {co} channels at {h} x {h}</h3>']
    html.append(f"<h4>Before the block ({stage_in_name}) and after it ({last.layer.name})</h4>"
                f"<div class=pair><div>{maps(stage_in, stage_in_name, spread_order(stage_in)[:MAPS_SHOWN])}</div>"
                f"<div class=arrow>&rarr;</div><div>{maps(out, last.layer.name, spread_order(out)[:MAPS_SHOWN])}"
                f"</div></div>")
    first = units[0]
    if first[0].op == "depthwise":
        dw, pw = by_name[first[0].name], by_name[next(lay.name for lay in first if lay.op == "pointwise")]
        html.append(_depthwise_panel(net, dw))
        html.append(_pointwise_panel(net, dw, pw))
    else:
        html.append(_dense_panel(net, by_name[first[0].name]))
    html.append("<h4>What the block costs here, against dense 3x3 convs</h4>"
                + table(["conv", "channels", "kind", "params", "multiply-adds", "dense 3x3 params",
                          "dense 3x3 multiply-adds", "saving"], _cost_rows(units, costs), "numbers costs"))
    html.append("</section>")
    return "".join(html)


def _depthwise_panel(net: Network, dw: LayerStep) -> str:
    """The depthwise filters (3x3 each) beside the channel they read and the map they write."""
    w = net.tensors[f"{dw.layer.name}.weight"][:, 0]                 # (C, 3, 3)
    limit = float(np.abs(w).max())
    rows = []
    for c in spread_order(dw.output[0])[:FILTERS_SHOWN]:
        rows.append('<div class="dwrow">'
                    + figure(map_img(dw.input[0, c], f"depthwise input channel {c}", SMALL_PX,
                                       net.plan[dw.index - 1].name, c), f"in ch {c}")
                    + '<div class=op>&#8859;</div>'
                    + figure(img_tag(diverging(radiological(w[c]), limit), f"depthwise filter {c}", FILTER_PX,
                                   cls="filter"), "filter<br>" + _kernel_text(w[c]))
                    + '<div class=op>=</div>'
                    + figure(map_img(dw.output[0, c], f"depthwise output channel {c}", SMALL_PX, dw.layer.name, c),
                              f"out ch {c}")
                    + "</div>")
    return (f"<h4>Depthwise 3x3 ({dw.layer.name}): one small filter per channel</h4>"
            f"<p>Each channel is filtered on its own by a 3x3 kernel (blue negative, white 0, red positive, "
            f"scale &plusmn;{limit:.3g}); no channel sees another here. The {FILTERS_SHOWN} channels whose outputs "
            f"vary most:</p><div class=dwgrid>{''.join(rows)}</div>")


def _kernel_text(k: np.ndarray) -> str:
    k = radiological(k)
    return "<span class=kernel>" + "<br>".join(" ".join(f"{v:+.2f}" for v in row) for row in k) + "</span>"


def _pointwise_panel(net: Network, dw: LayerStep, pw: LayerStep) -> str:
    """The pointwise weights as a matrix, and the biggest terms of the most varied output channels."""
    w = net.tensors[f"{pw.layer.name}.weight"][:, :, 0, 0]           # (Co, Ci)
    co, ci = w.shape
    d = dw.output[0].astype(np.float64)                               # (Ci, H, W), the depthwise output
    rms = np.sqrt((d ** 2).mean(axis=(1, 2)))
    matrix = img_tag(diverging(w.T), f"{pw.layer.name} weights, {ci} inputs x {co} outputs", min(10 * co, 300),
                  layer=f"{pw.layer.name}.weight", cls="matrix")
    mixes = []
    for c in spread_order(pw.output[0])[:2]:
        terms = np.argsort(-np.abs(w[c]) * rms, kind="stable")[:TERMS_SHOWN]
        products = [w[c, i] * d[i] for i in terms]
        limit = float(np.abs(np.stack(products)).max())
        figs = [figure(img_tag(diverging(radiological(prod), limit), f"term {w[c, i]:+.3f} x channel {i}", SMALL_PX),
                        f"{w[c, i]:+.3f} x ch {i}") for i, prod in zip(terms, products)]
        mixes.append('<div class="row mix">' + '<div class=op>+</div>'.join(figs)
                     + f'<div class=op>+ {ci - len(terms)} more =</div>'
                     + figure(map_img(pw.output[0, c], f"pointwise output {c}", SMALL_PX, pw.layer.name, int(c),
                                        signed=True),
                               f"out ch {c}") + "</div>")
    return (f"<h4>Pointwise 1x1 ({pw.layer.name}): mixing the channels</h4>"
            f"<p>Each output channel is a weighted sum of all {ci} depthwise outputs, one weight per pair: the "
            f"matrix (a row per input channel, a column per output channel). For the two output channels that "
            f"vary most, the {TERMS_SHOWN} largest terms (weight x depthwise map, on one scale) and the sum of "
            f"all {ci}:</p><div class=pwgrid>"
            + figure(matrix, f"{ci} x {co} weights, &plusmn;{np.abs(w).max():.3g}") + f"<div>{''.join(mixes)}</div></div>")


def _dense_panel(net: Network, conv: LayerStep) -> str:
    """A dense conv: the 3x3 filters of its most varied outputs (the strongest few per output), beside them."""
    w = net.tensors[f"{conv.layer.name}.weight"]                      # (Co, Ci, 3, 3)
    ci = w.shape[1]
    limit = float(np.abs(w).max())
    rows = []
    for c in spread_order(conv.output[0])[:FILTERS_SHOWN]:
        strongest = np.sort(np.argsort(-np.abs(w[c]).sum(axis=(1, 2)), kind="stable")[:DENSE_FILTERS_SHOWN])
        filters = "".join(img_tag(diverging(radiological(w[c, k]), limit), f"filter {c} on input channel {k}",
                               FILTER_PX, cls="filter") for k in strongest)
        more = f", the {len(strongest)} strongest" if len(strongest) < ci else ""
        rows.append('<div class="dwrow">' + figure(f"<div class=filters>{filters}</div>",
                                                    f"filter {c}: {ci} x 3x3{more}")
                    + '<div class=op>=</div>'
                    + figure(map_img(conv.output[0, c], f"{conv.layer.name} channel {c}", SMALL_PX,
                                       conv.layer.name, c), f"out ch {c}")
                    + "</div>")
    why = (f" With only {ci} input channels a depthwise conv would have almost nothing to work with."
           if ci <= 4 else "")
    return (f"<h4>Dense 3x3 ({conv.layer.name}): every filter reads every input channel</h4>"
            f"<p>This stage uses ordinary convolutions.{why} Each output channel has one 3x3 filter per input "
            f"channel (scale &plusmn;{limit:.3g}); the {FILTERS_SHOWN} outputs that vary most:</p>"
            f"<div class=dwgrid>{''.join(rows)}</div>")


def section_encoder(net: Network, by_name: dict, costs: dict, x: np.ndarray) -> str:
    encoder = net.spec["encoder"]
    stages = "".join(_encoder_stage(i, net, by_name, costs, x) for i in range(len(encoder)))
    ds = [str(i) for i, st in enumerate(encoder) if st["conv"] == "ds"]
    with_eca = [str(i) for i, st in enumerate(encoder) if st.get("eca_kernel")]
    kinds = (f"Stage{'s' if len(ds) > 1 else ''} {', '.join(ds)} replace each dense 3x3 conv by a depthwise "
             f"separable pair: a depthwise 3x3 conv filters every channel on its own, then a pointwise 1x1 conv "
             f"mixes the channels; the other stages use dense 3x3 convs. " if ds else
             "Every stage uses dense 3x3 convs. ")
    eca = (f"Stage{'s' if len(with_eca) > 1 else ''} {', '.join(with_eca)} end with ECA. " if with_eca else "")
    return ('<section id="encoder"><h2>2. The encoder</h2>'
            "<p>Each stage after the first halves the resolution (2x2 max-pool) and doubles the channels. "
            + kinds + "Every conv is followed by GroupNorm and ReLU. " + eca +
            "Feature maps are shown in grey, each on its own range (printed under it), for the channels that vary "
            "most.</p>" + stages + "</section>")


def section_eca(net: Network, steps: list[LayerStep]) -> str:
    parts = []
    for s in steps:
        if s.layer.op != "eca":
            continue
        gate = s.gate[0]                                              # (C,) float32, the gates applied
        w = net.tensors[f"{s.layer.name}.conv.weight"].reshape(-1)
        means = s.input[0].astype(np.float64).mean(axis=(1, 2))
        order = np.argsort(-gate, kind="stable")
        kept, suppressed = order[:ECA_SHOWN], order[::-1][:ECA_SHOWN]
        colours = ["#b0b0b0"] * len(gate)
        for c in kept:
            colours[c] = "#d0453a"
        for c in suppressed:
            colours[c] = "#3a6fd0"
        titles = [f"channel {c}: gate {g:.4f}, mean before {m:.4g}" for c, (g, m) in enumerate(zip(gate, means))]
        chart = bar_chart(gate, lo=0.0, hi=1.0, colours=colours, titles=titles, reference=0.5,
                          x_labels=("channel 0", f"channel {len(gate) - 1}"),
                          description=f"ECA gates of {s.layer.name}, one bar per channel")
        kernel = bar_chart(w, colours=["#6a6a6a"] * len(w), titles=[f"w[{j}] = {v:+.4f}" for j, v in enumerate(w)],
                           x_labels=(f"c{-(len(w) // 2)}", f"c+{len(w) // 2}"), width=40 + 26 * len(w), height=90,
                           description=f"the {len(w)} weights of the 1D conv of {s.layer.name}")

        def before_after(c):
            hi = float(np.percentile(s.input[0, c], 99.5)) or float(s.input[0, c].max())   # a few bright pixels
            pair = (figure(img_tag(grey(radiological(s.input[0, c]), 0.0, hi), f"channel {c} before ECA",
                                 SMALL_PX, layer=net.plan[s.index - 1].name, channel=c), "before")
                    + figure(img_tag(grey(radiological(s.output[0, c]), 0.0, hi), f"channel {c} after ECA",
                                   SMALL_PX, layer=s.layer.name, channel=c), "after"))
            return f'<div class=ecapair><div class=ecahead>ch {c}: gate {gate[c]:.3f}</div>{pair}</div>'

        parts.append(
            f'<div class="eca" id="eca-{escape(s.layer.name)}" data-layer="{escape(s.layer.name)}" '
            f'data-gates="{floats(gate)}" data-kernel="{floats(w)}">'
            f"<h3>{escape(s.layer.name)}: {len(gate)} channels, kernel size {len(w)}</h3>"
            f'<div class=row><div class=chart>{chart}<div class=note>gate per channel (red: the {ECA_SHOWN} '
            f'largest, blue: the {ECA_SHOWN} smallest; dashed: 0.5); range {gate.min():.3f} .. '
            f'{gate.max():.3f}</div></div><div class=chart>{kernel}<div class=note>1D kernel: '
            f'{", ".join(f"{v:+.3f}" for v in w)}</div></div></div>'
            f'<div class=row><div><h4>kept most</h4>{"".join(before_after(c) for c in kept)}</div>'
            f'<div><h4>suppressed most</h4>{"".join(before_after(c) for c in suppressed)}</div></div></div>')
    return ('<section id="eca"><h2>3. Efficient Channel Attention</h2>'
            "<p>ECA rescales each channel by a gate between 0 and 1: it averages every channel over the image "
            "(one number per channel), slides a tiny 1D kernel across those numbers (each gate depends on its "
            "channel and its nearest neighbours only), and squashes the result with a sigmoid. "
            "gate = sigmoid(conv1d(mean over H, W)); out = x * gate. A channel's maps before and after share "
            "one grey scale (black 0, white its brightest values before ECA), so a small gate shows as a darker "
            "map.</p>" + ("".join(parts) or "<p><b>This network has no ECA layers.</b></p>") + "</section>")


def section_groupnorm(net: Network, steps: list[LayerStep]) -> str:
    cards = []
    for s in steps:
        if s.layer.op != "norm_relu":
            continue
        mean, std = s.group_mean[0], s.group_std[0]
        out = s.output[0]
        zero = float(np.mean(out == 0))
        top = float(out.max())
        counts, edges = np.histogram(out[out > 0], bins=30, range=(0.0, top if top > 0 else 1.0))
        groups = bar_chart(mean, errors=std, titles=[f"group {g}: mean {m:.4g}, std {d:.4g}"
                                                     for g, (m, d) in enumerate(zip(mean, std))],
                           x_labels=("group 0", f"group {len(mean) - 1}"), width=230, height=110,
                           description=f"per-group mean and standard deviation before {s.layer.name}")
        hist = histogram(counts, edges, width=260, height=110,
                         description=f"histogram of the positive values after {s.layer.name}")
        cards.append(f'<div class=gn data-layer="{escape(s.layer.name)}" data-mean="{floats(mean)}" '
                     f'data-std="{floats(std)}"><h4>{escape(s.layer.name)} <span class=range>'
                     f"{' x '.join(map(str, out.shape))}, {out.shape[0] // len(mean)} channels per group</span></h4>"
                     f"<div class=row><div>{groups}<div class=note>before: mean {mean.min():.3g} .. {mean.max():.3g}, "
                     f"std {std.min():.3g} .. {std.max():.3g}</div></div><div>{hist}<div class=note>after: "
                     f"{zero:.0%} zeros (ReLU), the rest up to {top:.3g}</div></div></div></div>")
    return ('<section id="groupnorm"><h2>4. GroupNorm</h2>'
            f"<p>GroupNorm splits the channels of one slice into {net.groups} groups and normalises each group by "
            "its own mean and standard deviation, then scales and shifts every channel by learnt weights; ReLU "
            "follows. It never looks at other slices of the batch, unlike BatchNorm. Per layer, left: each group's "
            "mean (bar) and standard deviation (whisker) of the conv output it normalises; right: the histogram "
            "of the values after GroupNorm and ReLU (the zeros counted apart).</p><div class=gngrid>"
            + "".join(cards) + "</div></section>")
