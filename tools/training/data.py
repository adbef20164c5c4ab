"""The training slices: every axial slice of the chosen cases, preprocessed once into tensors (build_dataset).

What this module promises: the network sees exactly what npunet sees at inference. Every training slice is
made by npunet.preprocess.prepare_slices on npunet.preprocess.canonical(read_ct(...)), the functions
npunet.pipeline calls (tests/test_train.py checks the arrays are equal). The labels go through the same
canonical view and the same centred pad-to-square window, then a nearest-neighbour resize with half-pixel
centres: source index = floor((dst + 0.5) * side / size). Voxels of an organ a case does not annotate are
set to 0, which the marginal loss reads as "background or an unannotated organ".
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from npunet.io.nifti import read_ct
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, canonical_voxel_sizes, prepare_slices, square_window
from tools.training.description import annotated_organs, label_names, read_dataset_json


def resize_labels_nearest(slices: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W) integer labels -> (B, size, size): pad to square (centred, value 0, the same SquareWindow
    as the image), then nearest-neighbour resize with half-pixel centres, src = floor((dst + 0.5) * S / size)
    computed exactly in integers."""
    b, h, w = slices.shape
    win = square_window(h, w)
    square = np.zeros((b, win.side, win.side), dtype=slices.dtype)
    square[:, win.y0:win.y0 + h, win.x0:win.x0 + w] = slices
    idx = ((2 * np.arange(size) + 1) * win.side) // (2 * size)
    return square[:, idx[:, None], idx[None, :]]


def load_case(data_dir, case: str):
    """(image: float32 HU Nifti1Image as npunet reads it, labels: integer array on the same grid)."""
    data_dir = Path(data_dir)
    img = read_ct(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
    lab_img = nib.load(str(data_dir / "labelsTr" / f"{case}.nii.gz"))
    lab = np.asarray(lab_img.dataobj)
    if lab.ndim == 4 and lab.shape[3] == 1:
        lab = lab[..., 0]
    if lab.shape != img.shape:
        raise SystemExit(f"train: {case}: labels have shape {lab.shape}, image {img.shape}")
    if not np.allclose(lab_img.affine, img.affine, atol=1e-3):
        raise SystemExit(f"train: {case}: the label and image affines differ")
    if not np.issubdtype(lab.dtype, np.integer):
        rounded = np.rint(lab)
        if not np.array_equal(rounded, lab):
            raise SystemExit(f"train: {case}: label values are not integers")
        lab = rounded
    return img, lab.astype(np.int64)


def build_dataset(data_dir, cases, params: dict = DEFAULT_PREPROCESSING, unknown=None, num_classes: int = 14,
                  chunk: int = 16, verbose: bool = True) -> dict:
    """Every axial slice of `cases`, preprocessed once, as tensors (CPU):

        images   (N, 3, S, S) float32   prepare_slices output, exactly npunet's inference input
        labels   (N, S, S)    uint8     label slices through the same window, nearest resize
        context_labels (N, 3, S, S) uint8  the labels of each input channel's slice (z-1, z, z+1, clamped)
        known    (N, num_classes) bool  per slice: background and the organs its case annotates
        presence (N, num_classes) bool  per slice: the labels it shows (areas > 0)
        areas    (N, num_classes) int64 per slice: pixels of each label at network resolution (organ sampling)
        mm_per_pixel (N,) float32       in-plane size of one network pixel in mm (padded side x spacing / S),
                                        for the spacing-aware zoom
        case_index (N,) int64           index into `cases`
    plus "cases", "annotated" {case: [organ ids]}, "labels" {id: name}, "slices" {case: count}.
    Voxels of an organ the case does not annotate (e.g. marked --unknown) are set to 0 in `labels`: in the
    marginal loss 0 means "background or an unannotated organ", which is true of them.
    """
    meta = read_dataset_json(data_dir)
    names = label_names(meta)
    if max(names) >= num_classes:
        raise SystemExit(f"train: dataset.json has label {max(names)} but the network has {num_classes} classes")
    size = int(params["input_size"])
    images, labels, context, known, case_index, mm_per_pixel, annotated, counts = [], [], [], [], [], [], {}, {}
    ctx = int(params["context_slices"])
    for ci, case in enumerate(cases):
        t0 = time.perf_counter()
        img, lab = load_case(data_dir, case)
        organs = annotated_organs(case, meta, unknown)
        annotated[case] = organs
        bad = (lab < 0) | (lab >= num_classes)
        if bad.any():
            raise SystemExit(f"train: {case}: label values {np.unique(lab[bad])[:10]} outside 0..{num_classes - 1}")
        present = set(np.unique(lab).tolist()) - {0}
        dropped = sorted(present - set(organs))
        if dropped:
            lab = np.where(np.isin(lab, dropped), 0, lab)
            if verbose:
                print(f"  {case}: labels {dropped} are not annotated here; their voxels count as unknown")
        view = canonical(img.get_fdata(dtype=np.float32), img.affine, params["orientation"])
        lview = canonical(lab, img.affine, params["orientation"])
        nx, ny, nz = view.data.shape
        sx, sy, _ = canonical_voxel_sizes(img.affine, params["orientation"])
        mm_per_pixel.append(torch.full((nz,), square_window(nx, ny).side * math.sqrt(sx * sy) / size))
        case_labels = []
        for start in range(0, nz, chunk):
            zs = list(range(start, min(start + chunk, nz)))
            x, _ = prepare_slices(view.data, zs, params)
            images.append(torch.from_numpy(x))
            y = resize_labels_nearest(np.moveaxis(lview.data[:, :, zs], 2, 0), size)
            case_labels.append(torch.from_numpy(y.astype(np.uint8)))
        case_labels = torch.cat(case_labels)
        labels.append(case_labels)
        taps = (torch.arange(nz)[:, None] + torch.arange(-ctx, ctx + 1)[None, :]).clamp(0, nz - 1)
        context.append(case_labels[taps])
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[0] = True
        mask[organs] = True
        known.append(mask.expand(nz, num_classes))
        case_index.append(torch.full((nz,), ci, dtype=torch.int64))
        counts[case] = nz
        if verbose:
            print(f"  {case}: {nz} slices of {(nx, ny)}, {mm_per_pixel[-1][0]:.2f} mm per network pixel, "
                  f"organs {organs} ({time.perf_counter() - t0:.1f} s)")
    labels = torch.cat(labels)
    areas = organ_areas(labels, num_classes)
    return {
        "images": torch.cat(images), "labels": labels, "context_labels": torch.cat(context),
        "known": torch.cat(known).clone(),
        "case_index": torch.cat(case_index), "mm_per_pixel": torch.cat(mm_per_pixel).float(),
        "presence": areas > 0, "areas": areas, "cases": list(cases), "annotated": annotated,
        "label_names": names, "slices": counts,
    }


def organ_areas(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) label slices -> (N, num_classes) int64: pixels of each label per slice."""
    flat = labels.reshape(labels.shape[0], -1).long()
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.int64)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts

