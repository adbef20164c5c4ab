"""The segmentation pipeline in torch ops, for parity with npunet.pipeline (and as the "torch forward"
competitor in benchmarks).

    python tools/torch_pipeline.py CT.nii.gz -o labels.nii.gz [--weights W.npuw]

Same steps as npunet.pipeline.segment_array, with torch doing the work: the 2.5D stack and HU window
(npunet.preprocess.stack_25d / normalize_hu: plain array indexing), F.pad to a square, F.interpolate to the
network size, the torch mirror of the network (tools/torch_model.py) with the same weights, F.interpolate
back to the padded square, crop, argmax. Post-processing is npunet's (scipy), the same for both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, normalize_hu, square_window, stack_25d  # noqa: E402
from npunet.weights import read_weights  # noqa: E402
from tools.torch_model import build_model  # noqa: E402


def torch_model_from_weights(path):
    """(torch model, header) from an npunet weights file."""
    header, tensors = read_weights(path)
    model = build_model(header["spec"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return model.eval(), header


@torch.no_grad()
def segment_array_torch(volume_hu: np.ndarray, affine: np.ndarray, model, preprocessing: dict,
                        batch_size: int = 8, postprocess: bool = True) -> np.ndarray:
    params = {**DEFAULT_PREPROCESSING, **preprocessing}
    view = canonical(volume_hu, affine, params["orientation"])
    nx, ny, nz = view.data.shape
    win = square_window(nx, ny)
    size = int(params["input_size"])
    labels = np.empty((nz, nx, ny), dtype=np.uint8)
    for start in range(0, nz, batch_size):
        zs = np.arange(start, min(start + batch_size, nz))
        x = torch.from_numpy(normalize_hu(stack_25d(view.data, zs, int(params["context_slices"])),
                                          params["hu_min"], params["hu_max"]))
        x = F.pad(x, (win.x0, win.side - ny - win.x0, win.y0, win.side - nx - win.y0),
                  value=float(params["pad_value"]))
        if win.side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        logits = model(x)
        up = F.interpolate(logits, size=(win.side, win.side), mode="bilinear", align_corners=False)
        crop = up[:, :, win.y0:win.y0 + nx, win.x0:win.x0 + ny]
        labels[zs] = crop.argmax(1).numpy().astype(np.uint8)
    out = np.ascontiguousarray(view.back(labels.transpose(1, 2, 0)))
    if postprocess and int(params.get("closing_radius", 0)) > 0:
        from npunet.postprocess import close_labels
        out = close_labels(out, radius=int(params["closing_radius"]))
    return out


def main(argv=None) -> int:
    import nibabel as nib
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="CT NIfTI file")
    p.add_argument("-o", "--output", required=True, help="label NIfTI to write")
    p.add_argument("--weights", help="npunet weights file (default: the shipped weights)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-postprocess", action="store_true")
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
