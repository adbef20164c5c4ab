"""Is the label map where the body says it should be? Laterality and anatomy checks of a segmented CT.

    checks = check_anatomy(labels, volume_hu, affine, names)   # a list of Check, each pass, fail or skipped
    line = warning_line(checks)                                # the failed ones in one line, or None

What is checked (world coordinates from the affine, RAS+: +x is the patient's right, +z superior):
  - side: the liver, the right kidney and the inferior vena cava lie on the patient's right of the body's
    midline, the spleen and the left kidney on the left. A failure points at a mirrored header (left and
    right swapped in the image or its affine): every paired organ and the side of every finding is then wrong.
  - above_kidneys: the liver lies above (superior to) both kidneys. A failure points at a header whose
    head-feet axis is flipped.
  - edge: an organ touches a face of the image (the first or last slice, or the in-plane border): part of it
    may lie outside the scan, so its volume is a lower bound (TotalSegmentator marks this too). A cropped scan.
The checks only report: they never change the labels.

They are made robust to small stray predictions (the shipped weights are weak on some organs): each organ is
represented by its largest connected part (26-connected; a few stray voxels elsewhere do not move it), an
organ whose largest part is under MIN_ML is skipped ("too little found to tell"), and a side counts only when
the centroid lies at least SIDE_MARGIN_MM from the midline. The midline is the x of the body's centroid (the
voxels above BODY_HU), so an off-centre field of view does not matter. The edge check also looks at the
largest part only: a stray voxel on the border does not make a volume a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_ML = 1.0                 # an organ's largest part smaller than this is not checked
SIDE_MARGIN_MM = 5.0         # how far from the midline a centroid must lie to be on one side
BODY_HU = -500.0             # voxels above this are the body (air is about -1000 HU)

SIDES = {"liver": "right", "right_kidney": "right", "inferior_vena_cava": "right",
         "spleen": "left", "left_kidney": "left"}
FACE_NAMES = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
WHY = {"side": "a mirrored header (left and right swapped)?",
       "above_kidneys": "a header with the head-feet axis flipped?",
       "edge": "a cropped scan?"}


@dataclass
class Check:
    """One check of one organ: status "pass", "fail" or "skipped", and in words what was found."""
    check: str                  # "side", "above_kidneys" or "edge"
    organ: str
    status: str
    detail: str
    edges: list[str] = field(default_factory=list)      # edge: the faces the organ touches

    def as_dict(self) -> dict:
        out = {"check": self.check, "organ": self.organ, "status": self.status, "detail": self.detail}
        if self.check == "edge":
            out["edges"] = list(self.edges)
        return out


@dataclass
class _Part:
    """An organ's largest connected part: its voxel count and centroid in world millimetres (RAS+)."""
    voxels: int
    ml: float
    centroid: np.ndarray
    edges: list[str]


def check_anatomy(labels: np.ndarray, volume_hu: np.ndarray | None, affine: np.ndarray,
                  names: dict[int, str]) -> list[Check]:
    """The checks of the module doc for a uint8 label map (X, Y, Z) on `affine`'s grid; volume_hu (the CT,
    same shape) gives the body's midline (None: the side checks are skipped). names: {label: organ name}."""
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    by_name = {str(v): int(k) for k, v in names.items() if int(k) != 0}
    parts = _largest_parts(labels, affine, voxel_ml, sorted(by_name.values()))
    organ = {name: parts.get(k) for name, k in by_name.items()}
    checks: list[Check] = []

    midline = _midline_x(volume_hu, affine) if volume_hu is not None else None
    for name, side in SIDES.items():
        if name not in by_name:
            continue
        part = organ[name]
        if part is None or part.ml < MIN_ML:
            checks.append(Check("side", name, "skipped", f"too little {_words(name)} found to tell its side"))
            continue
        if midline is None:
            checks.append(Check("side", name, "skipped", "no CT to find the body's midline"))
            continue
        offset = float(part.centroid[0] - midline)          # > 0: on the patient's right
        found = "right" if offset > 0 else "left"
        where = f"{abs(offset):.0f} mm {found} of the body's midline"
        if abs(offset) < SIDE_MARGIN_MM:
            checks.append(Check("side", name, "pass", f"on the midline ({where}); expected on the {side}"))
        elif found == side:
            checks.append(Check("side", name, "pass", f"on the {side}: {where}"))
        else:
            checks.append(Check("side", name, "fail", f"on the {found}: {where}; expected on the {side}"))

    if "liver" in by_name:
        liver = organ["liver"]
        kidneys = [(k, organ[k]) for k in ("right_kidney", "left_kidney") if k in by_name
                   and organ[k] is not None and organ[k].ml >= MIN_ML]
        if liver is None or liver.ml < MIN_ML or not kidneys:
            checks.append(Check("above_kidneys", "liver", "skipped", "needs the liver and a kidney"))
        else:
            gaps = [(k, float(liver.centroid[2] - part.centroid[2])) for k, part in kidneys]
            said = ", ".join(f"{abs(g):.0f} mm {'above' if g > 0 else 'below'} the {_words(k)}'s" for k, g in gaps)
            ok = all(g > 0 for _, g in gaps)
            checks.append(Check("above_kidneys", "liver", "pass" if ok else "fail", f"centroid {said}"))

    for k in sorted(by_name.values()):
        part, name = parts.get(k), names[k]
        if part is None:
            continue
        if part.edges:
            faces = " and ".join(FACE_NAMES[e] for e in part.edges)
            checks.append(Check("edge", str(name), "fail", f"touches the image's {faces} edge: its volume "
                                f"({part.ml:.1f} mL in its largest part) is a lower bound", part.edges))
        else:
            checks.append(Check("edge", str(name), "pass", "inside the image"))
    return checks


def warning_line(checks: list[Check]) -> str | None:
    """The failed checks in one line, each with what it may mean, or None when none failed."""
    failed = [c for c in checks if c.status == "fail"]
    if not failed:
        return None
    parts = []
    for kind in ("side", "above_kidneys"):
        these = [c for c in failed if c.check == kind]
        if these:
            parts.append("; ".join(f"{_words(c.organ)} {c.detail}" for c in these) + f" ({WHY[kind]})")
    edges = [c for c in failed if c.check == "edge"]
    if edges:
        listed = ", ".join(f"{_words(c.organ)} ({'/'.join(FACE_NAMES[e] for e in c.edges)})" for c in edges)
        parts.append(f"touching the image's edge, so their volumes are lower bounds: {listed} ({WHY['edge']})")
    return "anatomy check: " + "; ".join(parts) + "; the labels are left as the network gave them"


def by_organ(checks: list[Check]) -> dict[str, list[dict]]:
    """{organ name: [its checks as dicts]} (for the statistics JSON)."""
    out: dict[str, list[dict]] = {}
    for c in checks:
        out.setdefault(c.organ, []).append(c.as_dict())
    return out


def _words(name: str) -> str:
    return name.replace("_", " ")


def _midline_x(volume_hu: np.ndarray, affine: np.ndarray) -> float | None:
    """The world x (RAS+) of the centroid of the body (voxels above BODY_HU), summed a slab at a time."""
    sums, count = np.zeros(3), 0
    nz = volume_hu.shape[2]
    step = max(1, (1 << 22) // max(1, volume_hu.shape[0] * volume_hu.shape[1]))
    for a in range(0, nz, step):
        body = np.asarray(volume_hu[:, :, a:a + step]) > BODY_HU
        n = int(body.sum())
        if not n:
            continue
        for axis in range(3):
            other = tuple(i for i in range(3) if i != axis)
            profile = body.sum(axis=other, dtype=np.int64)
            index = np.arange(profile.size, dtype=np.float64) + (a if axis == 2 else 0)
            sums[axis] += float(profile @ index)
        count += n
    if not count:
        return None
    return float((affine @ np.append(sums / count, 1.0))[0])


def _largest_parts(labels: np.ndarray, affine: np.ndarray, voxel_ml: float, organs: list[int]) -> dict[int, _Part]:
    """{label: its largest 26-connected part} for each of `organs` present, each found inside the organ's
    bounding box (scipy.ndimage.find_objects), so the cost follows the organs' size, not the image's."""
    from scipy import ndimage
    import nibabel as nib
    boxes = ndimage.find_objects(labels)
    codes = nib.aff2axcodes(affine)
    out = {}
    for k in organs:
        if k > len(boxes) or boxes[k - 1] is None:
            continue
        box = boxes[k - 1]
        mask = labels[box] == k
        components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            mask = components == int(np.argmax(sizes))
        voxels = int(mask.sum())
        centroid = np.array([float((mask.sum(axis=tuple(j for j in range(3) if j != i), dtype=np.int64)
                                    @ np.arange(mask.shape[i])) / voxels) + box[i].start for i in range(3)])
        edges = []
        for i in range(3):
            faces = ((0, box[i].start == 0), (-1, box[i].stop == labels.shape[i]))
            for end, on_border in faces:
                if on_border and np.take(mask, end, axis=i).any():
                    code = codes[i] if end == -1 else OPPOSITE[codes[i]]
                    edges.append(code)
        out[k] = _Part(voxels, voxels * voxel_ml, (affine @ np.append(centroid, 1.0))[:3], edges)
    return out
