"""A whole CT segmented by the torch model in training, and a quick per-organ Dice: `--holdout CASE` of
python -m tools.train. Not the official score: tools/cv.py converts the checkpoint and scores held-out
cases with `npunet segment` and `npunet evaluate`, as a user would.

predict_volume runs npunet.pipeline.segment_array, the one slice-batch loop, with npunet's own
preprocessing (the very input the network was trained on) and the torch network and upsampling
(tools/torch_pipeline.py's TorchNetwork and torch_logits_to_labels).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from npunet.io.nifti import write_labels
from npunet.pipeline import segment_array
from npunet.preprocess import DEFAULT_PREPROCESSING
from tools.torch_pipeline import TorchNetwork, torch_logits_to_labels
from tools.training.data import load_case


def predict_volume(model, volume_hu: np.ndarray, affine: np.ndarray, params: dict = DEFAULT_PREPROCESSING,
                   device="cpu", batch_size: int = 8, closing: bool = True) -> np.ndarray:
    """(X, Y, Z) HU volume -> uint8 labels in the input's own array order, with the torch model (left in
    eval mode).

    Per batch of axial slices: prepare_slices (npunet's preprocessing), the network on `device`, bilinear
    upsampling of the logits to the padded square (F.interpolate, align_corners=False), crop, argmax; then
    view.back() and, when `closing` and params["closing_radius"] > 0, npunet.postprocess.close_labels.
    """
    return segment_array(volume_hu, affine, TorchNetwork(model, params, device), batch_size, closing,
                         to_labels=torch_logits_to_labels)


def dice_per_organ(pred: np.ndarray, gt: np.ndarray, organs) -> dict[int, float]:
    """{organ: Dice} (both empty -> 1.0, one empty -> 0.0): a quick check, not the official FLARE metric."""
    out = {}
    for k in organs:
        p, g = pred == k, gt == k
        s = int(p.sum()) + int(g.sum())
        out[k] = 1.0 if s == 0 else 2.0 * int((p & g).sum()) / s
    return out


def segment_holdout(model, data_dir, case: str, organs, names: dict[int, str], params: dict, device,
                    out_dir: Path) -> dict[int, float]:
    """Segment data_dir's `case` into out_dir/pred/CASE.nii.gz, print the quick Dice of each organ in
    `organs` and write them to out_dir/pred/CASE.dice.json; returns {organ: Dice}."""
    t0 = time.perf_counter()
    img, gt = load_case(data_dir, case)
    pred = predict_volume(model, img.get_fdata(dtype=np.float32), img.affine, params, device)
    path = write_labels(pred, img, out_dir / "pred" / f"{case}.nii.gz", overwrite=True, label_names=names)
    scores = dice_per_organ(pred, gt, organs)
    print(f"holdout {case}: wrote {path} ({time.perf_counter() - t0:.1f} s); quick Dice per annotated organ:")
    for k, v in scores.items():
        print(f"  {k:2d} {names.get(k, '?'):22s} {v:.4f}" + ("   (absent in label and prediction)"
                                                          if not (gt == k).any() and not (pred == k).any()
                                                          else ""))
    print(f"  mean {np.mean(list(scores.values())):.4f}")
    (out_dir / "pred" / f"{case}.dice.json").write_text(
        json.dumps({names.get(k, str(k)): round(v, 4) for k, v in scores.items()}, indent=1) + "\n")
    return scores
