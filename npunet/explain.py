"""The explain report: one axial CT slice followed through the network, as one self-contained HTML page.

    html = explain_slice(net, volume_hu, affine, z)      # z: the slice index in the file's own axial order

Every number and picture comes from the network's public per-layer hook, `Network.run_layers(x, keep=True)`
(each layer's input and output, ECA's gates, GroupNorm's per-group statistics), plus `npunet.summary`'s
parameter and multiply-add counts and per-layer wall times measured with `run_layers(x)` on the same
slice. Sections, in the order the issue that asked for the page lists them:
  1. input        the three 2.5D channels after the HU window, with the window and the sizes
  2. encoder      per stage: feature maps before and after, the depthwise 3x3 filters beside their outputs,
                  how the pointwise conv mixes them, and the DS block's cost against the dense conv it replaces
  3. eca          per attention layer: the gates as a bar chart, the kernel's weights, the most kept and most
                  suppressed channels' maps
  4. groupnorm    per GroupNorm: per-group mean and standard deviation before, the histogram after
  5. decoder      upsampled maps and the skips they meet, per-organ probabilities, the final labels
  6. layers       per layer: output shape, parameters, multiply-adds, measured time
Pictures are PNGs from npunet.pictures (the project's own encoder) inlined as data: URIs; charts are inline
SVG (npunet.charts); styling is inline CSS; there is no script and nothing is fetched. Every <img> carries
data-shape="HxW" (its PNG size) and, for a network tensor, data-layer (the layer name, "input" for the
network input) and data-channel; the ECA charts carry their gates in data-gates and the GroupNorm rows their
statistics in data-mean / data-std (full float precision), so tests can check the page against the network.

Orientation: maps are shown as radiologists view an axial slice (patient's right on the left, anterior at
the top), filters in the same orientation, so a filter's picture lines up with the maps it acts on.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from html import escape

import numpy as np

from npunet import __version__
from npunet.charts import bar_chart, histogram
from npunet.kernels import upsample_argmax
from npunet.network import LayerStep, Network
from npunet.pictures import diverging, grey, heat, heat_colour, png_data_uri, radiological
from npunet.preprocess import DEFAULT_PREPROCESSING, axial_axis, canonical, prepare_slices
from npunet.preview import WINDOW_HU, colour_of, colourise
from npunet.summary import layer_costs

MAP_PX = 96               # display size of a feature map (CSS px; the PNG keeps the map's own resolution)
SMALL_PX = 72             # display size of a map beside a filter
FILTER_PX = 36            # display size of a 3x3 filter
MAPS_SHOWN = 4            # feature maps shown per tensor: the channels with the largest spatial spread
DECODER_MAPS_SHOWN = 3    # per tensor in a decoder stage (three tensors side by side)
FILTERS_SHOWN = 6         # depthwise filters (or dense outputs) shown per stage
DENSE_FILTERS_SHOWN = 6   # per dense output channel: its 3x3 filters on this many input channels at most
ECA_SHOWN = 3             # most kept / most suppressed channels shown per ECA layer
TERMS_SHOWN = 4           # pointwise terms shown per mixed output channel
SECTIONS = ("input", "encoder", "eca", "groupnorm", "decoder", "layers")


# ------------------------------------------------------------------------------------ slices and input --

def file_slice_order(shape: tuple, affine: np.ndarray, orientation: str = "RAS") -> np.ndarray:
    """For each canonical axial slice (npunet.preprocess.canonical's z, inferior to superior), the index of
    that slice along the file's own axial axis."""
    axis = axial_axis(affine)
    index = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
    return np.asarray(canonical(np.broadcast_to(index, shape), affine, orientation).data[0, 0, :])


def organ_pixels_per_slice(net: Network, volume_hu: np.ndarray, affine: np.ndarray, batch_size: int = 8,
                           progress=None) -> np.ndarray:
    """Pixels predicted as an organ (argmax > 0, at the network's resolution) per axial slice, in the file's
    own slice order: (Z,) int. progress(done, total) after each batch."""
    params = {**DEFAULT_PREPROCESSING, **net.preprocessing}
    view = canonical(volume_hu, affine, params["orientation"])
    nz = view.data.shape[2]
    counts = np.zeros(nz, np.int64)
    for start in range(0, nz, batch_size):
        zs = np.arange(start, min(start + batch_size, nz))
        x, _ = prepare_slices(view.data, zs, params)
        counts[zs] = np.count_nonzero(net(x).argmax(axis=1), axis=(1, 2))
        if progress is not None:
            progress(int(zs[-1]) + 1, nz)
    out = np.empty_like(counts)
    out[file_slice_order(volume_hu.shape, affine, params["orientation"])] = counts
    return out


@dataclass
class SliceInput:
    """One slice made ready for the network, with what the input section shows."""
    x: np.ndarray            # (1, C, S, S) float32, the network input
    hu: np.ndarray           # (X, Y) canonical HU slice, native resolution
    z_file: int              # the slice index along the file's axial axis
    channel_files: list      # the file slice index of each input channel
    zooms: tuple             # canonical voxel size (mm) along X, Y, Z
    side: int                # the padded square's side, before the resize
    window: object           # npunet.preprocess.SquareWindow: where the native slice sits in the square
    params: dict             # the preprocessing parameters used


def slice_input(net: Network, volume_hu: np.ndarray, affine: np.ndarray, z_file: int) -> SliceInput:
    params = {**DEFAULT_PREPROCESSING, **net.preprocessing}
    view = canonical(volume_hu, affine, params["orientation"])
    order = file_slice_order(volume_hu.shape, affine, params["orientation"])
    z = int(np.flatnonzero(order == z_file)[0])
    x, win = prepare_slices(view.data, [z], params)
    context = int(params["context_slices"])
    taps = np.clip(np.arange(z - context, z + context + 1), 0, len(order) - 1)
    zooms = np.empty(3)                 # input axis i becomes canonical axis input_ornt[i, 0]
    zooms[view.input_ornt[:, 0].astype(int)] = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    return SliceInput(x, np.asarray(view.data[:, :, z], np.float32), int(z_file), [int(order[t]) for t in taps],
                      tuple(float(v) for v in zooms), win.side, win, params)


def measure_layers(net: Network, x: np.ndarray, runs: int = 7) -> tuple[np.ndarray, float]:
    """Median wall seconds per layer over `runs` passes of net.run_layers(x) (the fused path net(x) runs),
    and the median of as many whole net(x) calls, interleaved with them; one warm-up pass first."""
    net(x)
    per_layer, whole = [], []
    for _ in range(max(int(runs), 1)):
        per_layer.append([step.seconds for step in net.run_layers(x)])
        t0 = time.perf_counter()
        net(x)
        whole.append(time.perf_counter() - t0)
    return np.median(np.array(per_layer), axis=0), float(np.median(whole))


# ---------------------------------------------------------------------------------------- HTML pieces --

def _img(rgb: np.ndarray, alt: str, px: int = MAP_PX, *, layer: str | None = None, channel: int | None = None,
         aspect: float | None = None, cls: str = "map", scale: str | None = None) -> str:
    """An <img> of rgb (H, W, 3), displayed with its longer side `px` CSS pixels (aspect: width/height in
    the display, default the PNG's own). scale becomes data-scale (see _map_img)."""
    h, w = rgb.shape[:2]
    aspect = w / h if aspect is None else aspect
    width, height = (px, px / aspect) if aspect >= 1 else (px * aspect, px)
    data = f' data-shape="{h}x{w}"'
    if layer is not None:
        data += f' data-layer="{escape(layer)}"'
    if channel is not None:
        data += f' data-channel="{int(channel)}"'
    if scale is not None:
        data += f' data-scale="{scale}"'
    return (f'<img class="{cls}" src="{png_data_uri(rgb)}" width="{round(width)}" height="{round(height)}" '
            f'alt="{escape(alt)}"{data}>')


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{caption}</figcaption></figure>"


def _spread_order(a: np.ndarray) -> np.ndarray:
    """Channels of a (C, H, W) from the largest spatial standard deviation down (ties: lower channel first)."""
    return np.argsort(-a.reshape(a.shape[0], -1).std(axis=1), kind="stable")


def _map_img(m: np.ndarray, alt: str, px: int = MAP_PX, layer: str | None = None, channel: int | None = None,
             signed: bool = False) -> str:
    """A feature map (H, W) on its own range: grey from its minimum (black) to its maximum (white)
    (data-scale="own"), or with signed, blue-white-red with 0 white and -+max|m| the ends
    (data-scale="signed")."""
    if not signed:
        return _img(grey(radiological(m)), alt, px, layer=layer, channel=channel, scale="own")
    return _img(diverging(radiological(m)), alt, px, layer=layer, channel=channel, scale="signed")


def _maps(a: np.ndarray, layer: str, channels, px: int = MAP_PX) -> str:
    """Figures of channels of a (C, H, W) (one layer's output for the slice), each on its own range."""
    out = []
    for c in channels:
        m = a[c]
        out.append(_figure(_map_img(m, f"{layer} channel {c}", px, layer, c),
                           f"ch {c}<br><span class=range>{m.min():.3g} .. {m.max():.3g}</span>"))
    return '<div class="row">' + "".join(out) + "</div>"


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _n(v) -> str:
    return f"{int(v):,}"


def _floats(values) -> str:
    """Values as full-precision decimal text (float32 values survive the round trip exactly)."""
    return " ".join(repr(float(v)) for v in np.asarray(values).ravel())


# ---------------------------------------------------------------------------------------------- sections --

def _section_input(si: SliceInput, volume_shape: tuple, net: Network) -> str:
    p = si.params
    lo, hi = float(p["hu_min"]), float(p["hu_max"])
    size = si.x.shape[2]
    sx, sy, sz = si.zooms
    nx, ny = si.hu.shape
    native = colourise(radiological(si.hu), np.zeros((ny, nx), np.uint8), (lo, hi))
    names = [f"slice {f}" + (" (this one)" if i == len(si.channel_files) // 2 else "")
             for i, f in enumerate(si.channel_files)]
    channels = "".join(
        _figure(_img(grey(radiological(si.x[0, c]), 0.0, 1.0), f"input channel {c}", 2 * MAP_PX, layer="input",
                     channel=c), f"channel {c}: {names[c]}") for c in range(si.x.shape[1]))
    facts = _table(["", ""], [
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
            + _figure(_img(native, "the CT slice in HU", 2 * MAP_PX, layer="native", aspect=(nx * sx) / (ny * sy)),
                      f"the CT slice, {nx} x {ny}, window [{lo:g}, {hi:g}] HU")
            + f"</div><h3>The three channels the network reads ({size} x {size})</h3><div class=row>{channels}</div>"
            f"</section>")


def _conv_units(net: Network, prefix: str) -> list[list]:
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
        rows.append([name, f"{first.in_channels} -> {last.out_channels}", kind, _n(params), _n(macs),
                     _n(dense_p), _n(dense_m), ratio])
    return rows


def _encoder_stage(i: int, net: Network, by_name: dict, costs: dict, x: np.ndarray) -> str:
    prefix = f"encoder.{i}"
    stage_in_name = f"{prefix}.pool" if f"{prefix}.pool" in by_name else "input"
    stage_in = by_name[stage_in_name].output[0] if stage_in_name != "input" else x[0]
    units = _conv_units(net, prefix)
    last = by_name.get(f"{prefix}.eca") or by_name[units[-1][-1].name]
    out = last.output[0]
    ci, co = units[0][0].in_channels, units[-1][-1].out_channels
    h = out.shape[1]
    html = [f'<section class="stage" id="encoder-{i}"><h3>Stage {i}: {ci} -> {co} channels at {h} x {h}</h3>']
    html.append(f"<h4>Before the block ({stage_in_name}) and after it ({last.layer.name})</h4>"
                f"<div class=pair><div>{_maps(stage_in, stage_in_name, _spread_order(stage_in)[:MAPS_SHOWN])}</div>"
                f"<div class=arrow>&rarr;</div><div>{_maps(out, last.layer.name, _spread_order(out)[:MAPS_SHOWN])}"
                f"</div></div>")
    first = units[0]
    if first[0].op == "depthwise":
        dw, pw = by_name[first[0].name], by_name[next(lay.name for lay in first if lay.op == "pointwise")]
        html.append(_depthwise_panel(net, dw))
        html.append(_pointwise_panel(net, dw, pw))
    else:
        html.append(_dense_panel(net, by_name[first[0].name]))
    html.append("<h4>What the block costs here, against dense 3x3 convs</h4>"
                + _table(["conv", "channels", "kind", "params", "multiply-adds", "dense 3x3 params",
                          "dense 3x3 multiply-adds", "saving"], _cost_rows(units, costs), "numbers costs"))
    html.append("</section>")
    return "".join(html)


def _depthwise_panel(net: Network, dw: LayerStep) -> str:
    """The depthwise filters (3x3 each) beside the channel they read and the map they write."""
    w = net.tensors[f"{dw.layer.name}.weight"][:, 0]                 # (C, 3, 3)
    limit = float(np.abs(w).max())
    rows = []
    for c in _spread_order(dw.output[0])[:FILTERS_SHOWN]:
        rows.append('<div class="dwrow">'
                    + _figure(_map_img(dw.input[0, c], f"depthwise input channel {c}", SMALL_PX,
                                       net.plan[dw.index - 1].name, c), f"in ch {c}")
                    + '<div class=op>&#8859;</div>'
                    + _figure(_img(diverging(radiological(w[c]), limit), f"depthwise filter {c}", FILTER_PX,
                                   cls="filter"), "filter<br>" + _kernel_text(w[c]))
                    + '<div class=op>=</div>'
                    + _figure(_map_img(dw.output[0, c], f"depthwise output channel {c}", SMALL_PX, dw.layer.name, c),
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
    matrix = _img(diverging(w.T), f"{pw.layer.name} weights, {ci} inputs x {co} outputs", min(10 * co, 300),
                  layer=f"{pw.layer.name}.weight", cls="matrix")
    mixes = []
    for c in _spread_order(pw.output[0])[:2]:
        terms = np.argsort(-np.abs(w[c]) * rms, kind="stable")[:TERMS_SHOWN]
        products = [w[c, i] * d[i] for i in terms]
        limit = float(np.abs(np.stack(products)).max())
        figs = [_figure(_img(diverging(radiological(prod), limit), f"term {w[c, i]:+.3f} x channel {i}", SMALL_PX),
                        f"{w[c, i]:+.3f} x ch {i}") for i, prod in zip(terms, products)]
        mixes.append('<div class="row mix">' + '<div class=op>+</div>'.join(figs)
                     + f'<div class=op>+ {ci - len(terms)} more =</div>'
                     + _figure(_map_img(pw.output[0, c], f"pointwise output {c}", SMALL_PX, pw.layer.name, int(c),
                                        signed=True),
                               f"out ch {c}") + "</div>")
    return (f"<h4>Pointwise 1x1 ({pw.layer.name}): mixing the channels</h4>"
            f"<p>Each output channel is a weighted sum of all {ci} depthwise outputs, one weight per pair: the "
            f"matrix (a row per input channel, a column per output channel). For the two output channels that "
            f"vary most, the {TERMS_SHOWN} largest terms (weight x depthwise map, on one scale) and the sum of "
            f"all {ci}:</p><div class=pwgrid>"
            + _figure(matrix, f"{ci} x {co} weights, &plusmn;{np.abs(w).max():.3g}") + f"<div>{''.join(mixes)}</div></div>")


def _dense_panel(net: Network, conv: LayerStep) -> str:
    """A dense conv: the 3x3 filters of its most varied outputs (the strongest few per output), beside them."""
    w = net.tensors[f"{conv.layer.name}.weight"]                      # (Co, Ci, 3, 3)
    ci = w.shape[1]
    limit = float(np.abs(w).max())
    rows = []
    for c in _spread_order(conv.output[0])[:FILTERS_SHOWN]:
        strongest = np.sort(np.argsort(-np.abs(w[c]).sum(axis=(1, 2)), kind="stable")[:DENSE_FILTERS_SHOWN])
        filters = "".join(_img(diverging(radiological(w[c, k]), limit), f"filter {c} on input channel {k}",
                               FILTER_PX, cls="filter") for k in strongest)
        more = f", the {len(strongest)} strongest" if len(strongest) < ci else ""
        rows.append('<div class="dwrow">' + _figure(f"<div class=filters>{filters}</div>",
                                                    f"filter {c}: {ci} x 3x3{more}")
                    + '<div class=op>=</div>'
                    + _figure(_map_img(conv.output[0, c], f"{conv.layer.name} channel {c}", SMALL_PX,
                                       conv.layer.name, c), f"out ch {c}")
                    + "</div>")
    why = (f" With only {ci} input channels a depthwise conv would have almost nothing to work with."
           if ci <= 4 else "")
    return (f"<h4>Dense 3x3 ({conv.layer.name}): every filter reads every input channel</h4>"
            f"<p>This stage uses ordinary convolutions.{why} Each output channel has one 3x3 filter per input "
            f"channel (scale &plusmn;{limit:.3g}); the {FILTERS_SHOWN} outputs that vary most:</p>"
            f"<div class=dwgrid>{''.join(rows)}</div>")


def _section_encoder(net: Network, by_name: dict, costs: dict, x: np.ndarray) -> str:
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


def _section_eca(net: Network, steps: list[LayerStep]) -> str:
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
            pair = (_figure(_img(grey(radiological(s.input[0, c]), 0.0, hi), f"channel {c} before ECA",
                                 SMALL_PX, layer=net.plan[s.index - 1].name, channel=c), "before")
                    + _figure(_img(grey(radiological(s.output[0, c]), 0.0, hi), f"channel {c} after ECA",
                                   SMALL_PX, layer=s.layer.name, channel=c), "after"))
            return f'<div class=ecapair><div class=ecahead>ch {c}: gate {gate[c]:.3f}</div>{pair}</div>'

        parts.append(
            f'<div class="eca" id="eca-{escape(s.layer.name)}" data-layer="{escape(s.layer.name)}" '
            f'data-gates="{_floats(gate)}" data-kernel="{_floats(w)}">'
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


def _section_groupnorm(net: Network, steps: list[LayerStep]) -> str:
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
        cards.append(f'<div class=gn data-layer="{escape(s.layer.name)}" data-mean="{_floats(mean)}" '
                     f'data-std="{_floats(std)}"><h4>{escape(s.layer.name)} <span class=range>'
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


def _section_decoder(net: Network, by_name: dict, si: SliceInput) -> str:
    parts = []
    for j in range(len(net.spec["decoder"])):
        up, cat = by_name[f"decoder.{j}.up"], by_name[f"decoder.{j}.concat"]
        units = _conv_units(net, f"decoder.{j}")
        out = by_name[units[-1][-1].name]
        skip_channels = cat.layer.out_channels - up.layer.out_channels
        skip = cat.output[0, :skip_channels]
        h = up.output.shape[2]
        parts.append(
            f'<section class=stage id="decoder-{j}"><h3>Stage {j}: {h} x {h}, {skip_channels} skip + '
            f'{up.layer.out_channels} upsampled -> {out.layer.out_channels} channels</h3>'
            f"<div class=pair><div><h4>upsampled ({up.layer.name})</h4>"
            f"{_maps(up.output[0], up.layer.name, _spread_order(up.output[0])[:DECODER_MAPS_SHOWN])}</div>"
            f"<div class=arrow>+</div><div><h4>the skip it meets (encoder.{up.layer.scale})</h4>"
            f"{_maps(skip, f'encoder.{up.layer.scale}', _spread_order(skip)[:DECODER_MAPS_SHOWN])}</div>"
            f"<div class=arrow>&rarr;</div><div><h4>after the convs ({out.layer.name})</h4>"
            f"{_maps(out.output[0], out.layer.name, _spread_order(out.output[0])[:DECODER_MAPS_SHOWN])}</div></div></section>")
    return ('<section id="decoder"><h2>5. The decoder</h2>'
            "<p>Each decoder stage doubles the resolution (bilinear upsampling), puts the encoder's saved output of "
            "that resolution (the skip, with the fine detail) beside the upsampled maps (the coarse, wide context), "
            "and mixes both with two convs. The last 1x1 conv gives one score per class and pixel.</p>"
            + "".join(parts) + _probabilities(net, by_name["head"], si) + "</section>")


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(K, H, W) -> class probabilities, float64."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _probabilities(net: Network, head: LayerStep, si: SliceInput) -> str:
    logits = head.output[0]                                            # (K, S, S)
    prob = _softmax(logits)
    label = logits.argmax(axis=0)
    names = {int(k): v for k, v in net.labels.items()} or {k: f"class {k}" for k in range(len(prob))}
    figs = []
    for k in range(len(prob)):
        figs.append(_figure(_img(heat(radiological(prob[k])), f"probability of {names.get(k, k)}", MAP_PX,
                                 layer="head-softmax", channel=k),
                            f"{escape(names.get(k, str(k)).replace('_', ' '))}<br><span class=range>max "
                            f"{prob[k].max():.2f}, {_n(np.count_nonzero(label == k))} px</span>"))
    stops = ", ".join(f"rgb{heat_colour(t)} {t * 100:.0f}%" for t in np.linspace(0, 1, 9))
    # the labels: at the network's resolution over its centre channel, and back on the CT's own grid
    p = si.params
    lo, hi = float(p["hu_min"]), float(p["hu_max"])
    centre = si.x[0, si.x.shape[1] // 2].astype(np.float64) * (hi - lo) + lo
    small = colourise(radiological(centre), radiological(label.astype(np.uint8)), (lo, hi))
    win = si.window
    native_labels = upsample_argmax(head.output, win.side, win.side, win.y0, win.x0, win.height, win.width)[0]
    nx, ny = si.hu.shape
    big = colourise(radiological(si.hu), radiological(native_labels), WINDOW_HU)
    aspect = (nx * si.zooms[0]) / (ny * si.zooms[1])
    pixel_cm2 = si.zooms[0] * si.zooms[1] / 100.0
    legend = []
    for k in sorted(int(v) for v in np.unique(native_labels) if v > 0):
        n = int(np.count_nonzero(native_labels == k))
        legend.append(f'<li><span class=swatch style="background: rgb{colour_of(k)}"></span>'
                      f"{escape(names.get(k, str(k)).replace('_', ' '))}: {_n(n)} px, {n * pixel_cm2:.1f} cm&sup2;</li>")
    legend_html = "<ul class=legend>" + "".join(legend) + "</ul>" if legend else "<p>No organ predicted here.</p>"
    size = logits.shape[1]
    return (f'<section class=stage id="probabilities"><h3>Class probabilities (softmax of the {len(prob)} scores)</h3>'
            f"<p>Per class, the probability the network gives every pixel ({size} x {size}), from 0 "
            f'<span class=gradient style="background: linear-gradient(to right, {stops})"></span> 1, with the '
            f"highest value and the pixels where that class wins.</p><div class=row>{''.join(figs)}</div></section>"
            f'<section class=stage id="labels"><h3>The labels: the class with the highest score per pixel</h3>'
            f"<p>Left, at the network's resolution over its centre channel; right, upsampled back to the CT's "
            f"{nx} x {ny} grid (bilinear on the scores, then argmax, as <code>npunet segment</code> does before "
            f"its 3x3x3 closing, which needs the neighbouring slices), over the CT in a [{WINDOW_HU[0]:g}, "
            f"{WINDOW_HU[1]:g}] HU window.</p><div class=row>"
            + _figure(_img(small, "labels at the network resolution", 2 * MAP_PX, layer="labels-network"),
                      f"{size} x {size}")
            + _figure(_img(big, "labels on the CT grid", 3 * MAP_PX, layer="labels-native", aspect=aspect),
                      f"{nx} x {ny}") + f"{legend_html}</div></section>")


def _section_layers(steps: list[LayerStep], costs: dict, seconds: np.ndarray, whole: float, runs: int) -> str:
    total = float(seconds.sum())
    rows = []
    for s, t in zip(steps, seconds):
        c = costs[s.layer.name]
        rows.append([s.index, escape(s.layer.name), s.layer.op, " x ".join(map(str, s.output.shape[1:])),
                     _n(c.params) if c.params else "", _n(c.macs) if c.macs else "", f"{t * 1e3:.3f}",
                     f"{t / total:.1%}" if total > 0 else ""])
    params = sum(c.params for c in costs.values())
    macs = sum(c.macs for c in costs.values())
    rows.append(["", "<b>total</b>", "", "", f"<b>{_n(params)}</b>", f"<b>{_n(macs)}</b>",
                 f"<b>{total * 1e3:.2f}</b>", ""])
    import numba
    timed = f"{runs} runs" if runs > 1 else "one run"
    return ('<section id="layers"><h2>6. Every layer</h2>'
            f"<p>Output shape (channels x height x width), parameters and multiply-adds (as <code>npunet "
            f"summary</code> counts them: convolutions only), and the wall time of each layer for this slice: the "
            f"median over {timed} of the forward pass <code>net(x)</code> runs, layer by layer "
            f"(<code>Network.run_layers</code>), measured while this report was made, on {escape(_cpu_name())} with "
            f"{numba.get_num_threads()} Numba threads. Where a GroupNorm + ReLU or an upsample + concat feeds a "
            f"dense conv, that conv does their work as it reads its input, so their rows show almost no time and "
            f"the conv's row holds it. The whole forward pass, timed as one call: <b>{whole * 1e3:.2f} ms</b> "
            f"(median over {timed}). Times at batch 1 on a shared machine are noisy.</p>"
            + _table(["#", "layer", "op", "output", "params", "multiply-adds", "ms", "share"], rows, "numbers layers")
            + "</section>")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


# -------------------------------------------------------------------------------------------- the page --

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #fafafa;
       max-width: 1180px; margin: 0 auto; padding: 16px 24px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 20px; border-bottom: 2px solid #ccd; padding-top: 10px; }
h3 { font-size: 16px; margin: 18px 0 6px; } h4 { font-size: 13px; margin: 10px 0 4px; color: #444; }
section.stage { background: #fff; border: 1px solid #e2e2e8; border-radius: 6px; padding: 4px 14px 12px; margin: 12px 0; }
.row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.pair { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
.arrow { font-size: 28px; color: #888; padding: 0 4px; }
.op { font-size: 20px; color: #666; align-self: center; padding: 0 2px; }
figure { margin: 0; text-align: center; font-size: 11px; color: #444; }
figcaption { margin-top: 2px; }
img { image-rendering: pixelated; image-rendering: crisp-edges; display: block; margin: 0 auto; border: 1px solid #ddd;
      background: #000; }
img.filter { border-color: #999; background: #fff; }
.filters { display: flex; gap: 3px; }
.dwgrid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 8px; }
.dwrow { display: flex; gap: 6px; align-items: center; }
.mix { margin: 6px 0; align-items: center; }
.pwgrid { display: flex; gap: 18px; align-items: flex-start; flex-wrap: wrap; }
.range { color: #777; } .note { font-size: 11px; color: #555; }
.kernel { font-family: ui-monospace, monospace; font-size: 9px; line-height: 1.1; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 2px 8px; text-align: left; vertical-align: top; }
table.numbers td, table.numbers th { text-align: right; }
table.costs td:nth-child(-n+3), table.costs th:nth-child(-n+3) { text-align: left; }
table.layers td:nth-child(2), table.layers td:nth-child(3), table.layers th:nth-child(2),
table.layers th:nth-child(3) { text-align: left; }
table.facts td:first-child { font-weight: 600; }
.eca { background: #fff; border: 1px solid #e2e2e8; border-radius: 6px; padding: 4px 14px 12px; margin: 12px 0; }
.chart { margin-right: 16px; }
.gngrid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 6px 18px; }
.gn { border-bottom: 1px solid #e4e4e4; padding-bottom: 4px; }
.ecapair { display: inline-flex; flex-direction: column; margin: 0 8px 6px 0; }
.ecapair figure { display: inline-block; } .ecapair .ecahead { font-size: 12px; }
.ecapair > figure { margin-top: 2px; }
.gradient { display: inline-block; width: 120px; height: 10px; vertical-align: middle; border: 1px solid #aaa; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle; }
ul.legend { list-style: none; padding-left: 8px; margin: 0; font-size: 13px; }
nav ol { columns: 2; }
footer { margin: 28px 0 8px; padding: 8px 0; border-top: 2px solid #ccd; border-bottom: 6px solid #2e7d5b; color: #666; }
"""


def explain_slice(net: Network, volume_hu: np.ndarray, affine: np.ndarray, z_file: int, *, case: str = "CT",
                  source: str = "", reason: str = "", runs: int = 7, progress=None) -> str:
    """The HTML page following slice z_file (the index along the file's own axial axis) of volume_hu (X, Y, Z,
    Hounsfield units, on the grid of `affine`) through `net`. reason: why this slice (shown on the page);
    runs: timed passes for the per-layer times; progress(message): called before each slow step."""
    say = progress or (lambda message: None)
    si = slice_input(net, volume_hu, affine, z_file)
    say(f"following slice {z_file} through {len(net.plan)} layers")
    steps = list(net.run_layers(si.x, keep=True))
    by_name = {s.layer.name: s for s in steps}
    say(f"timing every layer ({runs} run{'s' if runs > 1 else ''})")
    seconds, whole = measure_layers(net, si.x, runs)
    size = si.x.shape[2]
    costs = {c.layer.name: c for c in layer_costs(net.spec, size, si.x.shape[3])}
    say("drawing the pictures")
    body = [_section_input(si, volume_hu.shape, net), _section_encoder(net, by_name, costs, si.x),
            _section_eca(net, steps), _section_groupnorm(net, steps), _section_decoder(net, by_name, si),
            _section_layers(steps, costs, seconds, whole, runs)]
    trained_on = net.metadata.get("training_cases") or []
    caveat = (f" <b>This case was among the {len(trained_on)} training cases of these weights</b>: expect the "
              f"labels to look better than on a CT the network has not seen." if case in trained_on else "")
    titles = ["The input slice", "The encoder", "Efficient Channel Attention", "GroupNorm", "The decoder",
              "Every layer"]
    nav = "<nav><ol>" + "".join(f'<li><a href="#{sid}">{t}</a></li>' for sid, t in zip(SECTIONS, titles)) + "</ol></nav>"
    params = sum(a.size for a in net.tensors.values())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>npunet explain: {escape(case)}, slice {z_file}</title><style>{CSS}</style></head><body>"
            f'<header data-case="{escape(case)}" data-slice="{z_file}"><h1>One CT slice through the network</h1>'
            f"<p><b>{escape(case)}</b>{' (' + escape(source) + ')' if source else ''}, axial slice <b>{z_file}</b> "
            f"of {volume_hu.shape[axial_axis(affine)]}{': ' + escape(reason) if reason else ''}. Network "
            f"<b>{escape(net.spec.get('name', '?'))}</b>, {params:,} parameters, {len(net.plan)} layers, input "
            f"{' x '.join(map(str, si.x.shape[1:]))}.{caveat}</p></header>{nav}"
            + "".join(body)
            + f'<footer id="end">End of the report. Made by npunet {__version__} (<code>npunet explain</code>); '
            f"every number and picture above comes from <code>Network.run_layers</code> on this slice.</footer>"
            f"</body></html>\n")
