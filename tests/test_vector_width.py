"""The hot kernels compile to full-width (512-bit, zmm) vector FMAs for Intel and AMD AVX-512 CPUs alike.

LLVM tunes Intel server CPUs (sapphirerapids, ...) with `prefer-256-bit`, which made Numba emit ymm loops there
and zmm on AMD Zen 4: the same kernels ran at about half speed on an Intel Xeon (issue 12). npunet switches
that preference off when the features have AVX-512 (npunet/kernels/_numba.py, _full_width_vectors). Numba
compiles for a CPU it does not run on (NUMBA_CPU_NAME), so each CPU is checked here in a fresh process that
compiles the kernels (without running them) and counts the packed single-precision FMAs in their assembly by
register width. The control run, with `+prefer-256-bit` forced, shows that the check sees the difference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs in the child: compile the dense Winograd 3x3, pointwise and depthwise kernels for the env's CPU,
# print {kernel: {"zmm": n, "ymm": n, "xmm": n}} counts of vfmadd*ps by register width.
_CHILD = r"""
import json, re
import numba, numpy as np
from numba import typeof
from npunet.kernels import conv, winograd
f32 = lambda *shape: np.zeros(shape, np.float32)
i64 = np.int64(1)
x4, up = f32(1, 8, 8, 8), (f32(1, 0, 1, 1),) + tuple(np.zeros(8, np.int64) for _ in range(2)) \
    + tuple(f32(8) for _ in range(2)) + tuple(np.zeros(8, np.int64) for _ in range(2)) + tuple(f32(8) for _ in range(2)) \
    + (True,)
kernels = {
    "winograd": (winograd._winograd_kernel, (x4, f32(1, 0, 4), up, f32(36, 8, 8), x4, i64, i64)),
    "pointwise": (conv._pointwise_kernel, (f32(1, 8, 64), f32(1, 0, 4), f32(8, 8), f32(8), True, f32(1, 8, 64),
                                           i64, i64)),
    "depthwise": (conv._depthwise_kernel, (x4, f32(8, 1, 3, 3), x4, i64)),
}
counts = {}
for name, (fn, args) in kernels.items():
    sig = tuple(typeof(a) for a in args)
    fn.compile(sig)
    asm = fn.inspect_asm(sig)
    counts[name] = {r: len(re.findall(r"^\s*vfmadd\w*ps\s.*%" + r + r"\d+$", asm, re.M)) for r in ("zmm", "ymm", "xmm")}
counts["features"] = numba.config.CPU_FEATURES
print("COUNTS " + json.dumps(counts))
"""


def fma_counts(cpu, features, tmp_path):
    """{kernel: {register: number of vfmadd*ps}} for the hot kernels compiled for `cpu` with `features`."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path / cpu), "NUMBA_DISABLE_JIT": "0"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("COUNTS "))
    return json.loads(line[len("COUNTS "):])


@pytest.mark.parametrize("cpu", ["sapphirerapids", "znver4"])
def test_hot_loops_use_zmm_fmas(cpu, tmp_path):
    # The host-feature string of such a CPU has +avx512f; the CPU name brings the rest of its features.
    counts = fma_counts(cpu, "+avx512f", tmp_path)
    print(cpu, counts)
    assert counts["features"].endswith("-prefer-256-bit"), counts["features"]
    for name in ("winograd", "pointwise", "depthwise"):
        c = counts[name]
        assert c["zmm"] >= 8 and c["zmm"] > 2 * c["ymm"], (cpu, name, c)


def test_prefer_256_bit_gives_ymm_loops(tmp_path):
    """The control: with the Intel tuning left on, the same check sees ymm loops (this is what npunet emitted
    on Intel Xeons before; a user's NUMBA_CPU_FEATURES naming prefer-256-bit either way is respected)."""
    counts = fma_counts("sapphirerapids", "+avx512f,+prefer-256-bit", tmp_path)
    print(counts)
    assert counts["features"] == "+avx512f,+prefer-256-bit"
    c = counts["pointwise"]
    assert c["ymm"] >= 8 and c["zmm"] == 0, c
