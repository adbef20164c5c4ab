"""The PyTorch mirror of npunet's network, built from the same architecture spec.

Module paths equal the tensor names of npunet's weights file (npunet.spec.expected_tensors), so a torch
state_dict converts by name alone. Used for training (tools/training/), for conversion (tools/convert.py)
and as the parity reference in the tests. Needs torch; npunet itself never imports this file.

    from tools.torch_model import load_spec, build_model
    model = build_model(load_spec("dsconv_eca_unet"))     # torch.nn.Module, (N, 3, H, W) -> (N, 14, H, W)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npunet.spec import expected_tensors, load_spec as _load_spec

__all__ = ["load_spec", "build_model", "init_random", "UNet"]


def load_spec(name_or_path) -> dict:
    """A built-in spec by name or a JSON file by path (the same loader npunet uses)."""
    return _load_spec(name_or_path)


class ConvUnit(nn.Module):
    """conv (plain 3x3, or depthwise 3x3 -> pointwise 1x1) -> GroupNorm -> ReLU; no conv bias."""

    def __init__(self, kind: str, cin: int, cout: int, groups: int, eps: float, depthwise_norm: bool):
        super().__init__()
        self.kind = kind
        if kind == "conv3x3":
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        else:
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.depthwise_norm = nn.GroupNorm(groups, cin, eps=eps) if depthwise_norm else None
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.GroupNorm(groups, cout, eps=eps)

    def forward(self, x):
        if self.kind == "conv3x3":
            x = self.conv(x)
        else:
            x = self.depthwise(x)
            if self.depthwise_norm is not None:
                x = F.relu(self.depthwise_norm(x))
            x = self.pointwise(x)
        return F.relu(self.norm(x))


class ECA(nn.Module):
    """Efficient Channel Attention: x * sigmoid(conv1d_k(mean_hw(x))) with one kernel shared by all channels."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = x.mean(dim=(2, 3))                       # (N, C)
        y = self.conv(y.unsqueeze(1)).squeeze(1)     # (N, C)
        return x * torch.sigmoid(y)[:, :, None, None]


class Stage(nn.Module):
    def __init__(self, stage: dict, cin: int, groups: int, eps: float, depthwise_norm: bool):
        super().__init__()
        units, c = [], cin
        for _ in range(stage.get("num_convs", 2)):
            units.append(ConvUnit(stage["conv"], c, stage["channels"], groups, eps, depthwise_norm))
            c = stage["channels"]
        self.convs = nn.ModuleList(units)
        self.eca = ECA(stage["eca_kernel"]) if stage.get("eca_kernel") else None

    def forward(self, x):
        for unit in self.convs:
            x = unit(x)
        return self.eca(x) if self.eca is not None else x


class DecoderStage(Stage):
    def __init__(self, stage: dict, cin: int, skip: int, groups: int, eps: float, depthwise_norm: bool,
                 upsample: dict):
        super().__init__(stage, cin + skip, groups, eps, depthwise_norm)
        self.mode = upsample["mode"]
        self.align_corners = bool(upsample.get("align_corners", False))
        self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2) if self.mode == "transpose" else None

    def forward(self, x, skip):
        if self.up is not None:
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        return super().forward(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        g, eps = spec["norm"]["groups"], spec["norm"]["eps"]
        dwn = bool(spec.get("depthwise_norm", False))
        enc, c = [], spec["in_channels"]
        for st in spec["encoder"]:
            enc.append(Stage(st, c, g, eps, dwn))
            c = st["channels"]
        self.encoder = nn.ModuleList(enc)
        dec = []
        for j, st in enumerate(spec["decoder"]):
            skip = spec["encoder"][len(spec["encoder"]) - 2 - j]["channels"]
            dec.append(DecoderStage(st, c, skip, g, eps, dwn, spec["upsample"]))
            c = st["channels"]
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Conv2d(c, spec["num_classes"], 1, bias=True)

    def forward(self, x):
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        skips.pop()
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


def build_model(spec: dict) -> nn.Module:
    """The torch network of `spec`; its state_dict names and shapes are npunet.spec.expected_tensors(spec)."""
    model = UNet(spec)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_tensors(spec)
    if got != want:
        raise AssertionError(f"torch mirror and npunet.spec disagree: {set(got) ^ set(want)}")
    return model


@torch.no_grad()
def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights with non-trivial GroupNorm affine (for parity tests)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = max(1, p[0].numel())
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return model
