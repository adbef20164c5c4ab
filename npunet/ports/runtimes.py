"""The engines a port check compares with npunet, each behind one call: engine.run(x) -> {name: output}, with
x (N, C, H, W) float32 the preprocessed slices and the names npunet's layer names (the torch module paths of
npunet.spec.layer_plan) plus "logits" (N, num_classes, H, W); a layer the engine cannot show is absent.

    engine = open_engine("model.onnx", runtime="onnxruntime", layers=[...], threads=2)
    engine = open_engine("model.pt", layers=[...])           # a torch checkpoint of tools/torch_model.py
    engine = open_engine("port.npz", layers=[...])           # activations another port wrote

ONNX (`.onnx`), run by:
  onnxruntime   ONNX Runtime's CPU provider, `threads` intra-op threads
  openvino      OpenVINO on the CPU in fp32 (INFERENCE_PRECISION_HINT f32: unless told, it runs bf16 on CPUs
                that have it, which changed 2.2 % of the labels of a random-weights network)
  reference     onnx.reference.ReferenceEvaluator, the ONNX standard's own Python implementation (slow)
Every value of the graph that is named after one of npunet's layers (as `npunet export onnx` names them) is
made a graph output before the model is run, so the per-layer comparison needs no special export; a graph
with other names (e.g. from torch.onnx.export) is compared by its logits: the output named `logits`, else its
first output.

A torch checkpoint (`.pt`, `.pth`: a dict with "spec" and "state_dict", as `python -m tools.train` writes and
`python -m tools.convert` reads) is run by the torch mirror, tools/torch_model.py, which needs torch and this
repository's tools package (run from the repository root); each layer's output is caught by a forward hook on
the module of the same name (a GroupNorm's with the ReLU that follows it applied), the max-pool's and the
decoder's concat from the input of the module that reads them.

An `.npz` holds the activations another port wrote for the same slices: keys are npunet layer names and
"logits" (float32, (N, C, H, W)); "input", when present, is the input that port ran, compared with npunet's
preprocessing of the slices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from npunet.errors import NpunetError
from npunet.ports.extras import need, version
from npunet.text import one_line

RUNTIMES = ("onnxruntime", "openvino", "reference")
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "reference": "onnx"}
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


def open_engine(path, runtime: str = "onnxruntime", layers: list[str] = (), threads: int | None = None):
    """The engine for the file `path`, by its suffix (.onnx, .pt/.pth/.ckpt, .npz); NpunetError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise NpunetError(f"{path}: no such file (--against takes an .onnx model, a torch checkpoint .pt or an "
                          f".npz of activations)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxEngine(path, runtime, layers, threads)
    if suffix in TORCH_SUFFIXES:
        return TorchEngine(path, threads)
    if suffix == ".npz":
        return ActivationsFile(path, layers)
    raise NpunetError(f"{path}: --against takes an .onnx model, a torch checkpoint ({', '.join(TORCH_SUFFIXES)}) "
                      f"or an .npz of activations, not a {suffix or 'file without suffix'}")


class OnnxEngine:
    """An ONNX model run by one of RUNTIMES, every value named after a layer returned as well."""

    def __init__(self, model, runtime: str, layers=(), threads: int | None = None):
        if runtime not in RUNTIMES:
            raise NpunetError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        onnx = need("onnx", "running an ONNX model")
        need(RUNTIME_MODULES[runtime], f"--runtime {runtime}")
        source = str(model) if isinstance(model, (str, os.PathLike)) else "the model"
        if isinstance(model, (str, os.PathLike)):
            try:
                model = onnx.load(str(model))
            except Exception as exc:  # protobuf's DecodeError and kin: not an ONNX file
                raise NpunetError(f"{source}: not a readable ONNX model ({one_line(exc)})") from None
        self.model = model
        self.runtime = runtime
        self.description = f"{source} run by {runtime} {version(RUNTIME_MODULES[runtime])}"
        self.metadata = {p.key: p.value for p in model.metadata_props}
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        inputs = [v.name for v in graph.input if v.name not in initializers]
        if len(inputs) != 1:
            raise NpunetError(f"{source}: the graph takes {len(inputs)} inputs {inputs[:4]}; one is expected "
                              f"(the slices, N x C x H x W)")
        self.input = inputs[0]
        outputs = [v.name for v in graph.output]
        self.logits = "logits" if "logits" in outputs else outputs[0]
        written = {name for node in graph.node for name in node.output}
        self.layers = [name for name in layers if name in written]        # values named after npunet's layers
        self.outputs = [self.logits] + [name for name in self.layers if name != self.logits]
        self.source = source
        try:
            self._run = getattr(self, f"_session_{runtime}")(self._with_outputs(self.outputs), threads)
        except NpunetError:
            raise
        except Exception as exc:  # each runtime has its own errors for a graph it cannot load
            raise NpunetError(f"{source}: {runtime} cannot load it ({one_line(exc)})") from None

    def _with_outputs(self, names: list[str]) -> bytes:
        """The model with exactly `names` as its graph outputs, serialised."""
        from onnx import TensorProto, helper
        model = type(self.model)()
        model.CopyFrom(self.model)
        known = {v.name: v for v in model.graph.output}
        del model.graph.output[:]
        model.graph.output.extend(known.get(n) or helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in names)
        return model.SerializeToString()

    def _session_onnxruntime(self, data: bytes, threads):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3                  # errors only: no notes about unused initializers
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {self.input: x})

    def _session_openvino(self, data: bytes, threads):
        import openvino as ov
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        compiled = core.compile_model(core.read_model(data, b""), "CPU", config)
        if len(compiled.outputs) != len(self.outputs):
            raise NpunetError(f"OpenVINO gives {len(compiled.outputs)} outputs for the {len(self.outputs)} asked")
        return lambda x: [np.asarray(v) for v in compiled(x).values()]      # in the graph's output order

    def _session_reference(self, data: bytes, threads):
        from onnx import load_from_string
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(load_from_string(data))
        return lambda x: evaluator.run(None, {self.input: x})

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (N, C, H, W) -> {"logits": the model's logits (or first output), layer name: its output, ...}."""
        try:
            got = dict(zip(self.outputs, self._run(np.ascontiguousarray(x, np.float32))))
        except Exception as exc:  # the runtime's own error: a shape the graph does not take, an op it lacks
            raise NpunetError(f"{self.source}: {self.runtime} failed on an input of shape "
                              f"{'x'.join(map(str, x.shape))} ({one_line(exc)})") from None
        if self.logits != "logits":
            got["logits"] = got.pop(self.logits)
        return got


class TorchEngine:
    """A torch checkpoint run by the torch mirror (tools/torch_model.py), each layer caught by a hook."""

    def __init__(self, path: Path, threads: int | None = None):
        torch = need("torch", "a torch checkpoint")
        try:
            from tools.torch_model import build_model
        except ImportError:
            raise NpunetError("a torch checkpoint is run by the repository's tools/torch_model.py, which is not "
                              "importable here: run `python -m npunet parity ...` from the repository's root (the "
                              "folder holding tools/ and npunet/), or put that folder on PYTHONPATH") from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
            raise NpunetError(f"{path}: not a readable torch checkpoint ({one_line(exc)})") from None
        if not isinstance(checkpoint, dict) or "spec" not in checkpoint or "state_dict" not in checkpoint:
            raise NpunetError(f"{path}: a checkpoint must be a dict with 'spec' and 'state_dict' (as "
                              f"`python -m tools.train` writes)")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = build_model(checkpoint["spec"]).eval()
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as exc:
            raise NpunetError(f"{path}: the state_dict does not fit its spec ({one_line(exc)})") from None
        self.spec = checkpoint["spec"]
        self.description = f"{path} run by torch {torch.__version__} (tools/torch_model.py)"
        self.metadata = {}
        self.caught: dict[str, np.ndarray] = {}
        self._hook()

    def _hook(self) -> None:
        """Forward hooks that keep each layer's output under its npunet name."""
        from npunet.spec import layer_plan
        modules = dict(self.model.named_modules())
        keep = self.caught

        def output(name, relu=False):
            def hook(module, args, out):
                keep[name] = (out.clamp_min(0) if relu else out).detach().numpy().copy()
            return hook

        def input_of(name, channels=None):
            def hook(module, args):
                x = args[0] if channels is None else args[0][:, channels:]
                keep[name] = x.detach().numpy().copy()
            return hook
        for layer in layer_plan(self.spec):
            stage = layer.name.rsplit(".", 1)[0]
            if layer.op == "maxpool":                     # F.max_pool2d: what encoder stage i reads
                modules[stage].register_forward_pre_hook(input_of(layer.name))
            elif layer.op == "concat":                    # torch.cat: what the stage's first conv reads
                modules[f"{stage}.convs.0"].register_forward_pre_hook(input_of(layer.name))
            elif layer.op == "upsample":                  # F.interpolate: the concat's part after the skip
                modules[f"{stage}.convs.0"].register_forward_pre_hook(
                    input_of(layer.name, skip_channels(self.spec, stage)))
            elif layer.name in modules:
                modules[layer.name].register_forward_hook(output(layer.name, relu=layer.op == "norm_relu"))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.caught.clear()
        with self.torch.no_grad():
            logits = self.model(self.torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
        return {**self.caught, "logits": logits}


def skip_channels(spec: dict, decoder_stage: str) -> int:
    """The skip's channels in the concat of `decoder.j`: the upsampled part starts there."""
    j = int(decoder_stage.split(".")[1])
    return spec["encoder"][len(spec["encoder"]) - 2 - j]["channels"]


class ActivationsFile:
    """Activations another port wrote, as an .npz: layer names and "logits" (and "input") -> float32 arrays."""

    def __init__(self, path: Path, layers=()):
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # zipfile, ValueError (pickled arrays), OSError: not a plain .npz
            raise NpunetError(f"{path}: not a readable .npz of arrays ({one_line(exc)})") from None
        if "logits" not in arrays:
            raise NpunetError(f"{path}: has no 'logits' (keys: {', '.join(sorted(arrays)[:8]) or 'none'}); the "
                              f"file must hold the logits and any layer outputs, under npunet's layer names")
        known = set(layers) | {"logits", "input"}
        self.ignored = sorted(k for k in arrays if k not in known)
        self.arrays = {k: v for k, v in arrays.items() if k in known}
        self.description = f"{path} (activations: {len(self.arrays) - ('input' in arrays) - 1} layers + logits)"
        self.metadata = {}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(self.arrays)
