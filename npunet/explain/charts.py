"""Bar charts and histograms as inline SVG text, for the explain report (no plotting library, no script).

    bar_chart(values, lo=0, hi=1)            one bar per value, from `base` (default 0) to the value
    bar_chart(means, errors=stds)            bars with +-error whiskers
    histogram(counts, edges)                 contiguous bars, the bin edges labelled at both ends

Every bar carries a <title> (the browser shows it on hover) and the chart a <desc>; the y axis shows lo,
base and hi. Sizes are CSS pixels; the SVG scales with its container (viewBox).
"""

from __future__ import annotations

from html import escape

import numpy as np

AXIS = "#555"
BAR = "#4a78b5"
FONT = 'font-family="sans-serif" font-size="10"'
LEFT, BOTTOM, TOP, RIGHT = 44, 16, 6, 8       # margins: y-axis labels, x labels, breathing room


def _fmt(v: float) -> str:
    """Short tick text: 3 significant digits; whole numbers from 1000 as 5,560 or, from 10,000, as 117k
    (so counts fit the margin)."""
    if abs(v) >= 1e3 and float(v).is_integer():
        return f"{v / 1e3:.0f}k" if abs(v) >= 1e4 else f"{v:,.0f}"
    return f"{v:.3g}"


def bar_chart(values, *, lo: float | None = None, hi: float | None = None, base: float = 0.0,
              errors=None, colours=None, titles=None, x_labels: tuple[str, str] | None = None,
              reference: float | None = None, width: int = 640, height: int = 150, gap: float = 0.15,
              description: str = "") -> str:
    """values (n,) -> an SVG bar chart. errors (n,): whiskers of +-error; colours (n,): CSS colours per bar
    (default one blue); titles (n,): hover text per bar; x_labels: text under the first and last bar;
    reference: a dashed horizontal line at that value; gap: the space between bars, as a fraction of a slot."""
    v = np.asarray(values, np.float64)
    n = len(v)
    err = np.zeros(n) if errors is None else np.asarray(errors, np.float64)
    lo = float(min(base, (v - err).min())) if lo is None else float(lo)
    hi = float(max(base, (v + err).max())) if hi is None else float(hi)
    if hi <= lo:
        hi = lo + 1.0
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def y(val: float) -> float:
        return TOP + plot_h * (hi - min(max(val, lo), hi)) / (hi - lo)

    slot = plot_w / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f"<desc>{escape(description)}</desc>"]
    for tick in sorted({lo, base, hi}):
        parts.append(f'<line x1="{LEFT - 3}" x2="{width - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                     f'stroke="{AXIS if tick == base else "#ddd"}" stroke-width="0.7"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{y(tick) + 3.5:.1f}" text-anchor="end" {FONT}>{_fmt(tick)}</text>')
    if reference is not None:
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y(reference):.1f}" y2="{y(reference):.1f}" '
                     f'stroke="#c33" stroke-width="0.8" stroke-dasharray="4 3"/>')
    for i, val in enumerate(v):
        x0 = LEFT + slot * (i + gap / 2)
        top, bottom = sorted((y(val), y(base)))
        colour = colours[i] if colours is not None else BAR
        title = f"<title>{escape(titles[i])}</title>" if titles is not None else ""
        parts.append(f'<rect x="{x0:.2f}" y="{top:.2f}" width="{slot * (1 - gap):.2f}" '
                     f'height="{max(bottom - top, 0.5):.2f}" fill="{colour}">{title}</rect>')
        if errors is not None:
            xc = x0 + slot * (1 - gap) / 2
            parts.append(f'<line x1="{xc:.2f}" x2="{xc:.2f}" y1="{y(val - err[i]):.2f}" y2="{y(val + err[i]):.2f}" '
                         f'stroke="#222" stroke-width="1"/>')
    if x_labels:
        first, last = x_labels
        parts.append(f'<text x="{LEFT}" y="{height - 4}" {FONT}>{escape(first)}</text>')
        parts.append(f'<text x="{width - RIGHT}" y="{height - 4}" text-anchor="end" {FONT}>{escape(last)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts, edges, *, width: int = 300, height: int = 110, colour: str = BAR,
              description: str = "") -> str:
    """counts (n,), edges (n + 1,) -> an SVG histogram, bins labelled by their edges on hover."""
    counts = np.asarray(counts)
    titles = [f"{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {int(c):,}" for i, c in enumerate(counts)]
    return bar_chart(counts, lo=0, base=0, titles=titles, x_labels=(_fmt(edges[0]), _fmt(edges[-1])),
                     colours=[colour] * len(counts), width=width, height=height, gap=0.0,
                     description=description)
