"""The explain page's last two sections: the decoder (upsampled maps and the skips they meet, the per-organ
probabilities and the labels, at the network's size and on the CT's grid) and the table of every layer with
its measured time.
"""

from __future__ import annotations

import os
from html import escape

import numpy as np

from npunet.explain.html import DECODER_MAPS_SHOWN, MAP_PX, figure, img_tag, maps, spread_order, table, thousands
from npunet.explain.pictures import heat, heat_colour, radiological
from npunet.explain.sections_encoder import conv_units
from npunet.explain.slices import SliceInput
from npunet.io.preview import WINDOW_HU, colour_of, colourise
import numba

from npunet.kernels import upsample_argmax
from npunet.machine import cpu_model
from npunet.network import LayerStep, Network


def section_decoder(net: Network, by_name: dict, si: SliceInput) -> str:
    parts = []
    for j in range(len(net.spec["decoder"])):
        up, cat = by_name[f"decoder.{j}.up"], by_name[f"decoder.{j}.concat"]
        units = conv_units(net, f"decoder.{j}")
        out = by_name[units[-1][-1].name]
        skip_channels = cat.layer.out_channels - up.layer.out_channels
        skip = cat.output[0, :skip_channels]
        h = up.output.shape[2]
        parts.append(
            f'<section class=stage id="decoder-{j}"><h3>Stage {j}: {h} x {h}, {skip_channels} skip + '
            f'{up.layer.out_channels} upsampled -> {out.layer.out_channels} channels</h3>'
            f"<div class=pair><div><h4>upsampled ({up.layer.name})</h4>"
            f"{maps(up.output[0], up.layer.name, spread_order(up.output[0])[:DECODER_MAPS_SHOWN])}</div>"
            f"<div class=arrow>+</div><div><h4>the skip it meets (encoder.{up.layer.scale})</h4>"
            f"{maps(skip, f'encoder.{up.layer.scale}', spread_order(skip)[:DECODER_MAPS_SHOWN])}</div>"
            f"<div class=arrow>&rarr;</div><div><h4>after the convs ({out.layer.name})</h4>"
            f"{maps(out.output[0], out.layer.name, spread_order(out.output[0])[:DECODER_MAPS_SHOWN])}</div></div></section>")
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
        figs.append(figure(img_tag(heat(radiological(prob[k])), f"probability of {names.get(k, k)}", MAP_PX,
                                 layer="head-softmax", channel=k),
                            f"{escape(names.get(k, str(k)).replace('_', ' '))}<br><span class=range>max "
                            f"{prob[k].max():.2f}, {thousands(np.count_nonzero(label == k))} px</span>"))
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
                      f"{escape(names.get(k, str(k)).replace('_', ' '))}: {thousands(n)} px, {n * pixel_cm2:.1f} cm&sup2;</li>")
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
            + figure(img_tag(small, "labels at the network resolution", 2 * MAP_PX, layer="labels-network"),
                      f"{size} x {size}")
            + figure(img_tag(big, "labels on the CT grid", 3 * MAP_PX, layer="labels-native", aspect=aspect),
                      f"{nx} x {ny}") + f"{legend_html}</div></section>")


def section_layers(steps: list[LayerStep], costs: dict, seconds: np.ndarray, whole: float, runs: int) -> str:
    total = float(seconds.sum())
    rows = []
    for s, t in zip(steps, seconds):
        c = costs[s.layer.name]
        rows.append([s.index, escape(s.layer.name), s.layer.op, " x ".join(map(str, s.output.shape[1:])),
                     thousands(c.params) if c.params else "", thousands(c.macs) if c.macs else "", f"{t * 1e3:.3f}",
                     f"{t / total:.1%}" if total > 0 else ""])
    params = sum(c.params for c in costs.values())
    macs = sum(c.macs for c in costs.values())
    rows.append(["", "<b>total</b>", "", "", f"<b>{thousands(params)}</b>", f"<b>{thousands(macs)}</b>",
                 f"<b>{total * 1e3:.2f}</b>", ""])
    timed = f"{runs} runs" if runs > 1 else "one run"
    return ('<section id="layers"><h2>6. Every layer</h2>'
            f"<p>Output shape (channels x height x width), parameters and multiply-adds (as <code>npunet "
            f"summary</code> counts them: convolutions only), and the wall time of each layer for this slice: the "
            f"median over {timed} of the forward pass <code>net(x)</code> runs, layer by layer "
            f"(<code>Network.run_layers</code>), measured while this report was made, on {escape(cpu_model())} ({os.cpu_count()} CPUs) with "
            f"{numba.get_num_threads()} Numba threads. Where a GroupNorm + ReLU or an upsample + concat feeds a "
            f"dense conv, that conv does their work as it reads its input, so their rows show almost no time and "
            f"the conv's row holds it. The whole forward pass, timed as one call: <b>{whole * 1e3:.2f} ms</b> "
            f"(median over {timed}). Times at batch 1 on a shared machine are noisy.</p>"
            + table(["#", "layer", "op", "output", "params", "multiply-adds", "ms", "share"], rows, "numbers layers")
            + "</section>")
