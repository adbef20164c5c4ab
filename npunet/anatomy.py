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
    """The world x (RAS+) of the centroid of the body (voxels above BODY_HU), summed a slab at a time: per slab
    its body voxels' count along z for each (x, y), whose row and column sums give the x and y profiles, and
    its count per slice, the z profile."""
    sums, count = np.zeros(3), 0
    nx, ny, nz = volume_hu.shape
    step = max(1, (1 << 22) // max(1, nx * ny))
    for a in range(0, nz, step):
        body = np.asarray(volume_hu[:, :, a:a + step]) > BODY_HU
        per_z = body.sum(axis=(0, 1), dtype=np.int64)
        n = int(per_z.sum())
        if not n:
            continue
        plane = body.sum(axis=2, dtype=np.int64)                  # (x, y)
        sums[0] += float(plane.sum(axis=1) @ np.arange(nx, dtype=np.float64))
        sums[1] += float(plane.sum(axis=0) @ np.arange(ny, dtype=np.float64))
        sums[2] += float(per_z @ (np.arange(per_z.size, dtype=np.float64) + a))
        count += n
    if not count:
        return None
    return float((affine @ np.append(sums / count, 1.0))[0])


def _largest_parts(labels: np.ndarray, affine: np.ndarray, voxel_ml: float, organs: list[int],
                   largest=None) -> dict[int, _Part]:
    """{label: its largest 26-connected part} for each of `organs` present, each found inside the organ's
    bounding box (npunet.kernels.morphology.label_boxes), so the cost follows the organs' size, not the
    image's. largest(labels, k, box) -> (voxels, centroid, part_box): morphology.largest_part (Numba), or
    largest_part_reference (scipy), which tests compare."""
    import nibabel as nib
    from npunet.kernels.morphology import label_boxes, largest_part
    largest = largest or largest_part
    labels = np.asfortranarray(labels)
    boxes = label_boxes(labels)
    codes = nib.aff2axcodes(affine)
    out = {}
    for k in organs:
        if k > 255 or boxes[k, 1] == 0:
            continue
        voxels, centroid, part_box = largest(labels, k, boxes[k])
        edges = []
        for i in range(3):
            if part_box[2 * i] == 0:                            # touches the first slice along axis i
                edges.append(OPPOSITE[codes[i]])
            if part_box[2 * i + 1] == labels.shape[i]:          # the last
                edges.append(codes[i])
        out[k] = _Part(voxels, voxels * voxel_ml, (affine @ np.append(centroid, 1.0))[:3], edges)
    return out


def largest_part_reference(labels: np.ndarray, k: int, box) -> tuple[int, np.ndarray, np.ndarray]:
    """What morphology.largest_part computes, by scipy: the 26-connected parts of labels == k in the box
    ([x0, x1, y0, y1, z0, z1)), numbered on the box's (z, y, x) view (so in the kernel's scan order); the
    part of most voxels (the first of equal ones): its voxels, centroid (x, y, z) and own box in labels."""
    from scipy import ndimage
    x0, x1, y0, y1, z0, z1 = (int(v) for v in box)
    mask = (labels[x0:x1, y0:y1, z0:z1] == k).transpose(2, 1, 0)
    parts, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return 0, np.full(3, np.nan), np.array([labels.shape[0], 0, labels.shape[1], 0, labels.shape[2], 0])
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    zs, ys, xs = np.nonzero(parts == best)
    xyz = (xs + x0, ys + y0, zs + z0)
    centroid = np.array([int(c.sum(dtype=np.int64)) for c in xyz]) / int(sizes[best])
    return int(sizes[best]), centroid, np.array([v for c in xyz for v in (int(c.min()), int(c.max()) + 1)])
