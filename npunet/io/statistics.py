"""Per-organ statistics of a label map: voxel count, volume in millilitres, and mean HU of the input CT, and,
given the anatomy checks (npunet.anatomy), the faces of the image an organ touches (its volume is then a lower
bound) and its laterality and position checks.

volume_ml = voxels x voxel volume (mm^3) / 1000, with the voxel volume |det(affine[:3, :3])|, which is the
product of the zooms for any unsheared grid (and stays right for a tilted-gantry shear).
Both files are written to a temporary name and renamed into place.

    CSV:  label,name,voxels,volume_ml,mean_hu,at_image_edge      (at_image_edge: "superior inferior", or empty)
    JSON: {"liver": {"label": 1, "voxels": ..., "volume_ml": ..., "mean_hu": ..., "at_image_edge": ["superior"],
                     "volume_is_lower_bound": true, "checks": [{"check": "side", "status": "pass", ...}]}, ...}
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from npunet.anatomy import FACE_NAMES
from npunet.publish import atomic_write, unpublish

COLUMNS = ("label", "name", "voxels", "volume_ml", "mean_hu", "at_image_edge")


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """|det| of the 3x3 part of the voxel-to-world affine, in mm^3."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def label_counts(labels: np.ndarray, n: int = 256) -> np.ndarray:
    """Voxel count of each label value 0..n-1 of an integer label map, without a full-size int64 copy (a uint8
    map in one Numba pass, npunet.kernels.morphology.label_counts; other integer types by np.bincount in
    slabs)."""
    if labels.dtype == np.uint8 and n <= 256:
        from npunet.kernels.morphology import label_counts as uint8_counts
        return uint8_counts(labels)[:n].copy()
    counts = np.zeros(n, np.int64)
    for a, b in _slabs(labels.shape[0], labels[:1].size):
        counts += np.bincount(labels[a:b].ravel(), minlength=n)[:n]
    return counts


def _slabs(length: int, items_per_index: int, budget: int = 1 << 22):
    """(start, stop) ranges along the first axis of about `budget` items each."""
    step = max(1, budget // max(1, items_per_index))
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def organ_statistics(labels: np.ndarray, volume_hu: np.ndarray | None, affine: np.ndarray,
                     label_names: dict[int, str], checks: list | None = None) -> list[dict]:
    """One row per organ (every non-zero label in label_names, in label order, present or not):
    {"label": k, "name": str, "voxels": int, "volume_ml": float, "mean_hu": float | None, "at_image_edge":
    [face names], "volume_is_lower_bound": bool, "checks": [the organ's side / position checks]}; the last
    three come from `checks` (npunet.anatomy.check_anatomy; none given: no face, no check).

    labels: (X, Y, Z) uint8; volume_hu: (X, Y, Z) the CT on the same grid (None: mean_hu is None).
    mean_hu is None for an organ with no voxels. Sums are accumulated in float64.
    """
    labels = np.asarray(labels)
    if volume_hu is not None and np.shape(volume_hu) != labels.shape:
        raise ValueError(f"labels {labels.shape} and CT {np.shape(volume_hu)} differ in shape")
    keys = sorted(int(k) for k in label_names if int(k) != 0)
    n = max(keys + [int(labels.max()) if labels.size else 0]) + 1
    counts = np.zeros(n, np.int64)
    sums = np.zeros(n, np.float64) if volume_hu is not None else None
    for a, b in _slabs(labels.shape[0], labels[:1].size):   # bincount makes int64/float64 copies: bound them
        flat = labels[a:b].ravel()
        counts += np.bincount(flat, minlength=n)
        if sums is not None:
            sums += np.bincount(flat, weights=np.asarray(volume_hu[a:b], dtype=np.float64).ravel(), minlength=n)
    vox_ml = voxel_volume_mm3(affine) / 1000.0
    rows = []
    for k in keys:
        c = int(counts[k])
        mean = float(sums[k] / c) if (sums is not None and c) else None
        mine = [ch for ch in checks or () if ch.organ == str(label_names[k])]
        faces = [FACE_NAMES[e] for ch in mine if ch.check == "edge" for e in ch.edges]
        rows.append({"label": k, "name": str(label_names[k]), "voxels": c,
                     "volume_ml": round(c * vox_ml, 4), "mean_hu": None if mean is None else round(mean, 2),
                     "at_image_edge": faces, "volume_is_lower_bound": bool(faces),
                     "checks": [ch.as_dict() for ch in mine if ch.check != "edge"]})
    return rows


def write_statistics(rows: list[dict], csv_path: str | os.PathLike, json_path: str | os.PathLike,
                     overwrite: bool = True) -> None:
    """Write rows as CSV (columns label,name,voxels,volume_ml,mean_hu; empty mean_hu for absent organs) and as
    JSON ({name: {label, voxels, volume_ml, mean_hu}} in label order), each atomically (overwrite=False:
    exclusively, InputError if a file exists; see npunet.publish)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    text_csv = buf.getvalue()
    keys = [c for c in (*COLUMNS, "volume_is_lower_bound", "checks") if c != "name"]
    text_json = json.dumps({r["name"]: {c: r[c] for c in keys if c in r} for r in rows}, indent=1) + "\n"
    atomic_write(csv_path, lambda tmp: _write_text(tmp, text_csv), overwrite=overwrite)
    try:
        atomic_write(json_path, lambda tmp: _write_text(tmp, text_json), overwrite=overwrite)
    except BaseException:
        unpublish(csv_path)                         # both files or neither
        raise


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _write_text(path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
