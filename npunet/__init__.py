"""npunet: a NumPy + Numba CPU inference engine for the depthwise-separable ECA U-Net of Cheng et al.
(FLARE 2024 Task 2, 13 abdominal organs in CT). No PyTorch needed.

    import npunet
    net = npunet.load()                       # shipped default weights (or npunet.load("file.npuw"))
    logits = net(x)                           # (N, 3, H, W) float32 -> (N, 14, H, W) float32
    labels_img = npunet.segment_image(img)    # nibabel CT image -> uint8 label image on the same grid
    npunet.segment("series/", "organs.dcm", output_type="dicom-seg")    # `npunet segment` as a function
    rows = npunet.segment_many("imagesTs/", "out/", workers=2)   # a cohort, on Dask; the manifest rows
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__version__ = "0.1.0"

DEFAULT_WEIGHTS_NAME = "dsconv_eca_unet.npuw"


def default_weights_path() -> Path:
    """$NPUNET_WEIGHTS if set, else the shipped weights: the checkout's weights/ folder (editable install),
    or <prefix>/share/npunet/weights (where `pip install .` puts them)."""
    env = os.environ.get("NPUNET_WEIGHTS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "weights" / DEFAULT_WEIGHTS_NAME
    installed = Path(sys.prefix) / "share" / "npunet" / "weights" / DEFAULT_WEIGHTS_NAME
    return installed if not checkout.exists() and installed.exists() else checkout


def load(path=None):
    """The network stored in an npunet weights file (default: the shipped weights), verified.

    Raises npunet.errors.WeightsError with a one-line message if the file is missing or does not verify.
    """
    from npunet.network import from_file
    return from_file(default_weights_path() if path is None else path)


def segment_image(img, model=None, **options):
    """A nibabel CT image -> a uint8 nibabel label image on the same grid (see npunet.segment_cli)."""
    from npunet.segment_cli import segment_image as _segment_image
    return _segment_image(img, model=model, **options)


def segment(input, output, **options):
    """`npunet segment INPUT -o OUTPUT` as a function: files in, files out; returns one CaseResult per case.

    Options as the command's (see npunet.segment_cli.segment): weights, model, threads, batch_size,
    postprocess, overwrite, statistics, preview, output_type ("nifti" or "dicom-seg"), split (a folder of
    one mask per organ), organs (names or label ids to keep), quiet. Raises npunet.errors.NpunetError with a
    one-line message for a mistake (bad input, option or output), before anything is written.
    """
    from npunet.segment_cli import segment as _segment
    return _segment(input, output, **options)


def segment_many(inputs, output_dir, client=None, **options):
    """Segment a cohort (a folder, or a list of NIfTI files and DICOM series folders) into `output_dir`,
    resumably, on a Dask cluster or in this process; returns the manifest rows (see npunet.cohort)."""
    from npunet.cohort import segment_many as _segment_many
    return _segment_many(inputs, output_dir, client=client, **options)
