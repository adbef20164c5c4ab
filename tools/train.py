"""Train an npunet network (default: the depthwise-separable ECA U-Net of Cheng et al., FLARE 2024 Task 2)
in PyTorch on a FLARE-layout folder, and write a checkpoint that tools/convert.py turns into npunet weights.

    python tools/train.py --unknown ts_abdomen:esophagus --holdout ts_abdomen --output runs/abdomen-out
    python tools/train.py --epochs 2 --cases ts_chest --device cpu --output /tmp/x      # a quick smoke run

What this file promises:
- The network sees exactly what npunet sees at inference: every training slice is made by
  npunet.preprocess.prepare_slices on npunet.preprocess.canonical(read_ct(...)), the functions
  npunet.pipeline calls (tests/test_train.py checks the arrays are equal). The labels go through the same
  canonical view and the same centred pad-to-square window, then a nearest-neighbour resize with
  half-pixel centres: source index = floor((dst + 0.5) * side / size).
- The recipe is the paper's: Dice + cross-entropy, AdamW lr 1e-3, cosine annealing over all steps, batch 8,
  100 epochs (an epoch is one pass over all training slices). Weight decay 1e-4 (the paper gives none;
  torch's AdamW default of 1e-2 is strong for a 0.4 M-parameter net on a few hundred slices).
- Partial labels are handled with the marginal loss (see marginal_dice_ce_loss): an organ a case does not
  annotate is unknown there, never taught as background.
- Augmentation runs in torch on the training device (see augment_batch); a left-right flip (--flip) always
  swaps the left/right organ labels with it, since organs are sided.
- The checkpoint is {"spec", "state_dict", "config", "cases", "labels", "preprocessing"}: only plain
  Python types and tensors, so torch.load(weights_only=True) reads it.

Data layout: DATA/imagesTr/CASE_0000.nii.gz, DATA/labelsTr/CASE.nii.gz and DATA/dataset.json with
{"labels": {"0": "background", ...}, "cases": {CASE: {"annotated": [label ids], ...}}}; a case that is not
listed, or has no "annotated" list, is fully annotated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npunet.io.nifti import read_ct, write_labels  # noqa: E402
from npunet.labels import mirror_labels  # noqa: E402
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, prepare_slices, square_window  # noqa: E402
from tools.torch_model import build_model, load_spec  # noqa: E402

__all__ = ["build_dataset", "marginal_dice_ce_loss", "augment_batch", "sample_augment_params",
           "identity_augment_params", "train", "predict_volume", "resize_labels_nearest", "main"]

AUGMENT_DEFAULTS = {
    "p_affine": 0.8,            # per sample: random scale and rotation (about the slice centre)
    "scale": [0.8, 1.2],        # zoom factor, uniform (> 1 enlarges the anatomy); unused with zoom_mm
    "zoom_mm": None,            # [lo, hi]: spacing-aware zoom, on every sample: each slice is zoomed so that
                                # one network pixel covers a size drawn log-uniformly in [lo, hi] mm, whatever
                                # the scan's own spacing and field of view (None: the plain "scale" range)
    "translate": 0.0,           # per sample: random shift, uniform in +-(translate + the margin a zoomed-out
                                # slice leaves), in units of the half-width
    "rotate_deg": 15.0,         # rotation angle, uniform in [-15, 15] degrees
    "p_elastic": 0.5,           # per sample: smooth random displacement field
    "elastic_grid": 5,          # control points per side of the coarse random grid
    "elastic_sigma": 0.03,      # std of a control point's displacement, normalised units (2 = image width)
    "p_intensity": 0.5,         # per sample: x * mult + shift on the normalised image
    "mult": [0.9, 1.1],
    "shift": 0.1,               # uniform in [-0.1, 0.1] (0.1 is 46 HU with the default window)
    "p_gamma": 0.3,             # per sample: contrast x ** gamma (on [0, 1])
    "gamma": [0.7, 1.5],        # log-uniform
    "p_flip": 0.0,              # per sample: left-right mirror, with the left/right organ labels swapped
    "organ_shift": 0.0,         # per sample and organ: add a uniform shift in +-organ_shift (normalised units)
                                # to the organ's voxels, as contrast phases move organs' HU apart (0: off)
}


# ------------------------------------------------------------------------------------------- data --

def default_data_dir() -> Path:
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


def annotated_organs(case: str, meta: dict, unknown: dict[str, list[int]] | None = None) -> list[int]:
    """The organ ids (no background) labelled in `case`: dataset.json's "annotated" list (all organs when
    absent), minus the ones made unknown by --unknown."""
    organs = [k for k in label_names(meta) if k != 0]
    entry = meta.get("cases", {}).get(case, {})
    ann = entry.get("annotated") if isinstance(entry, dict) else None
    ann = organs if ann is None else [int(k) for k in ann]
    drop = set((unknown or {}).get(case, []))
    return sorted(k for k in ann if k not in drop and k != 0)


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
        presence (N, num_classes) bool  per slice: the labels it shows (for organ-balanced sampling)
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
        sx, sy, _ = canonical_spacing(img.affine, params["orientation"])
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
    return {
        "images": torch.cat(images), "labels": labels, "context_labels": torch.cat(context),
        "known": torch.cat(known).clone(),
        "case_index": torch.cat(case_index), "mm_per_pixel": torch.cat(mm_per_pixel).float(),
        "presence": organ_presence(labels, num_classes), "cases": list(cases), "annotated": annotated,
        "label_names": names, "slices": counts,
    }


def canonical_spacing(affine: np.ndarray, orientation: str = "RAS") -> tuple[float, float, float]:
    """Voxel sizes in mm along the axes of canonical(volume, affine, orientation).data."""
    zooms = nib.affines.voxel_sizes(affine)
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(tuple(orientation)))
    out = [0.0, 0.0, 0.0]
    for axis, (new_axis, _) in enumerate(transform):
        out[int(new_axis)] = float(zooms[axis])
    return tuple(out)


def organ_presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) label slices -> (N, num_classes) bool: which labels each slice shows."""
    flat = labels.reshape(labels.shape[0], -1).long()
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.int64)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts > 0


# ------------------------------------------------------------------------------------------- loss --

def marginal_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                          smooth: float = 1e-5):
    """Dice + cross-entropy with the marginal treatment of partial labels. Returns (loss, dice, ce).

    logits: (N, C, H, W); target: (N, H, W) int labels; known: (N, C) bool, True for the classes sample n's
    case annotates (column 0, background, is always taken as True).

    Marginal loss (Shi et al. 2021, "Marginal loss and exclusion loss for partially supervised multi-organ
    segmentation"): in a case that labels only the organs A, a voxel labelled 0 means "background or some
    organ outside A". So the classes U = {0} + (organs not in A) are merged into one:
      - CE: for a voxel labelled 0 the log-probability is log sum_{k in U} p_k, computed stably as
        logsumexp over k in U of log_softmax(logits)_k; for a voxel of organ c in A it is log p_c as usual.
        The mean is over all voxels. With every organ annotated this is exactly F.cross_entropy.
      - Dice: soft Dice per organ class (background left out, as nnU-Net does), pooled over the batch
        ("batch Dice": sums of p*g, p and g over all pixels of the samples that annotate that class),
        dice_c = (2 sum p g + smooth) / (sum p + sum g + smooth), averaged over the classes that at least
        one sample annotates; dice part = 1 - that mean. Unannotated classes never enter it, so probability
        on an unknown organ costs nothing where the label says 0.
    loss = dice part + ce part.
    """
    n, c = logits.shape[:2]
    if target.shape != (n,) + tuple(logits.shape[2:]) or known.shape != (n, c):
        raise ValueError(f"logits {tuple(logits.shape)}, target {tuple(target.shape)}, known {tuple(known.shape)} "
                         f"do not fit together")
    target = target.long()
    known = known.to(device=logits.device, dtype=torch.bool).clone()
    known[:, 0] = True
    merged = ~known
    merged[:, 0] = True                                                     # (N, C): classes merged into 0
    logp = F.log_softmax(logits.float(), dim=1)                             # (N, C, H, W)
    logp_target = logp.gather(1, target[:, None]).squeeze(1)                # (N, H, W)
    if bool(merged[:, 1:].any()):                                           # some organ unknown somewhere
        logp_merged = torch.logsumexp(logp.masked_fill(~merged[:, :, None, None], float("-inf")), dim=1)
        target_merged = merged.gather(1, target.flatten(1)).view_as(target) # label 0 or an unknown organ
        ce = -torch.where(target_merged, logp_merged, logp_target).mean()
    else:
        ce = -logp_target.mean()

    # Per sample and class: sum of p over the pixels labelled with the class (p at the target, scattered by
    # label), of p over all pixels, and the pixel count; the same sums as with a one-hot target, 4x faster.
    flat = target.flatten(1)                                                # (N, H*W)
    tp_nc = logp.new_zeros((n, c)).scatter_add_(1, flat, logp_target.exp().flatten(1))
    g_nc = logp.new_zeros((n, c)).scatter_add_(1, flat, torch.ones_like(flat, dtype=logp.dtype))
    p_nc = logp.exp().sum((2, 3))                                           # (N, C)
    w = known[:, 1:].to(logp.dtype)                                         # (N, C-1) organs only
    tp = (tp_nc[:, 1:] * w).sum(0)                                          # (C-1,)
    psum = (p_nc[:, 1:] * w).sum(0)
    gsum = (g_nc[:, 1:] * w).sum(0)
    dice_c = (2 * tp + smooth) / (psum + gsum + smooth)
    valid = w.sum(0) > 0
    dice = 1 - dice_c[valid].mean() if bool(valid.any()) else logits.new_zeros(())
    return dice + ce, dice, ce


# ----------------------------------------------------------------------------------- augmentation --

def identity_augment_params(n: int, device="cpu", cfg: dict = AUGMENT_DEFAULTS) -> dict:
    """Parameters under which augment_batch returns its input (up to bilinear rounding, ~1e-6)."""
    g = int(cfg["elastic_grid"])
    one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
    return {"scale": one, "angle": zero, "translate": torch.zeros(n, 2, device=device),
            "elastic": torch.zeros(n, 2, g, g, device=device), "mult": one, "shift": zero, "gamma": one}


def sample_augment_params(n: int, generator: torch.Generator | None = None, device="cpu",
                          cfg: dict = AUGMENT_DEFAULTS, mm_per_pixel: torch.Tensor | None = None,
                          num_classes: int = 14) -> dict:
    """Random per-sample parameters; a sample skips a transform (gets its identity value) with 1 - p.
    mm_per_pixel (n,): each sample's own pixel size, needed by the spacing-aware zoom (cfg["zoom_mm"]).
    With cfg["p_flip"] > 0 also "flip" (n,) bool; with cfg["organ_shift"] > 0 "organ_shift" (n, num_classes),
    the value added to each label's voxels (0 for background)."""
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    def keep(p):
        return torch.rand(n, generator=generator, device=device) < p

    ident = identity_augment_params(n, device, cfg)
    aff = keep(cfg["p_affine"])
    ela = keep(cfg["p_elastic"])
    inten = keep(cfg["p_intensity"])
    gam = keep(cfg["p_gamma"])
    g = int(cfg["elastic_grid"])
    field = cfg["elastic_sigma"] * torch.randn(n, 2, g, g, generator=generator, device=device)
    lo, hi = cfg["gamma"]
    if cfg.get("zoom_mm"):
        if mm_per_pixel is None or mm_per_pixel.shape != (n,):
            raise ValueError(f"the spacing-aware zoom needs mm_per_pixel of shape ({n},)")
        target = torch.exp(u(*(math.log(v) for v in cfg["zoom_mm"])))        # mm per network pixel
        scale = mm_per_pixel.to(device=device, dtype=target.dtype) / target
    else:
        scale = torch.where(aff, u(*cfg["scale"]), ident["scale"])
    reach = float(cfg.get("translate", 0.0)) + (1.0 - scale).clamp(min=0.0)
    translate = (2 * torch.rand(n, 2, generator=generator, device=device) - 1) * reach[:, None]
    extra = {}                      # drawn only when asked for, so older recipes keep their random streams
    if cfg.get("p_flip", 0.0) > 0:
        extra["flip"] = keep(cfg["p_flip"])
    if cfg.get("organ_shift", 0.0) > 0:
        extra["organ_shift"] = (2 * torch.rand(n, num_classes, generator=generator, device=device) - 1) \
            * cfg["organ_shift"]
        extra["organ_shift"][:, 0] = 0.0                                    # background keeps its values
    return extra | {
        "scale": scale,
        "angle": torch.where(aff, u(-1.0, 1.0) * math.radians(cfg["rotate_deg"]), ident["angle"]),
        "translate": translate,
        "elastic": field * ela[:, None, None, None],
        "mult": torch.where(inten, u(*cfg["mult"]), ident["mult"]),
        "shift": torch.where(inten, u(-cfg["shift"], cfg["shift"]), ident["shift"]),
        "gamma": torch.where(gam, torch.exp(u(math.log(lo), math.log(hi))), ident["gamma"]),
    }


def augment_batch(x: torch.Tensor, y: torch.Tensor, params: dict | None = None,
                  generator: torch.Generator | None = None, cfg: dict = AUGMENT_DEFAULTS,
                  mm_per_pixel: torch.Tensor | None = None, y_context: torch.Tensor | None = None,
                  mirror: torch.Tensor | None = None):
    """x: (N, 3, H, W) float normalised image in [0, 1]; y: (N, H, W) int labels -> augmented (x, y), same
    shapes and dtypes, on x's device. params: from sample_augment_params (drawn here when None).
    y_context (N, 3, H, W): the labels of x's three slices, needed by the organ shift; mirror (C,): the label
    each label becomes in a mirror image (npunet.labels.mirror_labels), needed by the flip.

    Spatial: one sampling grid per sample = affine (zoom by `scale` about the centre, rotate by `angle`,
    then shift the result by `translate`, in units of the half-width) plus an elastic displacement (the coarse (g x g) random field upsampled bicubically to H x W), applied
    by F.grid_sample (align_corners=False, zero padding: 0 is air in the image and background in the
    labels) with mode bilinear for the image and nearest for the labels, so label values stay in the set.
    Intensity, on the normalised image: first (params "organ_shift") each labelled organ's voxels moved by
    their own value, as contrast phases move organs apart (kidney cortex, spleen and liver enhance at
    different times); then x -> x ** gamma (contrast), then x * mult + shift.
    Left-right mirror (params "flip"), last: axis H of the canonical slice runs across the body (RAS), so
    the flipped slice is a mirrored body, and its labels are mirrored too (right kidney <-> left kidney,
    right <-> left adrenal), keeping "right" on the patient's right of the image.
    """
    n, _, h, w = x.shape
    if params is None:
        params = sample_augment_params(n, generator, x.device, cfg, mm_per_pixel)
    if "organ_shift" in params:
        if y_context is None or y_context.shape != x.shape:
            raise ValueError(f"the organ shift needs y_context of shape {tuple(x.shape)}")
        shift = params["organ_shift"].to(x.dtype)                                              # (N, C)
        x = x + shift.gather(1, y_context.flatten(1).long()).view_as(x)
    cos, sin = torch.cos(params["angle"]), torch.sin(params["angle"])
    inv = 1.0 / params["scale"]
    rot = torch.stack([torch.stack([cos * inv, -sin * inv], 1), torch.stack([sin * inv, cos * inv], 1)], 1)
    # grid_sample reads the input at rot @ p + t for output point p; content moves by d when t = -rot @ d
    t = -(rot @ params["translate"].to(rot.dtype)[:, :, None])
    theta = torch.cat([rot, t], 2)                                                              # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [n, 1, h, w], align_corners=False)                # (N, H, W, 2)
    field = params["elastic"]
    if bool((field != 0).any()):
        disp = F.interpolate(field.to(x.dtype), size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + disp.permute(0, 2, 3, 1)
    xa = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ya = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    ya = ya[:, 0].round().to(y.dtype)
    xa = xa.clamp(0.0, 1.0).pow(params["gamma"].to(x.dtype)[:, None, None, None])
    xa = xa * params["mult"].to(x.dtype)[:, None, None, None] + params["shift"].to(x.dtype)[:, None, None, None]
    if "flip" in params and bool(params["flip"].any()):
        if mirror is None:
            raise ValueError("the left-right flip needs the mirror table of the labels")
        f = params["flip"]
        xa = torch.where(f[:, None, None, None], xa.flip(-2), xa)
        ya = torch.where(f[:, None, None], mirror.to(ya.device)[ya.flip(-2).long()].to(ya.dtype), ya)
    return xa, ya


# ------------------------------------------------------------------------------------------ train --

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class UniformSampler:
    """Batches of slice indices: consecutive random permutations of range(n), cut in batches (every slice
    once per pass). Its whole state is the generator's and the unused rest of the current permutation."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.int64)

    def next_batch(self) -> torch.Tensor:
        while len(self.buffer) < self.batch_size:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.generator)])
        batch, self.buffer = self.buffer[:self.batch_size], self.buffer[self.batch_size:]
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = state["buffer"].clone()


class OrganSampler:
    """Organ-balanced batches: each sample is, with probability p_organ, a slice that shows an organ drawn
    uniformly from the organs the training slices show (so the adrenals, on a few percent of the slices,
    come as often as the liver), otherwise a uniformly random slice (background-only slices included).

    presence: (N, C) bool from organ_presence (column 0, background, is ignored)."""

    def __init__(self, presence: torch.Tensor, batch_size: int, seed: int, p_organ: float = 0.5):
        self.n, self.batch_size, self.p_organ = presence.shape[0], batch_size, float(p_organ)
        self.slices_of = [torch.nonzero(presence[:, k]).flatten() for k in range(1, presence.shape[1])
                          if bool(presence[:, k].any())]
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> torch.Tensor:
        g = self.generator
        out = torch.randint(self.n, (self.batch_size,), generator=g)
        by_organ = torch.rand(self.batch_size, generator=g) < self.p_organ
        organs = torch.randint(max(1, len(self.slices_of)), (self.batch_size,), generator=g)
        picks = torch.rand(self.batch_size, generator=g)
        for i in torch.nonzero(by_organ & (len(self.slices_of) > 0)).flatten().tolist():
            members = self.slices_of[int(organs[i])]
            out[i] = members[min(int(picks[i] * len(members)), len(members) - 1)]
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


SAMPLERS = ("uniform", "organs")
PRECISIONS = ("fp32", "bf16")


class Trainer:
    """A fresh build_model(spec) trained on `dataset` (from build_dataset), one step at a time, with every
    piece of state a resumed run needs in state_dict(): model, AdamW, the cosine schedule, the sampler's and
    the augmentation's random streams, torch's global stream, the step count and the running sums. A run
    stopped after any step and resumed from state_dict() does, on the CPU with the same thread count, exactly
    what the uninterrupted run does (tests/test_train.py checks the final weights are equal).

    The recipe: AdamW (lr, weight_decay), lr cosine-annealed per step from lr to 0 over
    epochs * steps_per_epoch steps; steps_per_epoch defaults to ceil(N / batch_size) (an epoch is then one
    pass over the N slices; it is only the logging unit when the sampler is "organs"); each batch drawn by
    the sampler, augmented (augment_batch with augment_cfg) and scored by marginal_dice_ce_loss.
    """

    def __init__(self, dataset: dict, spec: dict, *, epochs: int = 100, batch_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 1e-4, steps_per_epoch: int | None = None, augment: bool = True,
                 augment_cfg: dict = AUGMENT_DEFAULTS, sampling: str = "uniform", p_organ: float = 0.5,
                 device="cpu", seed: int = 0, precision: str = "fp32"):
        if sampling not in SAMPLERS:
            raise ValueError(f"sampling {sampling!r} is not one of {SAMPLERS}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        seed_everything(seed)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True    # fixed shapes: let cuDNN pick the fastest kernels
        self.model = build_model(spec).to(self.device)
        self.images = dataset["images"].to(self.device)
        self.labels = dataset["labels"].to(self.device)
        self.context_labels = (dataset["context_labels"].to(self.device)
                               if augment and augment_cfg.get("organ_shift", 0.0) > 0 else None)
        self.mirror = torch.tensor(mirror_labels(dataset["label_names"]), device=self.device)
        self.num_classes = int(spec["num_classes"])
        self.precision = precision
        self.known = dataset["known"].to(self.device)
        self.mm_per_pixel = dataset.get("mm_per_pixel")
        n = self.images.shape[0]
        if n == 0:
            raise ValueError("the dataset has no slices")
        self.augment, self.augment_cfg = augment, augment_cfg
        self.steps_per_epoch = steps_per_epoch or math.ceil(n / batch_size)
        self.epochs = epochs
        self.total_steps = epochs * self.steps_per_epoch
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, self.total_steps))
        self.sampler = (UniformSampler(n, batch_size, seed) if sampling == "uniform"
                        else OrganSampler(dataset["presence"], batch_size, seed, p_organ))
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.history: list[dict] = []
        self.sums = torch.zeros(3, dtype=torch.float64)      # loss, dice, ce over the current epoch's steps
        self.epoch_seconds = 0.0

    def train_step(self) -> float:
        """One batch: sample, augment, forward, loss, backward, AdamW step, lr step. Returns the loss."""
        t0 = time.perf_counter()
        self.model.train()
        idx = self.sampler.next_batch().to(self.device)
        x, y, k = self.images[idx], self.labels[idx].long(), self.known[idx]
        if self.augment:
            mm = self.mm_per_pixel[idx.cpu()] if self.mm_per_pixel is not None else None
            params = sample_augment_params(len(idx), self.aug_gen, self.device, self.augment_cfg, mm,
                                           self.num_classes)
            yc = self.context_labels[idx] if self.context_labels is not None else None
            x, y = augment_batch(x, y, params, cfg=self.augment_cfg, y_context=yc, mirror=self.mirror)
            if "flip" in params:                # a mirrored slice annotates the mirrored organs
                k = torch.where(params["flip"][:, None], k[:, self.mirror], k)
        if self.precision == "bf16":            # autocast: convs in bfloat16, weights and loss in float32
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.model(x)
        else:
            logits = self.model(x)
        loss, dice, ce = marginal_dice_ce_loss(logits, y, k)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.sums += torch.stack([loss.detach(), dice.detach(), ce.detach()]).double().cpu()
        self.epoch_seconds += time.perf_counter() - t0
        if self.step % self.steps_per_epoch == 0:
            means = (self.sums / self.steps_per_epoch).tolist()
            self.history.append({"epoch": self.step // self.steps_per_epoch, "steps": self.steps_per_epoch,
                                 "loss": round(means[0], 6), "dice": round(means[1], 6), "ce": round(means[2], 6),
                                 "lr": float(self.sched.get_last_lr()[0]), "seconds": round(self.epoch_seconds, 3)})
            self.sums.zero_()
            self.epoch_seconds = 0.0
        return loss.item()

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "sampler": self.sampler.state_dict(),
                "augment_generator": self.aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": list(self.history), "sums": self.sums.clone(), "epoch_seconds": self.epoch_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.aug_gen.set_state(state["augment_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.sums = state["sums"].clone()
        self.epoch_seconds = float(state["epoch_seconds"])


def train(dataset: dict, spec: dict, *, on_epoch=None, **recipe):
    """Train to the end in one go (see Trainer for the recipe arguments). Returns (model, history);
    on_epoch(record, model) is called after every epoch with the record {"epoch", "steps", "loss", "dice",
    "ce", "lr", "seconds"} (means over the epoch's steps; lr after its last step)."""
    trainer = Trainer(dataset, spec, **recipe)
    while not trainer.done:
        trainer.train_step()
        if on_epoch is not None and trainer.step % trainer.steps_per_epoch == 0:
            on_epoch(trainer.history[-1], trainer.model)
    return trainer.model, trainer.history


class Progress:
    """A one-line progress bar on stderr (step, epoch, loss, speed, ETA), redrawn in place on a terminal and
    printed as a plain line every `every` seconds otherwise (a log file stays readable)."""

    def __init__(self, total: int, start: int, steps_per_epoch: int, stream=None, every: float = 60.0):
        self.total, self.start, self.steps_per_epoch = total, start, steps_per_epoch
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if not self.tty else 0.5
        self.t0 = self.last = time.perf_counter()
        self.recent: list[float] = []

    def update(self, step: int, loss: float) -> None:
        self.recent = (self.recent + [loss])[-50:]
        now = time.perf_counter()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        rate = (now - self.t0) / max(1, step - self.start)                  # seconds per step in this run
        eta = rate * (self.total - step)
        width = 24
        filled = int(width * step / self.total)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
                f"epoch {math.ceil(step / self.steps_per_epoch)}/{math.ceil(self.total / self.steps_per_epoch)} "
                f"loss {sum(self.recent) / len(self.recent):.4f} {rate:.2f} s/step "
                f"ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


# ---------------------------------------------------------------------------------------- predict --

@torch.no_grad()
def predict_volume(model, volume_hu: np.ndarray, affine: np.ndarray, params: dict = DEFAULT_PREPROCESSING,
                   device="cpu", batch_size: int = 8, closing: bool = True) -> np.ndarray:
    """(X, Y, Z) HU volume -> uint8 labels in the input's own array order, with the torch model.

    Per batch of axial slices: prepare_slices (npunet's preprocessing), the network, bilinear upsampling of
    the logits to the padded square (F.interpolate, align_corners=False), crop, argmax; then view.back()
    and, when `closing` and params["closing_radius"] > 0, npunet.postprocess.close_labels.
    """
    model.eval()
    device = torch.device(device)
    view = canonical(volume_hu, affine, params["orientation"])
    nx, ny, nz = view.data.shape
    out = np.empty((nz, nx, ny), dtype=np.uint8)
    for start in range(0, nz, batch_size):
        zs = list(range(start, min(start + batch_size, nz)))
        x, win = prepare_slices(view.data, zs, params)
        logits = model(torch.from_numpy(x).to(device))
        if logits.shape[-1] != win.side or logits.shape[-2] != win.side:
            logits = F.interpolate(logits, size=(win.side, win.side), mode="bilinear", align_corners=False)
        crop = logits[:, :, win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
        out[zs] = crop.argmax(1).to(torch.uint8).cpu().numpy()
    labels = np.ascontiguousarray(view.back(out.transpose(1, 2, 0)))
    radius = int(params.get("closing_radius", 0))
    if closing and radius > 0:
        from npunet.postprocess import close_labels
        labels = close_labels(labels, radius=radius)
    return labels


def dice_per_organ(pred: np.ndarray, gt: np.ndarray, organs) -> dict[int, float]:
    """{organ: Dice} (both empty -> 1.0, one empty -> 0.0): a quick check, not the official FLARE metric."""
    out = {}
    for k in organs:
        p, g = pred == k, gt == k
        s = int(p.sum()) + int(g.sum())
        out[k] = 1.0 if s == 0 else 2.0 * int((p & g).sum()) / s
    return out


# ------------------------------------------------------------------------------------------- main --

def _save_checkpoint(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_steps(text) -> set[int]:
    """'2000,5000' -> {2000, 5000} (None or '' -> empty)."""
    try:
        steps = {int(t) for t in str(text or "").split(",") if t.strip()}
    except ValueError:
        raise SystemExit(f"train: --keep-steps {text!r} must be comma-separated step numbers") from None
    if any(s < 1 for s in steps):
        raise SystemExit(f"train: --keep-steps {text!r}: steps start at 1")
    return steps


def _plain(v):
    """args values as plain JSON-able / weights_only-loadable Python types."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


# The options that define what is trained; a resumed run takes them from its checkpoint.
RECIPE_OPTIONS = ("data", "cases", "holdout", "unknown", "spec", "epochs", "steps_per_epoch", "batch_size", "lr",
                  "weight_decay", "no_augment", "scale", "zoom_mm", "translate", "sampling", "p_organ", "seed",
                  "flip", "organ_shift_hu", "precision")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/train.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The shipped recipe (weights/MODEL_CARD.md) on every case of the data folder:\n"
               "  python tools/train.py --output runs/all8\n"
               "Stop it at any time (Ctrl-C, or SIGTERM): it checkpoints and says how to go on. Resume with:\n"
               "  python tools/train.py --resume runs/all8\n"
               "Then: python tools/convert.py runs/all8/checkpoint.pt -o weights/dsconv_eca_unet.npuw")
    d = p.add_argument_group("data")
    d.add_argument("--data", type=Path, default=default_data_dir(), metavar="DIR",
                   help="FLARE-layout folder with imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz and "
                        "dataset.json (default: $NPUNET_DATA, else ../shared/data beside the repository; "
                        "now %(default)s)")
    d.add_argument("--cases", default=None, metavar="CASE[,CASE...]",
                   help="comma-separated cases to train on (default: every case with an image and a label)")
    d.add_argument("--holdout", default=None, metavar="CASE",
                   help="leave CASE out of training; afterwards segment it with the trained model (npunet's "
                        "preprocessing, bilinear logit upsampling, argmax, closing) and write "
                        "OUTPUT/pred/CASE.nii.gz plus a quick per-organ Dice against its label "
                        "(tools/cv.py scores held-out cases with npunet segment + npunet evaluate instead)")
    d.add_argument("--unknown", action="append", default=[], metavar="CASE:LABEL[,LABEL...]",
                   help="mark organs (by number or name) as unknown in CASE, on top of dataset.json's "
                        "'annotated' lists: the marginal loss then never teaches them as background there. "
                        "Repeatable. Example: --unknown ts_abdomen:esophagus")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--spec", default="dsconv_eca_unet", metavar="NAME|JSON",
                   help="architecture: a built-in spec name or a spec JSON file (default: %(default)s)")
    m.add_argument("--epochs", type=int, default=100, metavar="N",
                   help="epochs; one epoch is one pass over all training slices, or --steps-per-epoch "
                        "batches (default: %(default)s)")
    m.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="batches per epoch instead of ceil(slices / batch size): fixes the number of steps "
                        "whatever the number of slices (cross-validation folds)")
    m.add_argument("--batch-size", type=int, default=8, metavar="N", help="slices per batch (default: %(default)s)")
    m.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW peak learning rate, cosine-annealed to 0 over all steps (default: %(default)s)")
    m.add_argument("--weight-decay", type=float, default=1e-4, metavar="WD", help="AdamW weight decay (default: %(default)s)")
    m.add_argument("--sampling", choices=SAMPLERS, default="uniform",
                   help="uniform: every slice once per epoch; organs: with probability --p-organ a slice "
                        "showing an organ drawn uniformly from the organs, else a random slice "
                        "(default: %(default)s)")
    m.add_argument("--p-organ", type=float, default=0.5, metavar="P",
                   help="share of organ-drawn samples with --sampling organs (default: %(default)s)")
    m.add_argument("--no-augment", action="store_true",
                   help="train without augmentation (default: random scale 0.8-1.2, rotation +-15 deg, "
                        "elastic, intensity shift/scale and gamma; a left-right flip only with --flip)")
    m.add_argument("--scale", type=float, nargs=2, default=AUGMENT_DEFAULTS["scale"], metavar=("LO", "HI"),
                   help="range of the random zoom factor, whatever the scan's spacing (default: %(default)s); "
                        "replaced by --zoom-mm when that is given")
    m.add_argument("--zoom-mm", type=float, nargs=2, default=AUGMENT_DEFAULTS["zoom_mm"], metavar=("LO", "HI"),
                   help="spacing-aware zoom: every sample is zoomed so that one network pixel covers LO..HI mm "
                        "(log-uniform), so a 0.57 mm and a 3 mm scan both show organs at realistic sizes "
                        "(default: off)")
    m.add_argument("--translate", type=float, default=AUGMENT_DEFAULTS["translate"], metavar="T",
                   help="random shift of up to T half-widths, plus the margin a zoomed-out slice leaves "
                        "(default: %(default)s)")
    m.add_argument("--flip", type=float, default=AUGMENT_DEFAULTS["p_flip"], metavar="P",
                   help="left-right mirror each sample with probability P, the left/right organ labels swapped "
                        "with it (kidneys, adrenal glands), so a right kidney stays on the patient's right "
                        "(default: %(default)s, never)")
    m.add_argument("--organ-shift-hu", type=float, default=0.0, metavar="HU",
                   help="per sample, move each labelled organ's voxels by its own uniform shift in +-HU, as "
                        "contrast phases move organs' HU apart (default: %(default)s, off)")
    m.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the forward under torch.autocast in bfloat16 (weights, optimiser and loss stay "
                        "float32): 1.4x faster steps on CPUs with native bfloat16 (AVX512-BF16 or AMX), slower "
                        "elsewhere (default: %(default)s)")
    m.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for python, numpy and torch (init, batch order, augmentation) (default: %(default)s)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device: cpu, cuda or cuda:N (default: cuda if available, else cpu; now %(default)s)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads for CPU work (default: torch's choice). A resumed run equals an "
                        "uninterrupted one when both use the same device and thread count")
    r.add_argument("--output", type=Path, default=None, metavar="DIR",
                   help="output folder for checkpoint.pt, log.jsonl and pred/ (default: runs/<timestamp> in "
                        "the repository)")
    r.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="go on with the run in DIR from its checkpoint.pt, with the recipe stored there "
                        "(recipe options given again must agree with it)")
    r.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="MIN",
                   help="write checkpoint.pt at least every MIN minutes, at every epoch's end and at exit "
                        "(default: %(default)s)")
    r.add_argument("--keep-steps", default=None, metavar="N[,N...]",
                   help="also keep the checkpoint of these steps as checkpoint_stepN.pt (a learning curve from "
                        "one run: tools/cv.py --curve scores each)")
    r.add_argument("--run-steps", type=int, default=None, metavar="N",
                   help="stop after N steps in this run (checkpointed; --resume goes on): train in slices")
    return p


class StopRequest:
    """SIGINT / SIGTERM while training: remember the signal and let the current step finish, so the run
    can checkpoint and exit cleanly (128 + signal number, the shell's convention)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; with --resume, the recipe comes from the checkpoint (what is given again must agree)."""
    args = build_parser().parse_args(argv)
    if args.resume is None:
        return args
    path = Path(args.resume) / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"train: --resume {args.resume}: no checkpoint.pt there")
    saved_config = torch.load(path, map_location="cpu", weights_only=True)["config"]
    saved = saved_config.get("recipe")
    explicit_defaults = {a.dest: a.default for a in build_parser()._actions}   # for options newer than the run
    if saved is None:
        raise SystemExit(f"train: {path} holds no recipe to resume (written by an older train.py)")
    explicit = build_parser()                               # the same options, without defaults: what was given
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    given = vars(explicit.parse_args(argv))
    for key in RECIPE_OPTIONS:
        if key in given and _plain(given[key]) != saved.get(key):
            raise SystemExit(f"train: --{key.replace('_', '-')} {_plain(given[key])!r} differs from the resumed "
                             f"run's {saved.get(key)!r}; leave it out to resume")
        default = explicit_defaults.get(key)
        setattr(args, key, Path(saved[key]) if key == "data" else saved.get(key, default))
    if "keep_steps" not in given:
        args.keep_steps = saved_config.get("keep_steps")
    args.output = Path(args.resume)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 1 or args.batch_size < 1 or (args.steps_per_epoch is not None and args.steps_per_epoch < 1):
        raise SystemExit("train: --epochs, --batch-size and --steps-per-epoch must be >= 1")
    if args.run_steps is not None and args.run_steps < 1:
        raise SystemExit("train: --run-steps must be >= 1")
    keep_steps = parse_steps(args.keep_steps)
    if not 0.0 <= args.flip <= 1.0:
        raise SystemExit(f"train: --flip {args.flip} is not in [0, 1]")
    if args.organ_shift_hu < 0:
        raise SystemExit(f"train: --organ-shift-hu {args.organ_shift_hu} must be >= 0")
    if not 0.0 <= args.p_organ <= 1.0:
        raise SystemExit(f"train: --p-organ {args.p_organ} is not in [0, 1]")
    if args.zoom_mm is not None and not 0 < args.zoom_mm[0] <= args.zoom_mm[1]:
        raise SystemExit(f"train: --zoom-mm {args.zoom_mm} must be 0 < LO <= HI")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("train: --device cuda but torch sees no CUDA device; use --device cpu")
    meta = read_dataset_json(args.data)
    names = label_names(meta)
    available = list_cases(args.data)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else list(available)
    missing = [c for c in cases + ([args.holdout] if args.holdout else []) if c not in available]
    if missing:
        raise SystemExit(f"train: no image+label for {missing} in {args.data}; cases there: {available}")
    if args.holdout:
        cases = [c for c in cases if c != args.holdout]
    if not cases:
        raise SystemExit("train: no training cases left")
    unknown = parse_unknown(args.unknown, names)
    spec = load_spec(args.spec)
    params = dict(DEFAULT_PREPROCESSING)
    out_dir = args.output or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    if args.resume is None and ckpt_path.exists():
        raise SystemExit(f"train: {ckpt_path} exists; resume it with --resume {out_dir}, or choose another --output")

    print(f"train: cases {cases} from {args.data}" + (f", holdout {args.holdout}" if args.holdout else ""))
    dataset = build_dataset(args.data, cases, params, unknown, num_classes=spec["num_classes"])
    n = dataset["images"].shape[0]
    augment_cfg = {**AUGMENT_DEFAULTS, "scale": list(args.scale), "translate": float(args.translate),
                   "zoom_mm": list(args.zoom_mm) if args.zoom_mm is not None else None,
                   "p_flip": float(args.flip),
                   "organ_shift": float(args.organ_shift_hu) / float(params["hu_max"] - params["hu_min"])}
    trainer = Trainer(dataset, spec, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, steps_per_epoch=args.steps_per_epoch,
                      augment=not args.no_augment, augment_cfg=augment_cfg, sampling=args.sampling,
                      p_organ=args.p_organ, device=args.device, seed=args.seed, precision=args.precision)
    config = {**{k: _plain(v) for k, v in vars(args).items() if k not in ("resume", "output")},
              "recipe": {k: _plain(getattr(args, k)) for k in RECIPE_OPTIONS}, "output": str(out_dir), "spec_name": spec.get("name"), "num_slices": n,
              "slices_per_case": dataset["slices"], "annotated": {c: v for c, v in dataset["annotated"].items()},
              "unknown": unknown, "steps_per_epoch": trainer.steps_per_epoch, "total_steps": trainer.total_steps,
              "optimizer": "AdamW", "schedule": "cosine annealing per step to 0",
              "loss": "marginal CE + batch soft Dice over annotated organs (background excluded)",
              "augmentation": augment_cfg if not args.no_augment else None,
              "torch_version": str(torch.__version__), "epochs_done": 0, "train_seconds": 0.0}
    if args.resume is not None:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if saved.get("train_state") is None:
            raise SystemExit(f"train: {ckpt_path} holds no training state (written by an older train.py)")
        trainer.load_state_dict(saved["train_state"])
        config.update({k: saved["config"][k] for k in ("epochs_done", "train_seconds", "torch_version")
                       if k in saved["config"]})
        print(f"train: resuming {out_dir} at step {trainer.step} of {trainer.total_steps}")
    else:
        log_path.write_text("")
    print(f"train: {n} slices, {trainer.steps_per_epoch} steps/epoch x {args.epochs} epochs, batch "
          f"{args.batch_size}, sampling {args.sampling}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}; output {out_dir}")

    seconds_before = float(config["train_seconds"])
    t_start = time.perf_counter()

    def checkpoint():
        config["epochs_done"] = trainer.step // trainer.steps_per_epoch
        config["train_seconds"] = round(seconds_before + time.perf_counter() - t_start, 1)
        _save_checkpoint(ckpt_path, {
            "spec": spec, "state_dict": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
            "config": config, "cases": list(cases), "labels": dict(names), "preprocessing": params,
            "train_state": trainer.state_dict(), "complete": trainer.done})

    progress = Progress(trainer.total_steps, trainer.step, trainer.steps_per_epoch)
    last_saved, steps_this_run = time.perf_counter(), 0
    with StopRequest() as stop:
        while not trainer.done and stop.signum is None:
            loss = trainer.train_step()
            steps_this_run += 1
            progress.update(trainer.step, loss)
            end_of_epoch = trainer.step % trainer.steps_per_epoch == 0
            if end_of_epoch:
                line = json.dumps(trainer.history[-1])
                with log_path.open("a") as f:
                    f.write(line + "\n")
            if end_of_epoch or time.perf_counter() - last_saved > 60 * args.checkpoint_minutes \
                    or trainer.step in keep_steps:
                checkpoint()
                last_saved = time.perf_counter()
            if trainer.step in keep_steps:
                shutil.copyfile(ckpt_path, out_dir / f"checkpoint_step{trainer.step}.pt")
            if args.run_steps is not None and steps_this_run >= args.run_steps:
                break
        progress.close()
        checkpoint()
    if not trainer.done:
        why = f"stopped by signal {stop.signum}" if stop.signum else f"stopped after --run-steps {args.run_steps}"
        print(f"train: {why} at step {trainer.step} of {trainer.total_steps}; checkpoint written. Go on with:\n"
              f"  python tools/train.py --resume {out_dir}", file=sys.stderr)
        return 128 + stop.signum if stop.signum else 0
    print(f"train: wrote {ckpt_path} ({config['train_seconds']:.1f} s of training in all)")

    if args.holdout:
        case = args.holdout
        t0 = time.perf_counter()
        img, gt = load_case(args.data, case)
        pred = predict_volume(trainer.model, img.get_fdata(dtype=np.float32), img.affine, params, args.device)
        path = write_labels(pred, img, out_dir / "pred" / f"{case}.nii.gz", overwrite=True, label_names=names)
        organs = annotated_organs(case, meta, unknown)
        scores = dice_per_organ(pred, gt, organs)
        print(f"holdout {case}: wrote {path} ({time.perf_counter() - t0:.1f} s); quick Dice per annotated organ:")
        for k, v in scores.items():
            print(f"  {k:2d} {names.get(k, '?'):22s} {v:.4f}" + ("   (absent in label and prediction)"
                                                              if not (gt == k).any() and not (pred == k).any()
                                                              else ""))
        print(f"  mean {np.mean(list(scores.values())):.4f}")
        (out_dir / "pred" / f"{case}.dice.json").write_text(
            json.dumps({names.get(k, str(k)): round(v, 4) for k, v in scores.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
