"""Seeded random weights for any spec, without torch: to check a port on a network other than the shipped one
(the standard U-Net, the ConvTranspose variant, a spec of your own), or to benchmark without trained weights.

    tensors = random_tensors(spec, seed=0)                  # name -> float32 array, npunet's names and shapes
    save_weights("random.npuw", spec, tensors, LABELS, DEFAULT_PREPROCESSING)    # npunet.weights

The same scheme as tools/torch_model.py's init_random (not the same numbers: that one draws from torch's
generator): conv weights He-normal over their fan-in, GroupNorm weights 1 + 0.5 N(0, 1) (a non-trivial
affine, so a port that ignores it differs), biases 0.2 N(0, 1).
"""

from __future__ import annotations

import math

import numpy as np

from npunet.spec import expected_tensors


def random_tensors(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of `spec` (npunet.spec.expected_tensors), drawn from a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(spec).items():
        z = rng.standard_normal(shape)
        if "norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.5 * z
        elif name.endswith(".bias"):
            value = 0.2 * z
        else:
            value = z * math.sqrt(2.0 / max(1, math.prod(shape[1:])))
        out[name] = value.astype(np.float32)
    return out
