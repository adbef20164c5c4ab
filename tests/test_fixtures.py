"""Golden fixtures made by tools/make_fixtures.py from torch: parity that runs without torch installed."""

from pathlib import Path

import numpy as np
import pytest

import npunet
from npunet import kernels as K

FIXTURES = Path(__file__).parent / "fixtures"
NETWORKS = ["dsconv_eca_unet", "tiny_standard_unet", "tiny_transpose_unet"]


@pytest.mark.parametrize("name", NETWORKS)
def test_network_matches_torch_fixture(name):
    net = npunet.load(FIXTURES / f"{name}.npuw")
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        x, want = f["x"], f["logits"]
    got = net(x)
    diff = float(np.abs(got - want).max())
    print(f"\n  {name:<22} {x.shape} logits max|diff| vs torch fixture {diff:.2e}")
    assert diff <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9999


CALLS = {
    "depthwise_conv3x3": lambda a: K.depthwise_conv3x3(a["x"], a["w"]),
    "conv3x3": lambda a: K.conv3x3(a["x"], a["w"]),
    "pointwise_conv": lambda a: K.pointwise_conv(a["x"], a["w"], a["bias"]),
    "conv_transpose2x2": lambda a: K.conv_transpose2x2(a["x"], a["w"], a["bias"]),
    "group_norm": lambda a: K.group_norm(a["x"], a["weight"], a["bias"], 4, 1e-5, relu=True),
    "eca": lambda a: K.eca(a["x"], a["w"]),
    "max_pool2x2": lambda a: K.max_pool2x2(a["x"]),
    "upsample_bilinear2x": lambda a: K.upsample_bilinear2x(a["x"]),
    "resize_bilinear": lambda a: K.resize_bilinear(a["x"], 12, 9),
}


@pytest.mark.parametrize("kernel", sorted(CALLS))
def test_kernel_matches_torch_fixture(kernel):
    with np.load(FIXTURES / "kernels.npz", allow_pickle=False) as f:
        args = {k.split(".", 1)[1]: f[k] for k in f.files if k.startswith(kernel + ".")}
    want = args.pop("out")
    got = CALLS[kernel](args)
    diff = float(np.abs(got - want).max())
    print(f"\n  {kernel:<20} {want.shape} max|diff| vs torch fixture {diff:.2e}")
    assert got.shape == want.shape
    assert diff <= 1e-5 * max(1.0, float(np.abs(want).max()))
