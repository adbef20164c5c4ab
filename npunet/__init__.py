"""npunet: a NumPy + Numba CPU inference engine for the depthwise-separable ECA U-Net of Cheng et al.
(FLARE 2024 Task 2, 13 abdominal organs in CT). No PyTorch needed.

    import npunet
    net = npunet.load()                       # shipped default weights (or npunet.load("file.npuw"))
    logits = net(x)                           # (N, 3, H, W) float32 -> (N, 14, H, W) float32
    labels_img = npunet.segment_image(img)    # nibabel CT image -> uint8 label image on the same grid
    npunet.segment("series/", "organs.dcm", output_type="dicom-seg")    # `npunet segment` as a function
    rows = npunet.segment_many("imagesTs/", "out/", workers=2)   # a cohort, on Dask; the manifest rows
    npunet.segment("ct.nii.gz", "out/", report=True); npunet.verify("out/ct.report.json").ok   # provenance

The functions live in npunet.api; this file only forwards to them, imported on first use so that
`import npunet` stays light. Nothing inside the package imports this root (docs/architecture.md).
"""

from npunet.version import __version__

__all__ = ["__version__", "load", "default_weights_path", "segment", "segment_image", "segment_many", "verify"]


def __getattr__(name):
    """npunet.load, npunet.segment, ... from npunet.api, on first use."""
    if name in __all__:
        from npunet import api
        return getattr(api, name)
    raise AttributeError(f"module 'npunet' has no attribute {name!r}")
