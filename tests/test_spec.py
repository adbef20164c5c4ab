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
    (lambda s: s["upsample"].update(mode="nearest"), "upsample mode"),
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
