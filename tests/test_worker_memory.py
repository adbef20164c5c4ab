"""npunet.resources.keep_freed_memory: in a process started with Dask's MALLOC_TRIM_THRESHOLD_=65536, every large
array is mapped fresh and page-faulted anew; after keep_freed_memory() freed arrays are reused (a fraction of the
page faults), as in a process without that setting. Counted with getrusage, not timed."""

import json
import os
import subprocess
import sys

import pytest

from npunet.resources import keep_freed_memory

CODE = """
import json, resource, sys
import numpy as np
from npunet.resources import keep_freed_memory
changed = keep_freed_memory() if sys.argv[1] == "fix" else False
np.ones(4 << 20, np.float32)                       # 16 MiB, once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(4 << 20, np.float32)
    del a
print(json.dumps([changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings (Linux)")
def test_freed_arrays_are_reused_in_a_dask_like_environment():
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", CODE, mode], env=env, capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
        return json.loads(out.splitlines()[-1])
    changed, fixed = faults("fix")
    _, plain = faults("plain")
    assert changed is True
    assert plain >= 20 * 8                # every 16 MiB array faulted in again (4 KiB pages, or 8 huge pages)
    assert fixed < plain / 4, (fixed, plain)


def test_nothing_to_undo_without_the_setting():
    assert keep_freed_memory({}) is False
