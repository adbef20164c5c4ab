"""Checking a port against npunet: what someone porting the network to ONNX Runtime, OpenVINO, TensorRT, C,
Rust or WebGPU needs to find out, layer by layer, whether the port computes what npunet computes.

    onnx_export      the network as an ONNX graph, built from the spec and the weights (the `onnx` package,
                     no torch), its values named after npunet's layers          `npunet export onnx`
    onnx_ops         one function per npunet op that writes its ONNX nodes (shared by the export and by the
                     golden pack's one-op models)
    runtimes         an ONNX model run by ONNX Runtime, OpenVINO or onnx's reference evaluator, a torch
                     checkpoint, or an .npz of activations: every one gives {layer name: output}
    parity           npunet and one of those on the same CT slices: per layer max |diff|, relative
                     difference, float32 ULP histogram, the first layer beyond tolerance, the labels
                                                                                  `npunet parity`
    goldens          a pack of test vectors (.npy + manifest.json) any language can read `npunet goldens`
    golden_check     a runtime checked against a pack, by one-op ONNX models    `npunet goldens --check`
    ct_slices        the preprocessed CT slices a check runs
    random_weights   seeded random weights for any spec, without torch
    extras           the optional packages (onnx, onnxruntime, openvino), imported on demand

onnx, onnxruntime and openvino are optional (`pip install 'npunet[onnx]'`); without them a command says in one
line what to install. npunet's own run-time dependencies stay numpy, numba, scipy and nibabel.
"""
