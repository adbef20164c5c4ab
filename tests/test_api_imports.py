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


SEGMENT_CODE = """
import json, sys
import nibabel as nib
import numpy as np
from npunet import api
ct, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
nib.save(nib.Nifti1Image(rng.integers(-200, 300, (64, 64, 5)).astype(np.int16), np.diag([1.5, 1.5, 3, 1])), ct)
[result] = api.segment(ct, out, quiet=True)
assert result.ok, result.error
print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith("scipy.ndimage"))))
"""


def test_segmenting_a_file_imports_no_scipy_ndimage(tmp_path):
    """The closing, the label counts and the anatomy checks' largest parts run in Numba: scipy.ndimage's
    import (0.1-0.2 s) is not part of a case."""
    out = subprocess.run([sys.executable, "-c", SEGMENT_CODE, str(tmp_path / "ct.nii.gz"),
                          str(tmp_path / "labels.nii.gz")], cwd=str(REPO), capture_output=True, text=True,
                         check=True, timeout=600).stdout
    assert json.loads(out.split("MODULES ")[1].splitlines()[0]) == []


HUGEPAGE_CODE = """
import os, sys
from npunet.resources import small_pages_for_large_arrays
print("IN_EFFECT", small_pages_for_large_arrays(), os.environ.get("NUMPY_MADVISE_HUGEPAGE"))
import numpy as np
core = getattr(np, "_core", None) or np.core
print("NUMPY", int(core.multiarray._get_madvise_hugepage()))
"""


def test_the_command_asks_numpy_for_small_pages_unless_the_user_chose():
    """npunet.resources.small_pages_for_large_arrays (called by the `npunet` command before NumPy loads): NumPy
    then does not madvise huge pages; a user's own NUMPY_MADVISE_HUGEPAGE wins; once NumPy is imported it
    changes nothing and says so."""
    import os
    from npunet.resources import small_pages_for_large_arrays
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    run = lambda environ: subprocess.run([sys.executable, "-c", HUGEPAGE_CODE], cwd=str(REPO), env=environ,
                                         capture_output=True, text=True, check=True, timeout=300).stdout.split()
    assert run(env) == ["IN_EFFECT", "True", "0", "NUMPY", "0"]
    assert run(dict(env, NUMPY_MADVISE_HUGEPAGE="1")) == ["IN_EFFECT", "False", "1", "NUMPY", "1"]
    mine = {}
    assert small_pages_for_large_arrays(mine) is False and mine == {}        # NumPy is loaded in this process


SMAPS_CODE = """
import numpy as np
from npunet.resources import advise_huge_pages

def thp_eligible(a):
    address = a.ctypes.data + a.nbytes // 2             # past the unadvised first page
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            if lo <= address < hi:
                return next(l.split()[1] for l in lines[i + 1:] if l.startswith("THPeligible:"))

a = np.empty(8 << 20, np.uint8)
before = thp_eligible(a)
print("ADVISED", advise_huge_pages(a), before, thp_eligible(a), advise_huge_pages(np.empty(1000, np.uint8)))
"""


def test_reused_buffers_ask_for_huge_pages():
    """With NumPy's own advice off (as the `npunet` command runs), a large array is not eligible for
    transparent huge pages until advise_huge_pages marks it (what the network's layer buffers get); small
    arrays are left alone."""
    import os
    import pytest
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sys.platform.startswith("linux") or not mode.is_file() or "[madvise]" not in mode.read_text():
        pytest.skip("needs Linux with transparent huge pages in 'madvise' mode")
    out = subprocess.run([sys.executable, "-c", SMAPS_CODE], cwd=str(REPO), capture_output=True, text=True,
                         env=dict(os.environ, NUMPY_MADVISE_HUGEPAGE="0"), check=True, timeout=300).stdout
    assert out.split() == ["ADVISED", "True", "0", "1", "False"]


def test_the_command_imports_nibabel_without_pydicom():
    """The `npunet` command imports nibabel without its optional pydicom (npunet.third_party says why); pydicom
    is still importable afterwards (a DICOM input needs it), and nibabel keeps DICOM extensions as raw ones."""
    code = ("import sys; from npunet.third_party import import_nibabel_without_pydicom as f; done = f(); "
            "import nibabel.nifti1 as n; print(done, 'pydicom' in sys.modules, n.have_dicom, "
            "n.extension_codes.handler[2].__name__); import pydicom; print(pydicom.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    print(f"\n  {proc.stdout.split()} {proc.stderr.strip()[-200:]}", end="")
    lines = proc.stdout.split("\n")
    assert lines[0] == "True False False Nifti1Extension"
    assert lines[1] == "pydicom" or "No module named 'pydicom'" in proc.stderr
    cli = ("import contextlib, io, sys\nfrom npunet.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
           "    try:\n        main(['segment', '--help'])\n    except SystemExit:\n        pass\n"
           "print('nibabel' in sys.modules, 'pydicom' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", cli], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "False"], proc.stderr[-300:]   # the command's modules loaded nibabel


def test_segmenting_commands_set_numba_up_without_scipy_linalg(tmp_path):
    """`npunet segment` lets Numba set itself up without importing scipy.linalg (npunet.third_party says why):
    a whole segment in a fresh interpreter leaves scipy.linalg unimported, Numba's np.dot still compiles (it
    imports scipy.linalg itself) and gives the right product, and scipy.linalg's BLAS stays importable."""
    code = """
import sys
import nibabel as nib
import numpy as np
from npunet.cli import main
ct, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
nib.save(nib.Nifti1Image(rng.integers(-200, 300, (64, 64, 5)).astype(np.int16), np.diag([1.5, 1.5, 3, 1])), ct)
code = main(["segment", ct, "-o", out, "--quiet"])
print("AFTER_SEGMENT", code, "scipy.linalg" in sys.modules)
import numba
a = np.arange(6.0).reshape(2, 3)
product = numba.njit(lambda x, y: np.dot(x, y))(a, a.T)
print("DOT", np.array_equal(product, a @ a.T), "scipy.linalg" in sys.modules)
import scipy.linalg.cython_blas
print("BLAS", scipy.linalg.cython_blas.__name__)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ct.nii.gz"), str(tmp_path / "out.nii.gz")],
                          cwd=str(REPO), capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("AFTER_SEGMENT", "DOT", "BLAS"))]
    print(f"\n  {lines} {proc.stderr.strip()[-300:]}", end="")
    assert lines == ["AFTER_SEGMENT 0 False", "DOT True True", "BLAS scipy.linalg.cython_blas"], proc.stderr[-500:]


def test_numba_set_up_without_blas_only_when_nothing_is_imported_yet():
    """set_up_numba_without_blas does nothing once Numba's array functions or scipy.linalg are imported (a
    library user's process, or a second call), and says so."""
    code = ("import sys; from npunet.third_party import set_up_numba_without_blas as f; "
            "print(f(), f(), 'scipy.linalg' in sys.modules, 'numba.np.arraymath' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "False", "False", "True"], proc.stderr[-300:]
    code = "import scipy.linalg; from npunet.third_party import set_up_numba_without_blas as f; print(f())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False"], proc.stderr[-300:]
