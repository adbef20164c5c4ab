"""Random augmentation of a training batch, in torch on the training device: zoom (plain or spacing-aware),
rotation, shift, elastic displacement, a per-organ HU shift, gamma, intensity scale and shift, and a
left-right flip that always swaps the left/right organ labels with it, since organs are sided.

sample_augment_params draws the per-sample parameters (from one generator, in a fixed order: a recipe
without --flip or --organ-shift-hu draws exactly the random numbers it drew before those existed);
augment_batch applies them to images and labels alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
