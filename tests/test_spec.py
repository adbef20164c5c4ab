"""The architecture as data: the built-in specs, the tensor list, and `npunet summary`."""

import json

import numpy as np
import pytest

from npunet.cli import main
from npunet.spec import SpecError, builtin_spec_names, check_spec, expected_tensors, layer_plan, load_spec
from npunet.summary import layer_costs


def n_params(spec):
    return sum(int(np.prod(s)) for s in expected_tensors(spec).values())


def test_default_matches_paper_reconstruction():
    spec = load_spec("dsconv_eca_unet")
    assert n_params(spec) == 406_657
    macs = sum(r.macs for r in layer_costs(spec, 192, 192))
    print(f"\n  dsconv_eca_unet: {n_params(spec):,} parameters, {macs / 1e9:.4f} G multiply-adds")
    assert abs(macs / 1e9 - 1.233) < 0.001


def test_builtin_specs_cover_ablations():
    names = builtin_spec_names()
    assert {"dsconv_eca_unet", "standard_unet", "dsconv_eca_unet_transpose"} <= set(names)
    std = load_spec("standard_unet")
    assert {layer.op for layer in layer_plan(std)}.isdisjoint({"depthwise", "pointwise", "eca"})
    tr = load_spec("dsconv_eca_unet_transpose")
    assert sum(layer.op == "transpose" for layer in layer_plan(tr)) == 4


def test_eca_kernel_in_tensor_shape():
    t = expected_tensors(load_spec("dsconv_eca_unet"))
    assert [t[f"encoder.{i}.eca.conv.weight"] for i in range(5)] == [(1, 1, 3)] * 3 + [(1, 1, 5)] * 2


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(format="x"), "format"),
    (lambda s: s["encoder"][1].update(channels=30), "divisible"),
    (lambda s: s["upsample"].update(mode="nearest"), "upsample.mode"),
    (lambda s: s["decoder"].pop(), "decoder stages"),
    (lambda s: s["encoder"][0].update(eca_kernel=4), "odd"),
])
def test_bad_specs_are_refused(edit, match):
    spec = json.loads(json.dumps(load_spec("dsconv_eca_unet")))
    edit(spec)
    with pytest.raises(SpecError, match=match):
        check_spec(spec)


def test_variant_spec_from_file(tmp_path):
    spec = load_spec("dsconv_eca_unet")
    spec["depthwise_norm"] = True
    spec["name"] = "gn_after_depthwise"
    path = tmp_path / "v.json"
    path.write_text(json.dumps(spec))
    t = expected_tensors(load_spec(path))
    assert "encoder.1.convs.0.depthwise_norm.weight" in t
    assert n_params(load_spec(path)) > 406_657


def test_summary_command_last_line(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    print("\n  " + out[-1])
    assert "406,657 parameters" in out[-1] and "1.233 G" in out[-1]
    assert any(line.startswith("decoder.1.convs.0.conv") and "64x48x48" in line for line in out)


def test_summary_compare_standard(capsys):
    assert main(["summary", "--compare", "standard"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    print("\n  " + last)
    assert "with standard 3x3 convs" in last


def test_summary_bad_spec_is_one_line_error(capsys):
    assert main(["summary", "--spec", "no_such_spec"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no spec named" in err


SPEC_EDITS = {
    # name: (edit of the default spec, words expected in the one-line error)
    "groups 0": (lambda s: s["norm"].update(groups=0), "norm.groups: expected an integer in 1..4096, got 0"),
    "string channels": (lambda s: s["encoder"][1].update(channels="32"), "encoder[1].channels"),
    "float channels": (lambda s: s["encoder"][1].update(channels=32.0), "encoder[1].channels"),
    "bool channels": (lambda s: s["encoder"][1].update(channels=True), "encoder[1].channels"),
    "num_convs 1e9": (lambda s: s["encoder"][2].update(num_convs=1e9), "encoder[2].num_convs"),
    "num_convs 10**9": (lambda s: s["encoder"][2].update(num_convs=10**9), "encoder[2].num_convs"),
    "missing norm": (lambda s: s.pop("norm"), "missing key 'norm'"),
    "missing channels": (lambda s: s["decoder"][0].pop("channels"), "decoder[0]: missing key 'channels'"),
    "unknown key": (lambda s: s.update(dropout=0.5), "unknown key 'dropout'"),
    "eps 0": (lambda s: s["norm"].update(eps=0), "norm.eps"),
    "eca in decoder": (lambda s: s["decoder"][0].update(eca_kernel=3), "ECA in the decoder"),
    "eca even": (lambda s: s["encoder"][0].update(eca_kernel=4), "odd"),
    "norm type": (lambda s: s["norm"].update(type="batchnorm"), "norm.type"),
    "num_classes 1000": (lambda s: s.update(num_classes=1000), "num_classes"),
    "encoder list": (lambda s: s.update(encoder={}), "encoder: expected a list"),
    "stage not object": (lambda s: s["encoder"].__setitem__(0, 16), "encoder[0]: expected an object"),
    "too many stages": (lambda s: s.update(encoder=s["encoder"] * 2, decoder=s["decoder"] * 2 + s["decoder"][:1]),
                        "encoder: expected a list of 1..8 items"),
    "too many parameters": (lambda s: [st.update(channels=4096, num_convs=8) for st in s["encoder"] + s["decoder"]],
                            "parameters, more than"),
    "depthwise norm on 3 channels": (lambda s: (s.update(depthwise_norm=True), s["encoder"][0].update(conv="ds")),
                                     "not divisible by 8 groups"),
}


@pytest.mark.parametrize("name", list(SPEC_EDITS))
def test_spec_schema_one_line_errors(tmp_path, capsys, name):
    """Each bad spec through `npunet summary --spec FILE`: exit 2, one line naming the key, no traceback."""
    edit, words = SPEC_EDITS[name]
    spec = json.loads(json.dumps(load_spec("dsconv_eca_unet")))
    edit(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    assert main(["summary", "--spec", str(path)]) == 2
    err = capsys.readouterr().err
    print(f"\n  {name}: {err.strip()}")
    assert err.count("\n") == 1 and err.startswith("npunet summary: error: ") and words in err, err
    with pytest.raises(SpecError, match=words.replace("[", "\\[").replace("]", "\\]").replace("(", "\\(")):
        check_spec(spec)


BAD_FILES = {
    "binary file": (lambda p: p.write_bytes(bytes(range(256)) * 4), "not UTF-8 text"),
    "JSON list": (lambda p: p.write_text("[1, 2, 3]"), "expected an object, got a list of 3"),
    "JSON string": (lambda p: p.write_text('"dsconv_eca_unet"'), "expected an object"),
    "empty file": (lambda p: p.write_text(""), "not valid JSON"),
    "not JSON": (lambda p: p.write_text("{format: 1}"), "not valid JSON"),
    "NaN": (lambda p: p.write_text('{"format": NaN}'), "NaN is not a JSON number"),
    "duplicate key": (lambda p: p.write_text('{"format": "npunet-spec/1", "format": "x"}'), "appears twice"),
    "deep nesting": (lambda p: p.write_text("[" * 50000), "too deeply"),
    "huge file": (lambda p: p.write_bytes(b" " * (2**20 + 1)), "more than the 1,048,576"),
    "folder": (lambda p: p.mkdir(), "not a file"),
    "missing": (lambda p: None, "no spec named"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_spec_files(tmp_path, capsys, name):
    make, words = BAD_FILES[name]
    path = tmp_path / "spec.json"
    make(path)
    assert main(["summary", "--spec", str(path)]) == 2
    err = capsys.readouterr().err
    print(f"\n  {name}: {err.strip()[:200]}")
    assert err.count("\n") == 1 and words in err, err


def test_summary_size_and_weights_errors(tmp_path, capsys):
    for argv, words in ((["--size", "100", "100"], "multiples of 16"), (["--size", "-16", "16"], "multiples"),
                        (["--weights", str(tmp_path)], "is a folder"),
                        (["--weights", str(tmp_path / "none.npuw")], "does not exist")):
        assert main(["summary", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
    with pytest.raises(SystemExit) as info:         # a bad option: argparse's exit, one line too
        main(["summary", "--size", "x", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "invalid int value" in err, err
