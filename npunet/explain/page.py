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
Pictures are PNGs from npunet.explain.pictures (the project's own encoder) inlined as data: URIs; charts
are inline SVG (npunet.explain.charts); styling is inline CSS (page.css); no script, nothing is fetched. Every <img> carries
data-shape="HxW" (its PNG size) and, for a network tensor, data-layer (the layer name, "input" for the
network input) and data-channel; the ECA charts carry their gates in data-gates and the GroupNorm rows their
statistics in data-mean / data-std (full float precision), so tests can check the page against the network.

Orientation: maps are shown as radiologists view an axial slice (patient's right on the left, anterior at
the top), filters in the same orientation, so a filter's picture lines up with the maps it acts on.
"""

from __future__ import annotations

from html import escape
from importlib import resources

import numpy as np

from npunet.explain.html import SECTIONS
from npunet.explain.sections_decoder import section_decoder, section_layers
from npunet.explain.sections_encoder import section_eca, section_encoder, section_groupnorm, section_input
from npunet.explain.slices import measure_layers, slice_input
from npunet.network import Network
from npunet.preprocess import axial_axis
from npunet.summary import layer_costs
from npunet.version import __version__

CSS = resources.files("npunet.explain").joinpath("page.css").read_text(encoding="utf-8")


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
    body = [section_input(si, volume_hu.shape, net), section_encoder(net, by_name, costs, si.x),
            section_eca(net, steps), section_groupnorm(net, steps), section_decoder(net, by_name, si),
            section_layers(steps, costs, seconds, whole, runs)]
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
