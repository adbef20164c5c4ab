"""The training loss: Dice + cross-entropy, with the marginal treatment of partial labels, so an organ a case
does not annotate is unknown there, never taught as background (see marginal_dice_ce_loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def marginal_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                          smooth: float = 1e-5, class_weight: torch.Tensor | None = None):
    """Dice + cross-entropy with the marginal treatment of partial labels. Returns (loss, dice, ce).

    logits: (N, C, H, W); target: (N, H, W) int labels; known: (N, C) bool, True for the classes sample n's
    case annotates (column 0, background, is always taken as True).

    Marginal loss (Shi et al. 2021, "Marginal loss and exclusion loss for partially supervised multi-organ
    segmentation"): in a case that labels only the organs A, a voxel labelled 0 means "background or some
    organ outside A". So the classes U = {0} + (organs not in A) are merged into one:
      - CE: for a voxel labelled 0 the log-probability is log sum_{k in U} p_k, computed stably as
        logsumexp over k in U of log_softmax(logits)_k; for a voxel of organ c in A it is log p_c as usual.
        The mean is over all voxels. With every organ annotated this is exactly F.cross_entropy.
        class_weight (C,), when given, weights each voxel's term by the weight of its label (a voxel labelled
        0, merged or not, by class_weight[0]) and divides by the sum of those weights, as
        F.cross_entropy(weight=class_weight) does; the Dice part is left as it is.
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
        nll = -torch.where(target_merged, logp_merged, logp_target)
    else:
        nll = -logp_target
    if class_weight is None:
        ce = nll.mean()
    else:
        if class_weight.shape != (c,):
            raise ValueError(f"class_weight has shape {tuple(class_weight.shape)}, expected ({c},)")
        voxel_weight = class_weight.to(device=logp.device, dtype=logp.dtype)[target]   # (N, H, W)
        ce = (voxel_weight * nll).sum() / voxel_weight.sum()

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
