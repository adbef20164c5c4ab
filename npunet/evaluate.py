"""`npunet evaluate PRED GT`: the FLARE 2024 DSC / NSD evaluation of label maps against ground truth.

The challenge's own rules, reimplemented (its helper file no longer imports on NumPy 2):
  - per case and organ: both masks empty -> DSC 1, NSD 1; exactly one empty -> DSC 0, NSD 0;
  - aorta (5), inferior vena cava (6) and esophagus (10) are scored on the ground truth's z-range only:
    gt[:, :, z_lo:z_hi] and pred[:, :, z_lo:z_hi], z the last array axis, z_lo / z_hi the lowest / highest
    slice holding the organ in the ground truth. The slice z_hi itself is left out, as the official code
    does. (An organ on a single slice leaves an empty slab, where the official code stops with "zero-size
    array" and defines no value; npunet gives NaN there, and means skip NaN, as the official pandas means do.)
  - DSC = 2|A and B| / (|A| + |B|); if DSC < 0.2 then NSD = 0, else NSD is the normalized surface Dice at
    the organ's tolerance (npunet.labels.NSD_TOLERANCE_MM) with the ground truth's voxel spacing, by the
    surfel method of npunet.surface;
  - each value is rounded to 4 decimals per case; means over cases are means of the rounded values.
Masks are cut to the bounding box of the organ in either label map before anything is computed (scipy's
find_objects finds all boxes in one pass), which changes no value.

Refused, one line each (never scored silently): a prediction on another grid than its ground truth (shape,
voxel size, a mirrored or turned axis, origin; npunet.io.validate.check_same_grid), and label maps holding
values that are not integers in 0..13 (negative, above 13, fractional, NaN).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from npunet.errors import InputError, NpunetError
from npunet.io.nifti import is_nifti_name, open_image, strip_nifti_suffix
from npunet.io.validate import check_same_grid
from npunet.labels import LABELS, NSD_TOLERANCE_MM, ORGANS
from npunet.io.paths import check_output_file, make_parent
from npunet.publish import atomic_write
from npunet.text import one_line
from npunet.surface import surface_dice

Z_RANGE_LABELS = (5, 6, 10)  # aorta, inferior vena cava, esophagus: scored on the gt's z-range only
NSD_MIN_DSC = 0.2  # below this DSC the NSD is not computed and counts as 0
DECIMALS = 4


# ------------------------------------------------------------------------------------- one organ --

def _round(x: float) -> float:
    return float(np.round(x, DECIMALS)) if not math.isnan(x) else math.nan


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|) of two bool masks of one shape; NaN when both are empty."""
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    if total == 0:
        return math.nan
    return 2.0 * np.count_nonzero(pred & gt) / total


def dsc_nsd(pred: np.ndarray, gt: np.ndarray, spacing_mm, tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) of one organ: pred, gt (X, Y, Z) bool masks; spacing in mm per axis; tolerance in mm.

    Both empty -> (1, 1); exactly one empty -> (0, 0); DSC < 0.2 -> NSD 0. Not rounded.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(f"dsc_nsd needs two 3D masks of one shape, got pred {pred.shape} and gt {gt.shape}")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 1.0, 1.0
    if not has_pred or not has_gt:
        return 0.0, 0.0
    box = ndimage.find_objects((pred | gt).view(np.uint8))[0]
    return _score(pred[box], gt[box], spacing_mm, tolerance_mm)


def _score(pred: np.ndarray, gt: np.ndarray, spacing_mm, tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) of two bool masks, at least one of them non-empty."""
    d = dice(pred, gt)
    if math.isnan(d):
        return math.nan, math.nan
    if d < NSD_MIN_DSC:  # also covers an empty mask (DSC 0)
        return d, 0.0
    return d, surface_dice(gt, pred, spacing_mm, tolerance_mm)


# -------------------------------------------------------------------------------------- one case --

def _check_spacing(spacing_mm) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"voxel spacing must be 3 positive numbers (mm), got {tuple(spacing_mm)}")
    return spacing


def parse_labels(text: str | None) -> tuple[int, ...]:
    """'1,2,13' or 'liver,spleen' (or a mix) -> (1, 2, 13); None or '' -> all 13 organs."""
    if not text:
        return ORGANS
    by_name = {name: k for k, name in LABELS.items() if k != 0}
    out = []
    for item in (t.strip() for t in text.split(",")):
        k = int(item) if item.isdigit() else by_name.get(item.lower())
        if k not in ORGANS:
            raise NpunetError(f"--labels: {item!r} is not an organ; use label ids 1..13 or names "
                              f"({', '.join(by_name)})")
        if k not in out:
            out.append(k)
    return tuple(sorted(out))


def evaluate_case(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing_mm, labels=ORGANS) -> dict:
    """Score one case: pred_labels, gt_labels (X, Y, Z) integer label maps on one grid; spacing_mm the
    ground truth's voxel size per array axis. -> {organ_name: {"DSC": x, "NSD": y}} in `labels` order,
    each rounded to 4 decimals (NaN only for a z-range organ on a single gt slice, see the module doc).
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.dtype == bool:
        pred_labels = pred_labels.view(np.uint8)
    if gt_labels.dtype == bool:
        gt_labels = gt_labels.view(np.uint8)
    if pred_labels.shape != gt_labels.shape:
        raise InputError(f"prediction shape {pred_labels.shape} does not match ground truth shape "
                         f"{gt_labels.shape}")
    if gt_labels.ndim != 3:
        raise InputError(f"label maps must be 3D, got shape {gt_labels.shape}")
    for name, arr in (("prediction", pred_labels), ("ground truth", gt_labels)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name} label map has dtype {arr.dtype}; need integer labels")
        check_label_range(arr, f"the {name} label map")
    spacing = _check_spacing(spacing_mm)
    labels = tuple(int(k) for k in labels)
    for k in labels:
        if k not in ORGANS:
            raise InputError(f"label {k} is not an organ (1..13)")
    top = max(labels)
    gt_boxes = ndimage.find_objects(gt_labels, max_label=top)  # one pass: the box of every label
    pred_boxes = ndimage.find_objects(pred_labels, max_label=top)
    out = {}
    for k in labels:
        gbox, pbox = gt_boxes[k - 1], pred_boxes[k - 1]
        if gbox is None and pbox is None:
            d, n = 1.0, 1.0
        elif gbox is None or pbox is None:
            d, n = 0.0, 0.0
        else:
            if k in Z_RANGE_LABELS:  # gt[:, :, z_lo:z_hi], the last labelled slice z_hi left out
                z_lo, z_hi = gbox[2].start, gbox[2].stop - 1
                gbox = gbox[:2] + (slice(z_lo, z_hi),)
                pbox = pbox[:2] + (slice(max(pbox[2].start, z_lo), min(pbox[2].stop, z_hi)),)
                if pbox[2].start >= pbox[2].stop:  # nothing predicted in the slab: an empty mask there
                    pbox = gbox
            box = tuple(slice(min(g.start, p.start), max(g.stop, p.stop)) for g, p in zip(gbox, pbox))
            d, n = _score(pred_labels[box] == k, gt_labels[box] == k, spacing, NSD_TOLERANCE_MM[k])
        out[LABELS[k]] = {"DSC": _round(d), "NSD": _round(n)}
    return out


def check_label_range(labels: np.ndarray, name: str) -> None:
    """InputError unless every value is an integer label in 0..13 (LABELS)."""
    if labels.size == 0:
        return
    lo, hi, top = labels.min(), labels.max(), max(LABELS)
    if lo < 0 or hi > top:
        bad = int(np.count_nonzero((labels < 0) | (labels > top)))
        raise InputError(f"{name}: label values {lo:g}..{hi:g}, {bad} voxels outside the labels 0..{top} "
                         f"(the 13 FLARE organs and background)")


# ------------------------------------------------------------------------------------ files, folders --

def read_label_map(path: str | os.PathLike):
    """A NIfTI label map -> (image, (X, Y, Z) integer array, voxel spacing in mm from header.get_zooms()[:3]).

    The file goes through npunet.io.nifti.open_image (the header checked before reading: voxel sizes > 0,
    size against file and memory, ...). Raises InputError (one line, naming the file) for a missing or
    unreadable file, a non-3D image, and voxel values that are not integer labels in 0..13 (fractions, NaN,
    negative or larger values).
    """
    path = Path(path)
    img = open_image(path)
    try:
        with np.errstate(all="ignore"):
            data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises OSError, EOFError, zlib errors, ... for truncated data
        raise InputError(f"{path}: not a readable NIfTI image ({one_line(exc, path)})") from None
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InputError(f"{path}: a label map must be 3D, got shape {data.shape}")
    if data.dtype == bool:
        data = data.view(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating):
            raise InputError(f"{path}: voxel values of type {data.dtype} are not integer labels")
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(f"{path}: {n_bad} NaN or Inf voxels; a label map holds integer labels 0..13")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            n_frac = int(np.count_nonzero(rounded != data))
            raise InputError(f"{path}: {n_frac} voxel values are not whole numbers (dtype {data.dtype}, e.g. "
                             f"{data[rounded != data].flat[0]:g}); a label map holds integer labels 0..13")
        check_label_range(rounded, str(path))
        data = rounded.astype(np.uint8)
    check_label_range(data, str(path))
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return img, data, spacing


def load_label_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(integer array, voxel spacing in mm) of a NIfTI label map; see read_label_map."""
    _, data, spacing = read_label_map(path)
    return data, spacing


def pair_cases(pred: str | os.PathLike, gt: str | os.PathLike) -> list[tuple[str, Path | None, Path]]:
    """[(case, pred_file or None when missing, gt_file)]: two files, or two folders matched by CASE.nii.gz."""
    pred, gt = Path(pred), Path(gt)
    for what, p in (("prediction", pred), ("ground truth", gt)):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder ({what})")
    if gt.is_dir() != pred.is_dir():
        raise InputError(f"give two files or two folders, got {'folder' if pred.is_dir() else 'file'} {pred} "
                         f"and {'folder' if gt.is_dir() else 'file'} {gt}")
    if not gt.is_dir():
        return [(strip_nifti_suffix(gt.name), pred, gt)]
    gt_files = sorted(p for p in gt.iterdir() if p.is_file() and is_nifti_name(p.name))
    if not gt_files:
        raise InputError(f"{gt}: no .nii.gz or .nii files in the ground-truth folder")
    preds = {strip_nifti_suffix(p.name): p for p in sorted(pred.iterdir()) if p.is_file() and is_nifti_name(p.name)}
    return [(strip_nifti_suffix(g.name), preds.get(strip_nifti_suffix(g.name)), g) for g in gt_files]


def evaluate_paths(pred: str | os.PathLike, gt: str | os.PathLike, labels=ORGANS) -> dict:
    """Score a prediction file against a ground-truth file, or a folder against a folder (CASE.nii.gz
    names matched). Spacing comes from each ground truth's header.

    Returns {"labels": {id: name}, "tolerance_mm": {name: t}, "cases": {case: evaluate_case(...)},
    "spacing_mm": {case: [s0, s1, s2]}, "errors": {case: message}, "mean": {name: {"DSC", "NSD"}} over the
    scored cases, "mean_over_organs": {"DSC", "NSD"}}. Two files: any problem raises InputError. Folders:
    a case whose prediction is missing, unreadable or of another shape is an entry in "errors" (left out of
    the means), and the other cases are still scored.
    """
    labels = tuple(int(k) for k in labels)
    pairs = pair_cases(pred, gt)
    single = not Path(gt).is_dir()
    cases, spacings, errors = {}, {}, {}
    for case, pred_file, gt_file in pairs:
        try:
            if pred_file is None:
                raise InputError(f"no prediction {case}.nii.gz in {pred}")
            gt_img, gt_data, spacing = read_label_map(gt_file)
            pred_img, pred_data, _ = read_label_map(pred_file)
            if pred_data.shape != gt_data.shape:
                raise InputError(f"prediction {pred_file} has shape {pred_data.shape}, ground truth {gt_file} "
                                 f"has shape {gt_data.shape}")
            check_same_grid(pred_img, gt_img, f"prediction {pred_file}", f"ground truth {gt_file}")
            cases[case] = evaluate_case(pred_data, gt_data, spacing, labels)
            spacings[case] = list(spacing)
        except NpunetError as exc:
            if single:
                raise
            errors[case] = str(exc)
    mean = {}
    for k in labels:
        name = LABELS[k]
        mean[name] = {m: _nanmean([c[name][m] for c in cases.values()]) for m in ("DSC", "NSD")}
    overall = {m: _nanmean([mean[LABELS[k]][m] for k in labels]) for m in ("DSC", "NSD")}
    return {
        "labels": {k: LABELS[k] for k in labels},
        "tolerance_mm": {LABELS[k]: NSD_TOLERANCE_MM[k] for k in labels},
        "cases": cases,
        "spacing_mm": spacings,
        "errors": errors,
        "mean": mean,
        "mean_over_organs": overall,
    }


def _nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return _round(sum(vals) / len(vals)) if vals else math.nan


# --------------------------------------------------------------------------------------------- report --

def _fmt(x: float) -> str:
    return "   -  " if math.isnan(x) else f"{x:.4f}"


def format_report(result: dict) -> str:
    """The text tables: one per case (organ, DSC, NSD), then the mean over cases with the mean over organs."""
    names = list(result["labels"].values())
    width = max(len("mean over organs"), *(len(n) for n in names))
    head = f"  {'organ':<{width}}  {'DSC':>6}  {'NSD':>6}"
    lines = []
    order = sorted(set(result["cases"]) | set(result["errors"]))
    for case in order:
        if case in result["errors"]:
            lines += [f"{case}: error: {result['errors'][case]}", ""]
            continue
        scores = result["cases"][case]
        sp = " x ".join(f"{s:g}" for s in result["spacing_mm"][case])
        lines += [f"{case}  (spacing {sp} mm)", head]
        lines += [f"  {n:<{width}}  {_fmt(scores[n]['DSC'])}  {_fmt(scores[n]['NSD'])}" for n in names]
        case_mean = {m: _nanmean([scores[n][m] for n in names]) for m in ("DSC", "NSD")}
        lines += [f"  {'mean over organs':<{width}}  {_fmt(case_mean['DSC'])}  {_fmt(case_mean['NSD'])}", ""]
    n_ok, n_err = len(result["cases"]), len(result["errors"])
    title = f"mean over {n_ok} case{'s' if n_ok != 1 else ''}"
    if n_err:
        title += f" ({n_err} case{'s' if n_err != 1 else ''} with errors left out)"
    lines += [title, head + f"  {'tol mm':>6}"]
    for n in names:
        m = result["mean"][n]
        lines.append(f"  {n:<{width}}  {_fmt(m['DSC'])}  {_fmt(m['NSD'])}  {result['tolerance_mm'][n]:>6g}")
    o = result["mean_over_organs"]
    lines.append(f"  {'mean over organs':<{width}}  {_fmt(o['DSC'])}  {_fmt(o['NSD'])}")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None  # JSON has no NaN
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def check_json_path(path: str | os.PathLike, inputs=()) -> Path:
    """Refuse, before scoring, a --json path we should not write (npunet.io.paths.check_output_file): not
    ending in .json (a slip such as `--json gt.nii.gz` would replace the ground truth), one of the inputs, a
    folder, or in a folder that cannot be created or written. An existing report is replaced."""
    return check_output_file(path, inputs, overwrite=True, suffixes=(".json",), what="the report")


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write the result as JSON (NaN as null) to a temporary name beside `path`, then rename it into place."""
    path = check_json_path(path)
    make_parent(path)
    text = json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
