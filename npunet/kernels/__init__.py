"""npunet's compute kernels: flat functions over float32 NCHW arrays, each with a NumPy twin.

Every op `<name>` is the Numba fast path (shapes checked in Python, ValueError naming them, then a parallel
@njit kernel whose results do not depend on the thread count). Beside it, `<name>_reference` takes the same
arguments and is the definition: short NumPy, accumulating in float64. tests/test_kernels.py compares both
with torch and prints the max |diff| per case. Most ops take an optional preallocated `out=`.

conv      depthwise_conv3x3(x, w)            x (N,C,H,W), w (C,1,3,3)      F.conv2d(padding=1, groups=C)
          pointwise_conv(x, w, bias=None)    w (Co,Ci,1,1), bias (Co,)     F.conv2d 1x1 (also the head)
          conv3x3(x, w)                      w (Co,Ci,3,3)                 F.conv2d(padding=1)
winograd  conv3x3_winograd(x, w, u=None, low=None, norm_relu=None)  the same, by F(4x4,3x3) (conv3x3 uses it
                                             from 8 channels); low: on cat([x, upsample2x(low)]), never built;
                                             norm_relu: on relu(group_norm(x)), normalised as it is read
          winograd_weights(w)                -> u (36,Co,Ci)               G w G^T, once per layer
          conv_transpose2x2(x, w, bias)      w (Ci,Co,2,2) -> (N,Co,2H,2W) F.conv_transpose2d(stride=2)
norm      group_norm(x, weight, bias, groups, eps, relu=False)             F.group_norm (+ F.relu)
          group_norm_statistics(x, groups)   -> mean, std (N,G) float64    the per-group statistics it uses
          group_norm_coefficients(x, weight, bias, groups, eps) -> (N,C,4) the same, as per-channel a*x+b terms
          relu(x)                                                          F.relu
eca       eca(x, w, gate=None)               w (1,1,k), k odd              ECA: x * sigmoid(conv1d(mean_hw x))
          eca_gate_reference(x, w)           -> (N,C) float64              the gates alone (eca's gate= output)
resample  max_pool2x2(x)                     -> (N,C,H//2,W//2)            F.max_pool2d(x, 2)
          upsample_bilinear2x(x, align_corners=False)                      F.interpolate(scale_factor=2, bilinear)
          resize_bilinear(x, out_h, out_w, align_corners=False)            F.interpolate(size=..., bilinear)
          upsample_argmax(logits, out_h, out_w, crop_y0=0, crop_x0=0, crop_h=None, crop_w=None)
                                             -> uint8 (N,crop_h,crop_w)    argmax(interpolate(size), 1)[crop]
          concat_channels(a, b)              skip first, then upsampled    torch.cat([a, b], 1)
          upsample_concat(skip, x, align_corners=False) -> (N,Ca+Cb,2H,2W) torch.cat([skip, interpolate(x, 2)], 1)
"""

from npunet.kernels.conv import (
    WINOGRAD_MIN_CI, conv3x3, conv3x3_reference, conv_transpose2x2, conv_transpose2x2_reference, depthwise_conv3x3,
    depthwise_conv3x3_reference, pointwise_conv, pointwise_conv_reference)
from npunet.kernels.eca import eca, eca_gate_reference, eca_reference
from npunet.kernels.winograd import conv3x3_winograd, conv3x3_winograd_reference, winograd_weights
from npunet.kernels.norm import (group_norm, group_norm_coefficients, group_norm_reference, group_norm_statistics, relu,
                                 relu_reference)
from npunet.kernels.resample import (
    bilinear_source_index, concat_channels, concat_channels_reference, max_pool2x2, max_pool2x2_reference,
    resize_bilinear, resize_bilinear_reference, upsample_argmax, upsample_argmax_reference, upsample_bilinear2x,
    upsample_bilinear2x_reference, upsample_concat, upsample_concat_reference)

__all__ = [
    "depthwise_conv3x3", "pointwise_conv", "conv3x3", "conv_transpose2x2", "conv3x3_winograd", "winograd_weights",
    "group_norm", "group_norm_coefficients", "relu", "eca",
    "max_pool2x2", "upsample_bilinear2x", "resize_bilinear", "upsample_argmax", "concat_channels",
    "upsample_concat", "upsample_concat_reference",
    "depthwise_conv3x3_reference", "pointwise_conv_reference", "conv3x3_reference", "conv_transpose2x2_reference",
    "conv3x3_winograd_reference",
    "group_norm_reference", "group_norm_statistics", "relu_reference", "eca_reference", "eca_gate_reference",
    "max_pool2x2_reference", "upsample_bilinear2x_reference", "resize_bilinear_reference",
    "upsample_argmax_reference", "concat_channels_reference",
    "bilinear_source_index",
]
