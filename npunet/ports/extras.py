"""The optional packages a port check uses, imported on demand: a missing one is a one-line NpunetError that
says what to install, never an ImportError traceback.

    onnx = need("onnx", "npunet export onnx")      # the module, or NpunetError naming the extra
"""

from __future__ import annotations

import importlib

from npunet.errors import NpunetError

INSTALL = "pip install 'npunet[onnx]'"                 # onnx, onnxruntime, openvino
DISTRIBUTION = {"onnx": "onnx", "onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch==2.13.0"}


def need(module: str, what: str):
    """The module `module` (onnx, onnxruntime, openvino, torch), or NpunetError: "<what> needs <module>: <how
    to install it>"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = (f"pip install '{DISTRIBUTION['torch']}'" if module == "torch"
               else f"{INSTALL} (onnx, onnxruntime and openvino)")
        raise NpunetError(f"{what} needs the {module} package, which is not installed ({exc.msg}): {how}") from None


def version(module: str) -> str | None:
    """The installed version of an optional package, or None when it is not installed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    v = getattr(mod, "__version__", None)
    if v is None and module == "openvino":
        v = mod.get_version()
    return str(v).split("-")[0]          # openvino: "2026.4.1-22982-e213a..." -> "2026.4.1"
