"""The explain page's building blocks: how a picture, a figure, a table and a number are written in HTML.

Pictures are PNGs from npunet.explain.pictures (the project's own encoder) inlined as data: URIs. Every <img>
carries data-shape="HxW" (its PNG size) and, for a network tensor, data-layer (the layer name, "input" for
the network input) and data-channel, so tests can check the page against the network. The display sizes
and how many maps, filters and channels each section shows are set here, in one place.
"""

from __future__ import annotations

from html import escape

import numpy as np

from npunet.explain.pictures import diverging, grey, png_data_uri, radiological

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


def img_tag(rgb: np.ndarray, alt: str, px: int = MAP_PX, *, layer: str | None = None, channel: int | None = None,
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


def figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{caption}</figcaption></figure>"


def spread_order(a: np.ndarray) -> np.ndarray:
    """Channels of a (C, H, W) from the largest spatial standard deviation down (ties: lower channel first)."""
    return np.argsort(-a.reshape(a.shape[0], -1).std(axis=1), kind="stable")


def map_img(m: np.ndarray, alt: str, px: int = MAP_PX, layer: str | None = None, channel: int | None = None,
             signed: bool = False) -> str:
    """A feature map (H, W) on its own range: grey from its minimum (black) to its maximum (white)
    (data-scale="own"), or with signed, blue-white-red with 0 white and -+max|m| the ends
    (data-scale="signed")."""
    if not signed:
        return img_tag(grey(radiological(m)), alt, px, layer=layer, channel=channel, scale="own")
    return img_tag(diverging(radiological(m)), alt, px, layer=layer, channel=channel, scale="signed")


def maps(a: np.ndarray, layer: str, channels, px: int = MAP_PX) -> str:
    """Figures of channels of a (C, H, W) (one layer's output for the slice), each on its own range."""
    out = []
    for c in channels:
        m = a[c]
        out.append(figure(map_img(m, f"{layer} channel {c}", px, layer, c),
                           f"ch {c}<br><span class=range>{m.min():.3g} .. {m.max():.3g}</span>"))
    return '<div class="row">' + "".join(out) + "</div>"


def table(head: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def thousands(v) -> str:
    return f"{int(v):,}"


def floats(values) -> str:
    """Values as full-precision decimal text (float32 values survive the round trip exactly)."""
    return " ".join(repr(float(v)) for v in np.asarray(values).ravel())
