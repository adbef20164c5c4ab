"""The segmentation pipeline in torch ops, for parity with npunet.pipeline (and as the "torch forward"
competitor in benchmarks).

    python -m tools.torch_pipeline CT.nii.gz -o labels.nii.gz [--weights W.npuw]

It runs npunet.pipeline.segment_array, the one slice-batch loop, with torch doing every step that carries
numbers: the 2.5D stack and HU window (npunet.preprocess.stack_25d / normalize_hu: plain array indexing),
F.pad to a square and F.interpolate to the network size (torch_prepare), the torch mirror of the network
(tools/torch_model.py) with the same weights (TorchNetwork), then F.interpolate back to the padded square,
crop and argmax (torch_logits_to_labels). So the loop, the canonical orientation and the post-processing
(npunet's scipy closing) are shared, and the preprocessing, the network and the upsampling stay an
independent torch reference for npunet's own kernels.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from npunet.pipeline import segment_array
from npunet.preprocess import DEFAULT_PREPROCESSING, normalize_hu, square_window, stack_25d
from npunet.weights import read_weights
from tools.torch_model import build_model


class TorchNetwork:
    """A torch network as the numpy callable npunet.pipeline.segment_array runs: x (B, C, S, S) float32 ->
    logits (B, classes, S, S) float32, in eval mode without autograd, on `device`. Carries `spec` (when the
    torch model has one) and the `preprocessing` the pipeline reads from its model."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, device="cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self.preprocessing = dict(preprocessing)
        spec = getattr(model, "spec", None)
        if spec is not None:
            self.spec = spec

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def torch_prepare(volume: np.ndarray, zs, params: dict):
    """npunet.preprocess.prepare_slices in torch ops: the 2.5D stacks of slices zs, HU-windowed, F.pad to a
    centred square with params["pad_value"], F.interpolate (bilinear, align_corners=False) to
    params["input_size"]. Returns (x (B, C, S, S) float32, the square window)."""
    nx, ny = volume.shape[:2]
    win = square_window(nx, ny)
    size = int(params["input_size"])
    x = torch.from_numpy(normalize_hu(stack_25d(volume, zs, int(params["context_slices"])),
                                      params["hu_min"], params["hu_max"]))
    x = F.pad(x, (win.x0, win.side - ny - win.x0, win.y0, win.side - nx - win.y0), value=float(params["pad_value"]))
    if win.side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy(), win


def torch_logits_to_labels(logits: np.ndarray, window) -> np.ndarray:
    """npunet.pipeline.logits_to_labels in torch ops: (B, C, S, S) logits -> F.interpolate (bilinear,
    align_corners=False) to the padded square, crop to the native slice, argmax -> (B, height, width) uint8."""
    up = torch.from_numpy(logits)
    if up.shape[-2:] != (window.side, window.side):
        up = F.interpolate(up, size=(window.side, window.side), mode="bilinear", align_corners=False)
    crop = up[:, :, window.y0:window.y0 + window.height, window.x0:window.x0 + window.width]
    return crop.argmax(1).to(torch.uint8).numpy()


def torch_model_from_weights(path):
    """(torch model, header) from an npunet weights file."""
    header, tensors = read_weights(path)
    model = build_model(header["spec"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return model.eval(), header


def segment_array_torch(volume_hu: np.ndarray, affine: np.ndarray, model, preprocessing: dict,
                        batch_size: int = 8, postprocess: bool = True) -> np.ndarray:
    """npunet.pipeline.segment_array with the torch model, torch_prepare and torch_logits_to_labels:
    (X, Y, Z) HU volume -> uint8 labels of the same shape, in the same array order."""
    network = TorchNetwork(model, {**DEFAULT_PREPROCESSING, **preprocessing})
    return segment_array(volume_hu, affine, network, batch_size, postprocess,
                         prepare=torch_prepare, to_labels=torch_logits_to_labels)


def main(argv=None) -> int:
    import nibabel as nib
    p = argparse.ArgumentParser(prog="python -m tools.torch_pipeline", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("input", help="CT NIfTI file")
    p.add_argument("-o", "--output", required=True, help="label NIfTI to write")
    p.add_argument("--weights", help="npunet weights file (default: the shipped weights)")
    p.add_argument("--batch-size", type=int, default=8, help="axial slices per network call (default: %(default)s)")
    p.add_argument("--no-postprocess", action="store_true", help="skip the per-label closing")
    args = p.parse_args(argv)
    import npunet
    model, header = torch_model_from_weights(args.weights or npunet.default_weights_path())
    img = nib.load(args.input)
    labels = segment_array_torch(np.asarray(img.dataobj, dtype=np.float32), img.affine, model,
                                 header["preprocessing"], args.batch_size, not args.no_postprocess)
    out = nib.Nifti1Image(labels, img.affine, img.header)
    out.set_data_dtype(np.uint8)
    nib.save(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
