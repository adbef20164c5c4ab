"""A quick-look PNG of a segmentation: axial and coronal slices of the CT, windowed, with the labels blended
in a fixed colour table. Standard library only (zlib + struct write the PNG); no PIL, no matplotlib.

Layout: a top row of axial slices at 25 %, 50 % and 75 % of the labelled height (of the whole volume when
nothing is labelled) and a bottom row of coronal slices through the labelled region, all at one common
scale in millimetres per pixel, so organs keep their true shape whatever the voxel spacing. Slices are
shown in the radiological convention: the patient's right on the image's left, anterior (axial) or
superior (coronal) at the top. The volume is first reoriented to RAS+ from its affine, so the picture does
not depend on how the file stores its axes.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from nibabel import orientations

from npunet.preprocess import canonical_voxel_sizes
from npunet.publish import atomic_write

WINDOW_HU = (-160.0, 240.0)  # abdomen soft-tissue window: level 40, width 400
ALPHA = 0.45
PANEL_PX = 256               # the axial slices fit a PANEL_PX x PANEL_PX box; the rest follows that scale
GAP_PX = 4

# RGB per label index; index 0 (background) is never drawn. Labels above 13 reuse the table cyclically.
COLOURS = np.array([
    (0, 0, 0),
    (220, 90, 60),    # 1 liver
    (240, 200, 40),   # 2 right kidney
    (130, 70, 210),   # 3 spleen
    (250, 150, 200),  # 4 pancreas
    (230, 30, 30),    # 5 aorta
    (40, 90, 230),    # 6 inferior vena cava
    (0, 210, 210),    # 7 right adrenal gland
    (0, 150, 110),    # 8 left adrenal gland
    (60, 200, 60),    # 9 gallbladder
    (255, 128, 0),    # 10 esophagus
    (160, 200, 255),  # 11 stomach
    (200, 160, 90),   # 12 duodenum
    (255, 230, 120),  # 13 left kidney
], dtype=np.uint8)


def colour_of(label: int) -> tuple[int, int, int]:
    """The RGB colour used for a label value (> 0)."""
    return tuple(int(c) for c in COLOURS[1 + (int(label) - 1) % (len(COLOURS) - 1)])


def _to_ras(volume: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    ornt = orientations.io_orientation(affine)
    to_ras = orientations.ornt_transform(ornt, orientations.axcodes2ornt("RAS"))
    zooms_ras = canonical_voxel_sizes(affine, "RAS")
    return (orientations.apply_orientation(volume, to_ras), orientations.apply_orientation(labels, to_ras),
            zooms_ras)


def _resample(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum((np.arange(height) + 0.5) * panel.shape[0] / height, panel.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * panel.shape[1] / width, panel.shape[1] - 1).astype(int)
    return panel[rows[:, None], cols[None, :]]


def colourise(hu: np.ndarray, lab: np.ndarray, window: tuple[float, float] = WINDOW_HU) -> np.ndarray:
    """hu, lab: (H, W) -> (H, W, 3) uint8: the CT in grey through `window` (HU), labels blended in COLOURS."""
    lo, hi = window
    grey = (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = lab > 0
    if mask.any():
        idx = 1 + (lab[mask].astype(np.int64) - 1) % (len(COLOURS) - 1)
        rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * COLOURS[idx].astype(np.float32)
    return np.round(rgb).astype(np.uint8)


def _pick(lo: int, hi: int, fractions) -> list[int]:
    return sorted({int(round(lo + f * (hi - lo))) for f in fractions})


def render_preview(volume_hu: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """volume_hu, labels: (X, Y, Z) on the grid of `affine` -> (H, W, 3) uint8 RGB picture."""
    volume_hu, labels = np.asarray(volume_hu), np.asarray(labels)
    if volume_hu.shape != labels.shape or volume_hu.ndim != 3:
        raise ValueError(f"CT {volume_hu.shape} and labels {labels.shape} must be the same 3D shape")
    vol, lab, (sx, sy, sz) = _to_ras(volume_hu, labels, affine)
    nx, ny, nz = vol.shape
    mm_per_px = max(nx * sx, ny * sy) / PANEL_PX
    if lab.any():
        xs, ys, zs = (np.flatnonzero(lab.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3))
        zlo, zhi, ylo, yhi = zs[0], zs[-1], ys[0], ys[-1]
    else:
        zlo, zhi, ylo, yhi = 0, nz - 1, 0, ny - 1

    def panel_size(n_rows, row_mm, n_cols, col_mm):
        return (max(1, int(round(n_rows * row_mm / mm_per_px))), max(1, int(round(n_cols * col_mm / mm_per_px))))

    axial, coronal = [], []
    for z in _pick(zlo, zhi, (0.25, 0.5, 0.75)):
        # rows: anterior (high y) at the top; columns: patient's right (high x in RAS) on the left
        hu, lb = vol[::-1, ::-1, z].T, lab[::-1, ::-1, z].T
        h, w = panel_size(ny, sy, nx, sx)
        axial.append(colourise(_resample(hu, h, w), _resample(lb, h, w)))
    for y in _pick(ylo, yhi, (0.4, 0.6)):
        # rows: superior (high z) at the top; columns: patient's right on the left
        hu, lb = vol[::-1, y, ::-1].T, lab[::-1, y, ::-1].T
        h, w = panel_size(nz, sz, nx, sx)
        coronal.append(colourise(_resample(hu, h, w), _resample(lb, h, w)))
    return _tile([axial, coronal])


def _tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    rows = [r for r in rows if r]
    widths = [sum(p.shape[1] for p in r) + GAP_PX * (len(r) + 1) for r in rows]
    heights = [max(p.shape[0] for p in r) for r in rows]
    canvas = np.zeros((sum(heights) + GAP_PX * (len(rows) + 1), max(widths), 3), dtype=np.uint8)
    top = GAP_PX
    for r, h in zip(rows, heights):
        left = GAP_PX
        for p in r:
            canvas[top:top + p.shape[0], left:left + p.shape[1]] = p
            left += p.shape[1] + GAP_PX
        top += h + GAP_PX
    return canvas


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes: 8-bit truecolour, no interlace, filter 0 (None) on every row."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_preview(volume_hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
                  overwrite: bool = True) -> None:
    """Render the preview of `labels` over `volume_hu` (both (X, Y, Z) on `affine`'s grid) to a PNG file,
    written to a temporary name and published (overwrite=False: exclusively; see npunet.publish)."""
    png = encode_png(render_preview(volume_hu, labels, affine))

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(png)
    atomic_write(path, write, overwrite=overwrite)
