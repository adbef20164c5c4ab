"""What a FLARE-layout data folder says about itself, read without torch or nibabel (tools/cv.py uses it
too): dataset.json's label names, the cases that have both an image and a label, which organs each case
annotates, and the `--unknown CASE:LABEL` marks that take organs away from a case.

Data layout: DATA/imagesTr/CASE_0000.nii.gz, DATA/labelsTr/CASE.nii.gz and DATA/dataset.json with
{"labels": {"0": "background", ...}, "cases": {CASE: {"annotated": [label ids], ...}}}; a case that is not
listed, or has no "annotated" list, is fully annotated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tools import REPO


def default_data_dir() -> Path:
    """$NPUNET_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("NPUNET_DATA", REPO.parent / "shared" / "data"))


def read_dataset_json(data_dir) -> dict:
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        raise SystemExit(f"train: {path} not found (give --data, or set NPUNET_DATA, to a FLARE-layout folder)")
    meta = json.loads(path.read_text())
    if "labels" not in meta:
        raise SystemExit(f"train: {path} has no 'labels' dict")
    return meta


def label_names(meta: dict) -> dict[int, str]:
    """dataset.json's labels as {int id: name}."""
    return {int(k): str(v) for k, v in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))}


def list_cases(data_dir) -> list[str]:
    """Cases that have both DATA/imagesTr/CASE_0000.nii.gz and DATA/labelsTr/CASE.nii.gz, sorted."""
    data_dir = Path(data_dir)
    out = []
    for p in sorted((data_dir / "imagesTr").glob("*_0000.nii.gz")):
        case = p.name[: -len("_0000.nii.gz")]
        if (data_dir / "labelsTr" / f"{case}.nii.gz").is_file():
            out.append(case)
    return out


def resolve_label(token: str, names: dict[int, str]) -> int:
    """A label given by number ('10') or by name ('esophagus', case and '-'/' ' vs '_' ignored) -> its id."""
    token = token.strip()
    if token.isdigit() and int(token) in names:
        return int(token)
    norm = token.lower().replace("-", "_").replace(" ", "_")
    for k, v in names.items():
        if v.lower() == norm:
            return k
    raise SystemExit(f"train: unknown label {token!r}; labels are {names}")


def parse_unknown(items, names: dict[int, str]) -> dict[str, list[int]]:
    """['CASE:LABEL[,LABEL...]', ...] -> {CASE: [label ids]}."""
    out: dict[str, set] = {}
    for item in items or []:
        case, sep, labels = item.partition(":")
        if not sep or not case or not labels:
            raise SystemExit(f"train: --unknown {item!r} must look like CASE:LABEL[,LABEL...]")
        ids = {resolve_label(t, names) for t in labels.split(",") if t.strip()}
        if 0 in ids:
            raise SystemExit("train: background cannot be unknown")
        out.setdefault(case, set()).update(ids)
    return {c: sorted(v) for c, v in out.items()}


def parse_pairs(items, names: dict[int, str]) -> list[tuple[int, int]]:
    """['LABEL:LABEL', ...] -> [(id, id), ...] (two different organs each)."""
    pairs = []
    for item in items or []:
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip():
            raise SystemExit(f"train: --pair {item!r} must look like LABEL:LABEL")
        ids = (resolve_label(a, names), resolve_label(b, names))
        if 0 in ids or ids[0] == ids[1]:
            raise SystemExit(f"train: --pair {item!r} must name two different organs")
        pairs.append(ids)
    return pairs


def parse_class_weights(items, names: dict[int, str]) -> list[float] | None:
    """['LABEL=W', ...] -> one cross-entropy weight per label id 0..max (1.0 where not named); None for none."""
    if not items:
        return None
    weights = [1.0] * (max(names) + 1)
    for item in items:
        label, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not label.strip() or not weight > 0:
            raise SystemExit(f"train: --class-weight {item!r} must look like LABEL=W with W > 0")
        weights[resolve_label(label.strip(), names)] = weight
    return weights


def annotated_organs(case: str, meta: dict, unknown: dict[str, list[int]] | None = None) -> list[int]:
    """The organ ids (no background) labelled in `case`: dataset.json's "annotated" list (all organs when
    absent), minus the ones made unknown by --unknown."""
    organs = [k for k in label_names(meta) if k != 0]
    entry = meta.get("cases", {}).get(case, {})
    ann = entry.get("annotated") if isinstance(entry, dict) else None
    ann = organs if ann is None else [int(k) for k in ann]
    drop = set((unknown or {}).get(case, []))
    return sorted(k for k in ann if k not in drop and k != 0)
