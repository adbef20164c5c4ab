"""Make the golden fixtures in tests/fixtures/ from torch, so parity also runs where torch is absent.

    python -m tools.make_fixtures            # rewrites tests/fixtures/*

For each network below: seeded random weights (non-trivial GroupNorm affine) saved as an npunet weights
file, a seeded random input, and torch's logits, in an .npz (loaded with allow_pickle=False). For each
kernel: a seeded input, its parameters and torch's output. Re-run only when the torch semantics or the
fixture cases change; the tests never regenerate them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from npunet.labels import LABELS
from npunet.preprocess import DEFAULT_PREPROCESSING
from npunet.weights import save_weights
from tools import REPO
from tools.torch_model import build_model, init_random, load_spec

OUT = REPO / "tests" / "fixtures"


def tiny(spec: dict, name: str, widths) -> dict:
    """`spec` with narrower stages: small enough to commit, same structure."""
    spec = json.loads(json.dumps(spec))
    spec["name"] = name
    for st, c in zip(spec["encoder"] + spec["decoder"], widths):
        st["channels"] = c
    return spec


NETWORKS = {
    "dsconv_eca_unet": (load_spec("dsconv_eca_unet"), (2, 3, 32, 48)),
    "tiny_standard_unet": (tiny(load_spec("standard_unet"), "tiny_standard_unet",
                                (8, 8, 16, 16, 16, 16, 16, 8, 8)), (2, 3, 48, 32)),
    "tiny_transpose_unet": (tiny(load_spec("dsconv_eca_unet_transpose"), "tiny_transpose_unet",
                                 (8, 8, 16, 16, 16, 16, 16, 8, 8)), (1, 3, 32, 32)),
}


def kernel_cases(gen):
    def r(*shape):
        return torch.randn(*shape, generator=gen)
    x = r(2, 8, 7, 5)
    cases = {
        "depthwise_conv3x3": dict(x=x, w=r(8, 1, 3, 3), out=lambda c: F.conv2d(c["x"], c["w"], padding=1, groups=8)),
        "conv3x3": dict(x=x, w=r(4, 8, 3, 3), out=lambda c: F.conv2d(c["x"], c["w"], padding=1)),
        "pointwise_conv": dict(x=x, w=r(4, 8, 1, 1), bias=r(4), out=lambda c: F.conv2d(c["x"], c["w"], c["bias"])),
        "conv_transpose2x2": dict(x=x, w=r(8, 4, 2, 2), bias=r(4),
                                  out=lambda c: F.conv_transpose2d(c["x"], c["w"], c["bias"], stride=2)),
        "group_norm": dict(x=r(2, 8, 7, 5) * 3 + 100, weight=r(8), bias=r(8),
                           out=lambda c: F.relu(F.group_norm(c["x"], 4, c["weight"], c["bias"], 1e-5))),
        "eca": dict(x=x, w=r(1, 1, 5), out=lambda c: c["x"] * torch.sigmoid(
            F.conv1d(c["x"].mean((2, 3))[:, None], c["w"], padding=2)[:, 0])[:, :, None, None]),
        "max_pool2x2": dict(x=x, out=lambda c: F.max_pool2d(c["x"], 2)),
        "upsample_bilinear2x": dict(x=x, out=lambda c: F.interpolate(c["x"], scale_factor=2, mode="bilinear",
                                                                      align_corners=False)),
        "resize_bilinear": dict(x=x, out=lambda c: F.interpolate(c["x"], size=(12, 9), mode="bilinear",
                                                                  align_corners=False)),
    }
    return cases


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_fixtures", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--output", type=Path, default=OUT, metavar="DIR",
                   help="where to write the fixtures (default: %(default)s, which the tests read)")
    folder = p.parse_args(argv).output
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    for name, (spec, shape) in NETWORKS.items():
        model = init_random(build_model(spec), seed=7).eval()
        x = torch.rand(*shape, generator=gen)
        logits = model(x)
        save_weights(folder / f"{name}.npuw", spec, {k: v.numpy() for k, v in model.state_dict().items()},
                     LABELS, DEFAULT_PREPROCESSING, {"fixture": "random weights, tools/make_fixtures.py"})
        np.savez_compressed(folder / f"{name}.npz", x=x.numpy(), logits=logits.numpy())
        print(f"{name}: input {tuple(x.shape)}, logits {tuple(logits.shape)}")
    arrays = {}
    for kname, case in kernel_cases(gen).items():
        out = case.pop("out")(case)
        for k, v in case.items():
            arrays[f"{kname}.{k}"] = v.numpy()
        arrays[f"{kname}.out"] = out.numpy()
    np.savez_compressed(folder / "kernels.npz", **arrays)
    print(f"kernels: {sorted({k.split('.')[0] for k in arrays})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
