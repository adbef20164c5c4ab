"""`npunet explain`: one axial CT slice followed through the network, as one self-contained HTML page.

    slices.py            which slice, its network input, the per-layer times
    html.py              pictures, figures and tables as HTML; how much each section shows
    sections_encoder.py  the input, the encoder stages, ECA, GroupNorm
    sections_decoder.py  the decoder, the probabilities and labels, every layer's time
    page.py              explain_slice: the page, in that order (page.css: its style)
    pictures.py, charts.py   the colour maps and PNGs, the inline SVG charts
"""

from npunet.explain.page import explain_slice
from npunet.explain.slices import organ_pixels_per_slice

__all__ = ["explain_slice", "organ_pixels_per_slice"]
