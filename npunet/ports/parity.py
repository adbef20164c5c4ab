"""npunet against another engine on the same slices, layer by layer: where a port starts to differ, and whether
the difference is rounding or a bug.

    report = compare(layers, engine_outputs, tolerances)     # layers: [(Layer, npunet's output)], in order
    print(format_report(report)); report.within              # True: every figure within its tolerance

Per layer (npunet's layer plan, in execution order; a layer the engine does not show is left out):
  max |diff|     the largest absolute difference from npunet's output
  scale          npunet's largest |value| in that layer
  diff/scale     max |diff| / scale: the figure held to the layer tolerance, so layers of any magnitude compare
  ULP histogram  the share of values 0, 1-3, 4-15, 16-255 and 256+ float32 units in the last place apart (all
                 bins in powers of two in the JSON). Rounding moves values by a few ULP; near zero (after a
                 ReLU, say) a tiny absolute difference is a huge ULP count, which is why the tolerance is on
                 diff/scale and the ULPs are shown, not judged
The first layer beyond its tolerance is named: a wrong op shows there, and the layers after it differ
because their inputs do. Then the logits (max |diff|, held to the logits tolerance) and the labels (argmax
over the classes, per pixel at the network's resolution): each pixel whose label differs is classed by
npunet's top-2 margin there, the gap between its best and second-best logit. A flip needs both logits to
move by about half that gap, so a margin within 2 x the logits tolerance is rounding, a larger one a real
difference.

Tolerances (Tolerances; `npunet parity --layer-tol --logits-tol --labels-min`), with their reasons:
  layer    1e-4 of the layer's scale. npunet's own ONNX export, run by ONNX Runtime, OpenVINO and the ONNX
           reference evaluator on real CT slices, stays within 3.3e-6 (1.8e-6 with the shipped weights); a
           Resize in the wrong coordinate mode is 0.33 (docs/ports.md)
  logits   1e-4 absolute, as npunet's own parity with torch (docs/parity.md): 68 layers of ~1e-6 relative
           differences, on logits up to ~22 in magnitude here (measured 9.5e-6 to 3.1e-5)
  labels   >= 99.99 % of pixels agree: a label flips only where two logits are within ~2e-4
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

ULP_COLUMNS = ((0, 1), (1, 4), (4, 16), (16, 256), (256, None))       # the table's bins: [lo, hi)
ULP_EDGES = [0] + [2 ** k for k in range(33)]                          # the JSON's bins: 0, 1, 2-3, 4-7, ...
MARGIN_EDGES = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, np.inf]


@dataclass
class Tolerances:
    layer: float = 1e-4       # max |diff| / the layer's scale
    logits: float = 1e-4      # max |diff| of the logits
    labels: float = 99.99     # % of pixels whose argmax agrees, at least


@dataclass
class LayerRow:
    name: str
    op: str
    shape: list
    max_diff: float | None = None
    scale: float | None = None
    relative: float | None = None
    ulp: dict = field(default_factory=dict)        # "0", "1-3", ... -> share of values (the table's bins)
    ulp_histogram: list = field(default_factory=list)   # counts per ULP_EDGES bin
    status: str = "ok"                             # ok | beyond | shape | not finite
    note: str = ""


@dataclass
class Report:
    rows: list[LayerRow]
    logits_max_diff: float
    labels: dict
    tolerances: Tolerances
    first_beyond: str | None
    within: bool
    about: dict = field(default_factory=dict)      # what was compared: CT, slices, engines, versions
    missing: list[str] = field(default_factory=list)   # npunet layers the engine does not show


def ordered_ints(a: np.ndarray) -> np.ndarray:
    """float32 values as int64 in the order of the floats (-0.0 and +0.0 both 0): ULP distances are the
    differences of these."""
    i = np.ascontiguousarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(2 ** 31) - i, i)


def ulp_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float32 units in the last place, elementwise (int64)."""
    return np.abs(ordered_ints(a) - ordered_ints(b))


def compare_layer(name: str, op: str, want: np.ndarray, got: np.ndarray, tolerance: float) -> LayerRow:
    """One layer: npunet's output `want` against the engine's `got` (same shape expected)."""
    row = LayerRow(name, op, list(want.shape))
    got = np.asarray(got)
    if got.shape != want.shape:
        row.status, row.note = "shape", f"engine gives {'x'.join(map(str, got.shape))}"
        return row
    got = got.astype(np.float32, copy=False)
    if not np.isfinite(got).all():
        row.status, row.note = "not finite", f"{int((~np.isfinite(got)).sum()):,} NaN or Inf values"
        return row
    diff = np.abs(got.astype(np.float64) - want)
    row.max_diff = float(diff.max()) if diff.size else 0.0
    row.scale = float(np.abs(want).max()) if want.size else 0.0
    row.relative = row.max_diff / row.scale if row.scale > 0 else (0.0 if row.max_diff == 0 else np.inf)
    ulps = ulp_distances(want, got).ravel()
    row.ulp_histogram = np.histogram(ulps, bins=ULP_EDGES + [2 ** 40])[0].tolist()
    n = max(ulps.size, 1)
    for lo, hi in ULP_COLUMNS:
        inside = (ulps >= lo) & (ulps < hi) if hi is not None else ulps >= lo
        row.ulp[ulp_label(lo, hi)] = float(inside.sum()) / n
    row.status = "ok" if row.relative <= tolerance else "beyond"
    return row


def ulp_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"


def compare_labels(want_logits: np.ndarray, got_logits: np.ndarray, logits_tolerance: float,
                   slice_numbers: list[int] | None = None) -> dict:
    """Labels (argmax over axis 1) of npunet's logits (N, K, H, W) against the engine's; each differing pixel
    classed by npunet's top-2 margin there (see the module doc). slice_numbers: the CT slice of each of the N
    rows, to say where the largest-margin flip is."""
    want_labels, got_labels = want_logits.argmax(1), got_logits.argmax(1)
    differ = want_labels != got_labels
    top2 = -np.partition(-want_logits, 1, axis=1)[:, :2]                  # (N, 2, H, W): best, second best
    margins = (top2[:, 0] - top2[:, 1])[differ].astype(np.float64)
    rounding = 2 * logits_tolerance
    out = {"pixels": int(differ.size), "differ": int(differ.sum()),
           "agree_percent": 100.0 * (1.0 - float(differ.mean())) if differ.size else 100.0,
           "rounding_margin": rounding,
           "within_rounding": int((margins <= rounding).sum()), "beyond_rounding": int((margins > rounding).sum()),
           "margin_histogram": {"edges": [float(e) for e in MARGIN_EDGES],
                                "counts": np.histogram(margins, bins=MARGIN_EDGES)[0].tolist()}}
    if margins.size:
        worst = np.argwhere(differ)[int(np.argmax(margins))]
        row = int(worst[0])
        out["largest_margin"] = {"margin": float(margins.max()),
                                 "slice": int(slice_numbers[row]) if slice_numbers is not None else row,
                                 "y": int(worst[1]), "x": int(worst[2]),
                                 "npunet_label": int(want_labels[tuple(worst)]),
                                 "engine_label": int(got_labels[tuple(worst)])}
    return out


def compare(layers: list, got: dict, tolerances: Tolerances = Tolerances(), x: np.ndarray | None = None,
            about: dict | None = None, slice_numbers: list[int] | None = None) -> Report:
    """npunet's layers [(Layer, output (N, C, H, W))] in execution order, the last the head (the logits),
    against the engine's outputs {name: array} (layer names, "logits", and "input" when the engine ran its
    own preprocessing, compared with npunet's input `x`). slice_numbers: the CT slice of each of the N rows."""
    rows, missing = [], []
    if x is not None and "input" in got:
        rows.append(compare_layer("input", "preprocess", x, got["input"], tolerances.layer))
    for layer, output in layers:
        if layer.name in got:
            rows.append(compare_layer(layer.name, layer.op, output, got[layer.name], tolerances.layer))
        else:
            missing.append(layer.name)
    want_logits = layers[-1][1]
    logits = compare_layer("logits", "logits", want_logits, got["logits"], np.inf)
    comparable = logits.status == "ok"
    logits_diff = logits.max_diff if comparable else np.inf
    labels = (compare_labels(want_logits, np.asarray(got["logits"], np.float32), tolerances.logits, slice_numbers)
              if comparable
              else {"pixels": 0, "differ": 0, "agree_percent": 0.0, "note": logits.note or logits.status})
    first = next((r.name for r in rows if r.status != "ok"), None)
    within = bool(first is None and logits_diff <= tolerances.logits and labels["agree_percent"] >= tolerances.labels)
    return Report(rows, float(logits_diff), labels, tolerances, first, within, dict(about or {}), missing)


# ------------------------------------------------------------------------------------------- output --

def format_report(report: Report) -> str:
    """The table `npunet parity` prints: one line per layer, then the logits, the labels and the verdict."""
    tol = report.tolerances
    lines = [f"{key}: {value}" for key, value in report.about.items()]
    bins = [ulp_label(lo, hi) for lo, hi in ULP_COLUMNS]
    if report.rows:
        width = max(len(r.name) for r in report.rows)
        columns = f"{'layer':<{width}}  {'op':<10} {'max|diff|':>9} {'scale':>7} {'diff/scale':>10}  "
        lines.append(f"{'':<{len(columns)}}{'values this many float32 ULP apart':>39}")
        lines.append(columns + " ".join(f"{b:>7}" for b in bins))
        for r in report.rows:
            if r.max_diff is None:
                lines.append(f"{r.name:<{width}}  {r.op:<10} {r.status}: {r.note}")
                continue
            shares = " ".join(f"{_percent(r.ulp[b]):>7}" for b in bins)
            flag = "" if r.status == "ok" else f"  <- beyond {tol.layer:.0e}"
            lines.append(f"{r.name:<{width}}  {r.op:<10} {r.max_diff:>9.1e} {r.scale:>7.3g} {r.relative:>10.1e}  "
                         f"{shares}{flag}")
    else:
        lines.append("layers: none of the engine's values is named after npunet's layers, so only the logits "
                     "are compared (`npunet export onnx` names them)")
    if report.missing and report.rows:
        lines.append(f"not shown by the engine: {len(report.missing)} layers ({', '.join(report.missing[:3])}"
                     f"{', ...' if len(report.missing) > 3 else ''})")
    mark = "ok" if report.logits_max_diff <= tol.logits else "BEYOND"
    lines.append(f"logits: max |diff| {report.logits_max_diff:.1e} (tolerance {tol.logits:.0e}): {mark}")
    lines.append(_labels_line(report.labels, tol))
    if report.first_beyond:
        row = next(r for r in report.rows if r.name == report.first_beyond)
        what = (f"max |diff| {row.max_diff:.2g} = {row.relative:.1e} of its scale {row.scale:.3g} (tolerance "
                f"{tol.layer:.0e})" if row.max_diff is not None else f"{row.status}: {row.note}")
        lines.append(f"first layer beyond tolerance: {row.name} ({row.op}), {what}")
    lines.append("result: " + ("within tolerance (exit 0)" if report.within else "BEYOND tolerance (exit 1)"))
    return "\n".join(lines)


def _percent(share: float) -> str:
    if share == 0:
        return "0"
    if share < 0.001:
        return "<0.1%"
    return f"{100 * share:.1f}%"


def _labels_line(labels: dict, tol: Tolerances) -> str:
    if "note" in labels:
        return f"labels: not compared ({labels['note']})"
    mark = "ok" if labels["agree_percent"] >= tol.labels else "BEYOND"
    line = (f"labels: {labels['agree_percent']:.4f} % of {labels['pixels']:,} pixels agree (tolerance "
            f"{tol.labels:g} %): {mark}")
    if labels["differ"]:
        line += (f"\n  {labels['differ']:,} differ; by npunet's top-2 logit margin there: "
                 f"{labels['within_rounding']:,} within rounding (<= {labels['rounding_margin']:.0e}), "
                 f"{labels['beyond_rounding']:,} beyond it")
        worst = labels["largest_margin"]
        if worst["margin"] > labels["rounding_margin"]:
            line += (f" (the largest, {worst['margin']:.3g}: slice {worst['slice']}, y {worst['y']}, x {worst['x']}, "
                     f"npunet {worst['npunet_label']}, engine {worst['engine_label']})")
    return line


def report_json(report: Report) -> str:
    """The report as JSON: every figure of the table, the full ULP and margin histograms, the tolerances."""
    data = asdict(report)
    data["ulp_edges"] = ULP_EDGES
    return json.dumps(_finite(data), indent=1)


def _finite(value):
    """Plain JSON values: NumPy scalars as Python's, and an infinite figure (JSON has no Infinity) as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
