"""npunet.precompile: the first run's compilation shared with a helper process leaves a complete kernel cache
(a fresh process then compiles nothing to segment) and the same logits; unknown names are refused; one process
alone compiles everything too. Each subprocess starts from an empty NUMBA_CACHE_DIR of its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Load the default network, run what segmenting runs (npunet.pipeline.warm_up: the forward, the resize, the
# upsample + argmax, the closing) and a real-sized forward, and report Numba's compilations of npunet's kernels.
PROBE = """
import json, sys
import numpy as np
from numba.core import event
compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__module__ + "." + ev.data["dispatcher"].py_func.__name__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Listener())
import npunet
from npunet.pipeline import warm_up
net = npunet.load()
warm_up(net)
x = np.random.default_rng(0).random((2, 3, 192, 192), dtype=np.float32)
np.save(sys.argv[1], net(x))
print("PROBE " + json.dumps(sorted(set(c for c in compiled if c.startswith("npunet.")))))
"""


def _run(code, cache, *args):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), NPUNET_TILES="default")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=str(REPO), env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("processes", [2, 1])
def test_compiled_kernels_leave_a_complete_cache(tmp_path, processes):
    cache = tmp_path / "cache"
    out = _run("import sys, npunet, json\n"
               "from npunet import precompile\n"
               "from npunet.network import Network\n"
               "from npunet.weights import read_weights, default_weights_path\n"
               "h, t = read_weights(default_weights_path())\n"
               "net = Network(h['spec'], t)\n"
               f"print('DONE ' + json.dumps(precompile.ensure(net.kernels(), processes={processes})))\n"
               "print('AGAIN ' + json.dumps(precompile.ensure(net.kernels())))", cache)
    done = json.loads(out.split("DONE ")[1].splitlines()[0])
    assert set(done) >= {"winograd", "pointwise", "depthwise", "upsample_argmax", "bilinear"}
    assert json.loads(out.split("AGAIN ")[1].splitlines()[0]) == []          # marked: nothing the second time
    probe = _run(PROBE, cache, tmp_path / "logits.npy")
    assert json.loads(probe.split("PROBE ")[1].splitlines()[0]) == [], probe  # a fresh process compiled nothing
    import npunet
    net = npunet.load()
    x = np.random.default_rng(0).random((2, 3, 192, 192), dtype=np.float32)
    assert np.array_equal(np.load(tmp_path / "logits.npy"), net(x))


def test_network_names_its_kernels():
    import npunet
    from npunet.precompile import EXERCISES
    names = npunet.load().kernels()
    assert set(names) <= set(EXERCISES)
    assert {"winograd", "conv3x3", "pointwise", "depthwise", "group_norm", "group_norm_coefficients", "eca",
            "max_pool", "bilinear", "upsample_argmax", "label_map"} == set(names)


def test_unknown_kernel_names_are_refused():
    from npunet.precompile import ensure
    with pytest.raises(ValueError, match="no kernel exercise named"):
        ensure(["winograd", "no_such_kernel"])


OPT_PROBE = """
import numba
from npunet.kernels import _numba
print("OPT", int(numba.config.OPT), _numba.BUILD_TAG)
"""


def test_kernels_compile_at_o1_unless_the_user_sets_numba_opt():
    """npunet.kernels._numba sets LLVM -O1 when $NUMBA_OPT is unset, keeps the user's level otherwise, and the
    level is part of the build tag (kernels compiled at one level are never loaded at another)."""
    def probe(**extra):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_OPT"} | extra
        out = subprocess.run([sys.executable, "-c", OPT_PROBE], cwd=str(REPO), env=env, capture_output=True,
                             text=True, check=True, timeout=300).stdout.split()
        return int(out[1]), out[2]
    default, user = probe(), probe(NUMBA_OPT="3")
    assert default[0] == 1 and user[0] == 3
    assert default[1] != user[1]
