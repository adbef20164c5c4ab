"""A warm start imports only what it uses: `import npunet; npunet.load()` and a forward need neither nibabel (and
through it pydicom, when installed) nor the files side of npunet (npunet.io, npunet.case) nor the cohort runner;
segmenting a file imports them when it needs them. Checked in a fresh interpreter."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CODE = """
import json, sys
import numpy as np
import npunet
net = npunet.load()
net(np.zeros((1, 3, 192, 192), np.float32))
print("MODULES " + json.dumps(sorted(m for m in sys.modules
                                      if m.split(".")[0] in ("nibabel", "pydicom", "distributed", "dask")
                                      or m.startswith(("npunet.io", "npunet.case", "npunet.cohort")))))
"""


def test_load_and_forward_import_no_nibabel_nor_files_side():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=str(REPO), capture_output=True, text=True, check=True,
                         timeout=600).stdout
    assert json.loads(out.split("MODULES ")[1].splitlines()[0]) == []


def test_the_api_still_offers_everything():
    import npunet
    for name in npunet.__all__:
        assert getattr(npunet, name) is not None
    from npunet import api
    assert api.label_names(npunet.load(), (1,)) == {0: "background", 1: "liver"}
