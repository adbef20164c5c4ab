"""`npunet goldens` (npunet.ports.goldens, npunet.ports.golden_check): the pack holds what a port in another
language needs (the .npy files and a manifest with op, ONNX attributes, shapes, dtype, tolerance and SHA-256),
two packs from the same version, weights and CT are the same bytes, ONNX Runtime, OpenVINO and the reference
evaluator pass `--check`, npunet's own fast kernels pass too, a damaged pack is refused and a wrong output is
reported (exit 1)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from npunet import kernels as K
from npunet.cli import main
from npunet.ports.goldens import MANIFEST, load_array, read_pack

CT = "ts_abdomen_0000.nii.gz"


@pytest.fixture(scope="module")
def pack(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("goldens") / "pack"
    assert main(["goldens", "-o", str(folder), "--ct", str(data_dir / "imagesTr" / CT), "--slice", "56"]) == 0
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_packs_are_the_same_bytes(pack, data_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["goldens", "-o", str(again), "--ct", str(data_dir / "imagesTr" / CT), "--slice", "56",
                 "--threads", "1"]) == 0
    first, second = files_of(pack), files_of(again)
    size = sum(len(b) for b in first.values())
    print(f"\n  {len(first)} files, {size / 1e6:.1f} MB; identical: {first == second}")
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_the_manifest_describes_every_case(pack):
    manifest = read_pack(pack)                             # every SHA-256 verified
    cases = {case["name"]: case for case in manifest["cases"]}
    print(f"\n  {len(cases)} cases: {', '.join(cases)}")
    ops = {case["op"] for case in cases.values()}
    assert ops >= {"depthwise_conv3x3", "conv3x3", "pointwise_conv", "conv_transpose2x2", "group_norm", "eca",
                   "max_pool2x2", "upsample_bilinear2x", "resize_bilinear", "concat_channels", "upsample_argmax",
                   "network"}
    assert {"eca_k3_c16", "eca_k5_c128"} <= set(cases)                 # each kernel size the default spec uses
    assert cases["upsample_bilinear2x_align_corners_true"]["attributes"]["coordinate_transformation_mode"] == \
        "align_corners"
    assert cases["depthwise_conv3x3_odd"]["attributes"]["group"] == 3
    for case in cases.values():
        assert case["onnx_op"] and case["torch"] and set(case["tolerance"]) == set(case["outputs"])
        for entry in (*case["inputs"].values(), *case["outputs"].values()):
            array = load_array(pack, entry)
            assert list(array.shape) == entry["shape"] and str(array.dtype) == entry["dtype"]
            assert array.dtype in (np.float32, np.uint8) and array.dtype.byteorder in "<|="
            assert hashlib.sha256((pack / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    network = cases["network"]
    assert network["ct"] == "ts_abdomen" and network["slice"] == 56
    assert len([k for k in network["outputs"] if k.startswith("layers/")]) == len(network["attributes"]["layers"])
    assert network["outputs"]["labels"]["dtype"] == "uint8"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "reference"])
def test_a_runtime_passes_the_check(pack, runtime, capsys):
    pytest.importorskip({"reference": "onnx"}.get(runtime, runtime), reason="the onnx extra: pip install -e '.[onnx]'")
    code = main(["goldens", "--check", str(pack), "--runtime", runtime, "--threads", "2"])
    out = capsys.readouterr().out
    print("\n" + out)
    assert code == 0
    assert out.splitlines()[-1].startswith("29 of 29 outputs within tolerance")


def test_npunets_fast_kernels_pass_the_pack_too(pack):
    """The expected outputs come from the NumPy twins; the Numba kernels the network runs agree with them."""
    manifest = read_pack(pack)
    run = {"depthwise_conv3x3": lambda a, p: K.depthwise_conv3x3(a["x"], a["w"]),
           "conv3x3": lambda a, p: K.conv3x3(a["x"], a["w"]),
           "pointwise_conv": lambda a, p: K.pointwise_conv(a["x"], a["w"], a.get("bias")),
           "conv_transpose2x2": lambda a, p: K.conv_transpose2x2(a["x"], a["w"], a["bias"]),
           "group_norm": lambda a, p: K.group_norm(a["x"], a["weight"], a["bias"], p["num_groups"], p["epsilon"],
                                                   relu=p["relu"]),
           "eca": lambda a, p: K.eca(a["x"], a["w"]),
           "max_pool2x2": lambda a, p: K.max_pool2x2(a["x"]),
           "upsample_bilinear2x": lambda a, p: K.upsample_bilinear2x(
               a["x"], p["coordinate_transformation_mode"] == "align_corners"),
           "resize_bilinear": lambda a, p: K.resize_bilinear(a["x"], *p["sizes"]),
           "concat_channels": lambda a, p: K.concat_channels(a["skip"], a["x"]),
           "upsample_argmax": lambda a, p: K.upsample_argmax(a["x"], *p["sizes"], *p["crop"].values())}
    worst = 0.0
    for case in manifest["cases"]:
        if case["op"] == "network":
            continue
        arrays = {name: load_array(pack, entry) for name, entry in case["inputs"].items()}
        got, want = run[case["op"]](arrays, case["attributes"]), load_array(pack, case["outputs"]["out"])
        tolerance = case["tolerance"]["out"]
        if "min_agreement" in tolerance:
            assert (got == want).mean() >= tolerance["min_agreement"], case["name"]
            continue
        diff = float(np.abs(got.astype(np.float64) - want).max())
        worst = max(worst, diff / max(tolerance["max_abs_diff"], 1e-30) if tolerance["max_abs_diff"] else diff)
        assert diff <= tolerance["max_abs_diff"], f"{case['name']}: {diff:.2e}"
    print(f"\n  npunet's fast kernels: at most {worst:.2f} of each case's tolerance")


def test_a_damaged_pack_is_refused(pack, tmp_path, capsys):
    import shutil
    damaged = tmp_path / "damaged"
    shutil.copytree(pack, damaged)
    target = damaged / "conv3x3_odd" / "out.npy"
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    assert main(["goldens", "--check", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv3x3_odd/out.npy: missing or changed" in err


def test_a_wrong_output_fails_the_check(pack, tmp_path, capsys):
    """A pack whose expected output for one case is off (as a runtime's wrong answer would be): that case is
    FAILED and the exit code is 1."""
    import shutil
    pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")
    wrong = tmp_path / "wrong"
    shutil.copytree(pack, wrong, ignore=shutil.ignore_patterns("network"))
    manifest = json.loads((wrong / MANIFEST).read_text())
    manifest["cases"] = [c for c in manifest["cases"] if c["op"] != "network"]
    case = next(c for c in manifest["cases"] if c["name"] == "upsample_bilinear2x_align_corners_false")
    entry = case["outputs"]["out"]
    out = np.load(wrong / entry["file"])
    np.save(wrong / entry["file"], np.ascontiguousarray(out[..., ::-1]))   # mirrored: a wrong answer
    entry["sha256"] = hashlib.sha256((wrong / entry["file"]).read_bytes()).hexdigest()
    (wrong / MANIFEST).write_text(json.dumps(manifest))
    assert main(["goldens", "--check", str(wrong)]) == 1
    out = capsys.readouterr().out
    print("\n" + out)
    assert "upsample_bilinear2x_align_corners_false" in out.splitlines()[-1]


def test_without_a_ct_the_pack_has_the_kernel_cases(tmp_path, capsys):
    folder = tmp_path / "kernels"
    assert main(["goldens", "-o", str(folder)]) == 0
    assert "no --ct" in capsys.readouterr().err
    assert "network" not in {case["op"] for case in read_pack(folder)["cases"]}


@pytest.mark.parametrize("argv, message", [
    (["-o", "{tmp}/p", "--slice", "3"], "--slice needs --ct"),
    (["--check", "{tmp}", "--ct", "x.nii.gz"], "are for making a pack"),
    (["--check", "{tmp}"], "not a golden pack"),
    (["-o", "{tmp}/p", "--ct", "{data}", "--slice", "999"], "--slice 999 is out of range"),
])
def test_user_mistakes_are_one_line(argv, message, tmp_path, data_dir, capsys):
    argv = [a.format(tmp=tmp_path, data=data_dir / "imagesTr" / CT) for a in argv]
    assert main(["goldens", *argv]) == 2
    err = capsys.readouterr().err
    print("\n  " + err.strip())
    assert err.count("\n") == 1 and message in err
