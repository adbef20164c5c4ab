"""Where the time goes: wall time of each layer op type over a batch-8 forward pass of the default network.

    python docs/profile_layers.py                      # batch 8 at 192x192, 5 runs, the fixture weights
    python docs/profile_layers.py --runs 9 --batch 1   # other settings

Runs the forward pass through Network.run_layers, the public per-layer hook (without keep, so every
layer runs exactly as in net(x): same kernels, buffers and fusions), which times each layer's kernel calls
with time.perf_counter; takes the median over the runs per layer, and sums the medians per op type. One warm-up pass first, so Numba compilation (or cache loading) is not counted. The weights
are the random ones in tests/fixtures/ (same shapes as trained weights: the speed does not depend on the
values). Timings on a shared machine are noisy: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np

import npunet

ROOT = Path(__file__).resolve().parent.parent


def profile(net, x, runs):
    """{layer index: [seconds per run]} for each layer of net.plan on input x."""
    times = defaultdict(list)
    for _ in range(runs + 1):                                      # the first pass is the warm-up
        for step in net.run_layers(x):
            times[step.index].append(step.seconds)
    return {i: t[1:] for i, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "tests" / "fixtures" / "dsconv_eca_unet.npuw"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)

    net = npunet.load(args.weights)
    x = np.random.default_rng(0).random((args.batch, net.spec["in_channels"], args.size, args.size), dtype=np.float32)
    per_layer = profile(net, x, args.runs)
    by_op, count = defaultdict(float), defaultdict(int)
    for i, layer in enumerate(net.plan):
        by_op[layer.op] += float(np.median(per_layer[i]))
        count[layer.op] += 1
    total = sum(by_op.values())
    wall = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        net(x)
        wall.append(time.perf_counter() - t0)

    print(f"{net.spec['name']}, input {x.shape}, median of {args.runs} runs, "
          f"{numba.get_num_threads()} Numba threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{'op':<10} {'layers':>6} {'ms/batch':>9} {'ms/slice':>9} {'share':>6}")
    for op in sorted(by_op, key=by_op.get, reverse=True):
        print(f"{op:<10} {count[op]:>6} {by_op[op] * 1e3:>9.1f} {by_op[op] * 1e3 / args.batch:>9.2f} "
              f"{by_op[op] / total:>6.1%}")
    print(f"{'sum':<10} {len(net.plan):>6} {total * 1e3:>9.1f} {total * 1e3 / args.batch:>9.2f}")
    print(f"whole forward net(x), median: {np.median(wall) * 1e3:.1f} ms/batch, "
          f"{np.median(wall) * 1e3 / args.batch:.2f} ms/slice")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
