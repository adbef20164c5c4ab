"""python -m tools.train and tools/training/: the marginal Dice + CE loss for partial labels, augmentation invariants, training inputs
equal to npunet's inference inputs, and a tiny training run whose checkpoint converts by name."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from tools import REPO, train  # noqa: E402
from tools.training.augment import (AUGMENT_DEFAULTS, augment_batch, identity_augment_params,  # noqa: E402
                                    sample_augment_params)
from tools.training.data import build_dataset, resize_labels_nearest  # noqa: E402
from tools.training.description import (annotated_organs, label_names, parse_class_weights,  # noqa: E402
                                        parse_pairs, parse_unknown, read_dataset_json)
from tools.training.loss import marginal_dice_ce_loss  # noqa: E402
from tools.training.sampling import OrganSampler  # noqa: E402
from tools.training.status import read_status  # noqa: E402

C = 14


def _reference_dice_loss(logits, target, classes, smooth=1e-5):
    """Plain batch soft Dice over `classes`, written independently of the tool."""
    p = torch.softmax(logits, 1)
    vals = []
    for c in classes:
        g = (target == c).float()
        pc = p[:, c]
        vals.append((2 * (pc * g).sum() + smooth) / (pc.sum() + g.sum() + smooth))
    return 1 - torch.stack(vals).mean()


# ------------------------------------------------------------------------------------------- loss --

def test_loss_fully_annotated_is_standard_ce_plus_dice():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, C, 9, 7, generator=gen, dtype=torch.float64)
    target = torch.randint(0, C, (3, 9, 7), generator=gen)
    known = torch.ones(3, C, dtype=torch.bool)
    loss, dice, ce = marginal_dice_ce_loss(logits, target, known)
    ce_ref = F.cross_entropy(logits.float(), target)
    dice_ref = _reference_dice_loss(logits.float(), target, range(1, C))
    print(f"|ce - F.cross_entropy| = {abs(ce - ce_ref).item():.2e}, |dice - ref| = {abs(dice - dice_ref).item():.2e}")
    assert torch.allclose(ce, ce_ref, atol=1e-6)
    assert torch.allclose(dice, dice_ref, atol=1e-6)
    assert torch.allclose(loss, ce_ref + dice_ref, atol=1e-6)


def test_loss_unknown_organ_is_not_penalised_as_background():
    """Organ k unannotated: moving a background pixel's probability from class 0 to class k changes nothing."""
    gen = torch.Generator().manual_seed(1)
    k = 10
    logits = torch.randn(2, C, 6, 6, generator=gen)
    target = torch.randint(0, C, (2, 6, 6), generator=gen)
    target[target == k] = 0
    target[:, :3] = 0                                    # plenty of background
    known = torch.ones(2, C, dtype=torch.bool)
    known[:, k] = False
    a = logits.clone()
    a[:, k] = a[:, 0] - 20.0                             # mass on background
    b = a.clone()
    bg = target == 0
    b[:, 0][bg], b[:, k][bg] = a[:, k][bg], a[:, 0][bg]  # the same mass on organ k where the label is 0
    la, lb = marginal_dice_ce_loss(a, target, known), marginal_dice_ce_loss(b, target, known)
    for x, y in zip(la, lb):
        assert torch.allclose(x, y, atol=1e-6), (la, lb)
    # With k annotated, the same move is penalised (the standard loss).
    full = torch.ones(2, C, dtype=torch.bool)
    assert marginal_dice_ce_loss(b, target, full)[0] > marginal_dice_ce_loss(a, target, full)[0] + 1.0


def test_loss_by_hand():
    """3 classes, 1 sample, 2 pixels labelled [0, 1], all logits 0 (p = 1/3 everywhere)."""
    logits = torch.zeros(1, 3, 1, 2)
    target = torch.tensor([[[0, 1]]])
    s = 1e-5
    loss, dice, ce = marginal_dice_ce_loss(logits, target, torch.tensor([[True, True, True]]), smooth=s)
    assert ce.item() == pytest.approx(math.log(3), abs=1e-6)
    d1 = (2 / 3 + s) / (2 / 3 + 1 + s)                   # tp 1/3, sum p 2/3, sum g 1
    d2 = s / (2 / 3 + s)                                 # class 2 absent
    assert dice.item() == pytest.approx(1 - (d1 + d2) / 2, abs=1e-6)
    # Class 2 unknown: pixel 0 (label 0) scores log(p0 + p2) = log(2/3); Dice over class 1 only.
    loss, dice, ce = marginal_dice_ce_loss(logits, target, torch.tensor([[True, True, False]]), smooth=s)
    assert ce.item() == pytest.approx((-math.log(2 / 3) - math.log(1 / 3)) / 2, abs=1e-6)
    assert dice.item() == pytest.approx(1 - d1, abs=1e-6)
    assert loss.item() == pytest.approx(ce.item() + dice.item(), abs=1e-6)


def test_loss_is_stable_and_differentiable_with_extreme_logits():
    logits = torch.zeros(2, C, 4, 4)
    logits[:, 5] = 1e4                                   # softmax saturates
    logits.requires_grad_(True)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    known = torch.zeros(2, C, dtype=torch.bool)
    known[1, 3] = True                                   # sample 0 annotates nothing, sample 1 only organ 3
    loss, dice, ce = marginal_dice_ce_loss(logits, target, known)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert ce.item() < 1e-3                              # organ 5 is unknown everywhere: merged into background


def test_class_weight_weights_the_ce_as_torch_does_and_leaves_dice_alone():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, C, 8, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, C, (2, 8, 5), generator=gen)
    known = torch.ones(2, C, dtype=torch.bool)
    weight = torch.ones(C)
    weight[13], weight[3] = 3.0, 0.5                     # left kidney up, spleen down
    _, dice, ce = marginal_dice_ce_loss(logits, target, known, class_weight=weight)
    ce_ref = F.cross_entropy(logits.float(), target, weight=weight)
    plain = marginal_dice_ce_loss(logits, target, known)
    print(f"|weighted ce - F.cross_entropy(weight=...)| = {abs(ce - ce_ref).item():.2e}")
    assert torch.allclose(ce, ce_ref, atol=1e-6)
    assert abs(ce - plain[2]) > 1e-3                     # the weights change the CE ...
    assert torch.equal(dice, plain[1])                   # ... and not the Dice
    ones = marginal_dice_ce_loss(logits, target, known, class_weight=torch.ones(C))
    assert torch.allclose(ones[2], plain[2], atol=1e-12)


def test_class_weight_gives_merged_background_the_background_weight():
    """Organ 10 unknown: a voxel labelled 0 scores log(p0 + p10) with weight class_weight[0]."""
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = math.log(2.0)                   # pixel 0: p = (1/4, 1/4, 1/2)
    target = torch.tensor([[[0, 1]]])
    known = torch.tensor([[True, True, False]])
    _, _, ce = marginal_dice_ce_loss(logits, target, known, class_weight=torch.tensor([2.0, 1.0, 7.0]))
    expected = (2.0 * -math.log(0.75) + 1.0 * -math.log(1 / 3)) / 3.0
    assert ce.item() == pytest.approx(expected, abs=1e-6)


def test_class_weight_option_reads_names_and_refuses_nonsense(data_dir, tmp_path):
    names = label_names(read_dataset_json(data_dir))
    weights = parse_class_weights(["left_kidney=2", "3=0.5"], names)
    assert len(weights) == C and weights[13] == 2.0 and weights[3] == 0.5 and weights.count(1.0) == C - 2
    assert parse_class_weights([], names) is None
    for bad, words in (("left_kidney=0", "must look like LABEL=W with W > 0"),
                       ("left_kidney", "must look like LABEL=W"), ("kidneyy=2", "unknown label 'kidneyy'")):
        with pytest.raises(SystemExit) as refused:
            train.main(["--data", str(data_dir), "--output", str(tmp_path / "run"), "--class-weight", bad])
        assert words in str(refused.value)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- augmentation --

def _batch(n=4, size=48):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.zeros(n, size, size, dtype=torch.long)
    y[:, 10:30, 5:20] = 3
    y[:, 20:40, 25:45] = 11
    y[:, 2:6, 40:44] = 13
    return x, y


def test_augment_keeps_shapes_and_label_set():
    x, y = _batch()
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        xa, ya = augment_batch(x, y, generator=gen)
        assert xa.shape == x.shape and ya.shape == y.shape and xa.dtype == x.dtype and ya.dtype == y.dtype
        assert set(torch.unique(ya).tolist()) <= {0, 3, 11, 13}
        assert torch.isfinite(xa).all()


def test_augment_with_identity_parameters_returns_input():
    x, y = _batch()
    xa, ya = augment_batch(x, y, params=identity_augment_params(x.shape[0]))
    print(f"identity augment: max |dx| = {(xa - x).abs().max().item():.2e}")
    assert torch.allclose(xa, x, atol=1e-5)
    assert torch.equal(ya, y)


def test_augment_rotation_moves_labels_with_the_image():
    """Labels and image go through the same grid: a label-coded image stays aligned with its labels."""
    x, y = _batch(n=2)
    x = y[:, None].float().expand(-1, 3, -1, -1).contiguous() / 13.0
    p = identity_augment_params(2)
    p["angle"] = torch.tensor([0.2, -0.25])
    p["scale"] = torch.tensor([1.15, 0.85])
    xa, ya = augment_batch(x, y, params=p)
    inside = (xa[:, 0] * 13.0 - ya.float()).abs() < 0.5     # agree except at blurred edges
    assert inside.float().mean() > 0.95


def test_flip_mirrors_the_slice_across_the_body_and_swaps_left_and_right_organs():
    """Axis H of a canonical (RAS) slice runs across the body: the flip reverses it, and the right kidney
    (2) of the mirrored image is the left kidney (13) of the original, so sides stay on their side."""
    from npunet.labels import mirror_labels
    x, y = _batch(n=2)
    y[:, 30:34, 10:14] = 2                                   # a right kidney at rows 30-33
    mirror = torch.tensor(mirror_labels())
    p = identity_augment_params(2)
    p["flip"] = torch.tensor([True, False])
    xa, ya = augment_batch(x, y, params=p, mirror=mirror)
    h = y.shape[1]
    assert torch.allclose(xa[0], x[0].flip(-2), atol=1e-5) and torch.allclose(xa[1], x[1], atol=1e-5)
    assert torch.equal(ya[1], y[1])
    assert (ya[0, h - 34:h - 30, 10:14] == 13).all()         # the right kidney, mirrored, is a left kidney
    assert (ya[0, h - 6:h - 2, 40:44] == 2).all()            # and the left kidney (13 at rows 2-5) a right one
    assert (ya[0, h - 40:h - 20, 25:45] == 11).all()         # unpaired organs keep their label
    twice, y2 = augment_batch(xa, ya, params=p, mirror=mirror)
    assert torch.allclose(twice, x, atol=1e-5) and torch.equal(y2, y)


def test_organ_shift_moves_each_organ_by_its_own_value_on_every_channel():
    x, y = _batch(n=2)
    x = torch.full_like(x, 0.5)
    yc = y[:, None].expand(-1, 3, -1, -1).clone()
    yc[:, 0] = 0                                              # the slice below shows no organ
    p = identity_augment_params(2)
    p["organ_shift"] = torch.zeros(2, C)
    p["organ_shift"][0, 11] = 0.1
    p["organ_shift"][1, 13] = -0.2
    xa, _ = augment_batch(x, y, params=p, y_context=yc)
    want = x + torch.where(yc == 11, 0.1, 0.0) * torch.tensor([1.0, 0.0])[:, None, None, None] \
        + torch.where(yc == 13, -0.2, 0.0) * torch.tensor([0.0, 1.0])[:, None, None, None]
    print(f"organ shift: max |diff| = {(xa - want).abs().max().item():.2e}")
    assert torch.allclose(xa, want, atol=1e-5)


def test_sampled_flip_and_organ_shift_are_drawn_only_when_asked():
    cfg = {**AUGMENT_DEFAULTS}
    plain = sample_augment_params(4, torch.Generator().manual_seed(0), cfg=cfg)
    assert "flip" not in plain and "organ_shift" not in plain
    on = sample_augment_params(400, torch.Generator().manual_seed(0),
                                 cfg={**cfg, "p_flip": 0.5, "organ_shift": 0.1})
    share = on["flip"].float().mean().item()
    assert 0.4 < share < 0.6
    assert (on["organ_shift"][:, 0] == 0).all() and on["organ_shift"].abs().max() <= 0.1
    assert on["organ_shift"][:, 1:].std() > 0.05


# ------------------------------------------------------------------------------------------- data --

def test_label_resize_uses_the_image_window_and_half_pixel_centres():
    lab = np.arange(4 * 6).reshape(1, 4, 6) + 1          # H=4, W=6 -> padded to 6x6 with one row each side
    out = resize_labels_nearest(lab, 3)                 # src = floor((dst + 0.5) * 6 / 3) = 1, 3, 5
    padded = np.zeros((6, 6), int)
    padded[1:5] = lab[0]
    assert np.array_equal(out[0], padded[np.ix_([1, 3, 5], [1, 3, 5])])
    assert np.array_equal(resize_labels_nearest(lab[:, :, :4], 4)[0], lab[0, :, :4])   # square: identity


def test_training_inputs_equal_npunet_inference_inputs(data_dir):
    """build_dataset's images are the very arrays npunet.pipeline feeds its network for the same CT."""
    from npunet.io.nifti import read_ct
    from npunet.pipeline import segment_array
    from npunet.preprocess import DEFAULT_PREPROCESSING

    case = "ts_chest"
    ds = build_dataset(data_dir, [case], DEFAULT_PREPROCESSING, verbose=False)

    seen = []

    class Spy:                                            # a "network" that records what it is given
        preprocessing = DEFAULT_PREPROCESSING

        def __call__(self, x):
            seen.append(np.array(x))
            return np.zeros((x.shape[0], C) + x.shape[2:], np.float32)

    img = read_ct(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
    segment_array(img.get_fdata(dtype=np.float32), img.affine, Spy(), batch_size=8, postprocess=False)
    inference = np.concatenate(seen)
    assert inference.shape == tuple(ds["images"].shape)
    print(f"{case}: {inference.shape[0]} slices, max |train - inference| = "
          f"{np.abs(ds['images'].numpy() - inference).max():.1e}")
    assert np.array_equal(ds["images"].numpy(), inference)
    # labels: on the same grid, with values from the annotated set
    assert ds["labels"].shape == (inference.shape[0], 192, 192)
    assert set(torch.unique(ds["labels"]).tolist()) <= {0} | set(ds["annotated"][case])
    assert ds["known"].all()                              # ts_chest annotates every organ


def test_partial_annotation_and_unknown_option(data_dir):
    meta = read_dataset_json(data_dir)
    names = label_names(meta)
    unknown = parse_unknown(["ts_abdomen:esophagus", "ts_chest:10,left kidney"], names)
    assert unknown == {"ts_abdomen": [10], "ts_chest": [10, 13]}
    assert annotated_organs("ts_cta", meta, unknown) == [5]
    assert annotated_organs("ts_abdomen", meta, unknown) == [k for k in range(1, 14) if k != 10]
    assert annotated_organs("not_listed", meta, {}) == list(range(1, 14))


def test_tiny_training_run_writes_a_convertible_checkpoint(data_dir, tmp_path):
    from npunet.spec import expected_tensors

    out = tmp_path / "run"
    rc = train.main(["--data", str(data_dir), "--cases", "ts_chest", "--epochs", "1", "--steps-per-epoch", "2",
                     "--batch-size", "2", "--device", "cpu", "--threads", "2", "--output", str(out)])
    assert rc == 0
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"spec", "state_dict", "config", "cases", "labels", "preprocessing"}
    want = expected_tensors(ckpt["spec"])
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()} == want
    assert list(ckpt["state_dict"]) == list(want)
    assert ckpt["cases"] == ["ts_chest"]
    assert ckpt["config"]["epochs"] == 1 and ckpt["config"]["steps_per_epoch"] == 2
    assert ckpt["config"]["epochs_done"] == 1
    assert ckpt["labels"][10] == "esophagus"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and set(log[0]) >= {"epoch", "loss", "dice", "ce", "lr", "seconds"}
    assert math.isfinite(log[0]["loss"])

    # python -m tools.convert accepts it, and the npunet weights file carries the same tensors.
    from npunet.weights import read_weights
    from tools.convert import convert
    header, tensors = read_weights(convert(out / "checkpoint.pt", tmp_path / "w.npuw"))
    assert header["spec"] == ckpt["spec"]
    for name, value in ckpt["state_dict"].items():
        assert np.array_equal(tensors[name], value.numpy()), name


# --------------------------------------------------------------------- sampling, zoom, resume --

def test_organ_sampler_draws_rare_organs_as_often_as_common_ones():
    presence = torch.zeros(100, C, dtype=torch.bool)
    presence[:90, 1] = True                              # organ 1 on 90 slices, organ 2 on 10, 10 slices empty
    presence[90:, 2] = True
    presence[:, 0] = True
    sampler = OrganSampler(presence, batch_size=8, seed=0, p_organ=1.0)
    drawn = torch.cat([sampler.next_batch() for _ in range(500)])
    share_rare = (drawn >= 90).float().mean().item()
    print(f"organ sampler: share of slices with the rare organ {share_rare:.3f} (it is on 10 % of the slices)")
    assert 0.45 < share_rare < 0.55
    uniform = OrganSampler(presence, batch_size=8, seed=0, p_organ=0.0)
    share_uniform = (torch.cat([uniform.next_batch() for _ in range(500)]) >= 90).float().mean().item()
    assert 0.07 < share_uniform < 0.13


def test_pair_sampling_draws_slices_that_show_both_organs():
    """Spleen (3) on slices 0-49, left kidney (13) on 40-89: only 40-49 show both. With p_organ 1 and p_pair
    0.5 half of the draws come from those ten slices, as well as the organ draws that land there by chance;
    with no pairs the draws are those of a sampler without the option, draw for draw."""
    areas = torch.zeros(100, C, dtype=torch.int64)
    areas[:50, 3], areas[40:90, 13] = 30, 20
    paired = OrganSampler(areas, batch_size=8, seed=0, p_organ=1.0, pairs=[(13, 3)], p_pair=0.5)
    drawn = torch.cat([paired.next_batch() for _ in range(1000)])
    both = ((drawn >= 40) & (drawn < 50)).float().mean().item()
    print(f"pair sampler: share of slices showing both organs {both:.3f} (expected 0.5 + 0.5 * 0.2 = 0.6)")
    assert 0.56 < both < 0.64
    plain, pairless = (OrganSampler(areas, batch_size=8, seed=0, p_organ=0.5),
                       OrganSampler(areas, batch_size=8, seed=0, p_organ=0.5, pairs=[(13, 3)], p_pair=0.0))
    for _ in range(50):
        assert torch.equal(plain.next_batch(), pairless.next_batch())
    with pytest.raises(ValueError, match=r"both labels of the pair\(s\) \[\(13, 2\)\]"):
        OrganSampler(areas, batch_size=8, seed=0, pairs=[(13, 2)], p_pair=0.5)


@pytest.mark.parametrize("option, words", [
    (["--p-pair", "0.3"], "--p-pair 0.3 needs --sampling organs and at least one --pair"),
    (["--sampling", "organs", "--p-pair", "2"], "--p-pair 2.0 is not in [0, 1]")])
def test_pair_options_are_checked(option, words, tmp_path):
    with pytest.raises(SystemExit) as refused:
        train.main(["--output", str(tmp_path / "run"), *option])
    assert words in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_pair_option_reads_names_and_refuses_a_pair_no_slice_shows(data_dir, tmp_path):
    names = label_names(read_dataset_json(data_dir))
    assert parse_pairs(["left_kidney:spleen", "liver:2"], names) == [(13, 3), (1, 2)]
    for bad, words in (("spleen", "must look like LABEL:LABEL"), ("spleen:spleen", "two different organs")):
        with pytest.raises(SystemExit) as refused:
            parse_pairs([bad], names)
        assert words in str(refused.value)
    with pytest.raises(SystemExit) as refused:      # ts_cta labels only the aorta: no slice shows a kidney
        train.main(["--data", str(data_dir), "--cases", "ts_cta", "--sampling", "organs", "--pair",
                    "left_kidney:aorta", "--p-pair", "0.5", "--epochs", "1", "--output", str(tmp_path / "run")])
    assert "no training slice shows both labels of the pair(s) [(13, 5)]" in str(refused.value)


def test_organ_slice_power_draws_an_organs_thin_ends_more_often():
    """One organ on slices 0-3 with 100, 100, 25 and 1 pixels (a pole at slice 3): with slice_power 0.5 the
    weights are 0.1, 0.1, 0.2 and 1 (shares 1/14, 1/14, 2/14, 10/14); with 0 the draws are the uniform
    sampler's, draw for draw."""
    areas = torch.zeros(6, C, dtype=torch.int64)
    areas[:4, 5] = torch.tensor([100, 100, 25, 1])
    areas[:, 0] = 192 * 192 - areas[:, 5]
    powered = OrganSampler(areas, batch_size=8, seed=0, p_organ=1.0, slice_power=0.5)
    drawn = torch.cat([powered.next_batch() for _ in range(2000)])
    shares = torch.bincount(drawn, minlength=6).double() / len(drawn)
    expected = torch.tensor([1, 1, 2, 10, 0, 0], dtype=torch.float64) / 14
    print(f"\n  slice_power 0.5: shares {[round(v, 3) for v in shares.tolist()]}, expected "
          f"{[round(v, 3) for v in expected.tolist()]}")
    assert torch.allclose(shares, expected, atol=0.015)
    plain, by_presence = (OrganSampler(areas, batch_size=8, seed=0, p_organ=0.7),
                          OrganSampler(areas > 0, batch_size=8, seed=0, p_organ=0.7))
    for _ in range(50):
        assert torch.equal(plain.next_batch(), by_presence.next_batch())


def test_spacing_aware_zoom_brings_every_scan_to_the_drawn_pixel_size():
    cfg = {**AUGMENT_DEFAULTS, "zoom_mm": [2.0, 2.0]}
    params = sample_augment_params(3, torch.Generator().manual_seed(0), cfg=cfg,
                                     mm_per_pixel=torch.tensor([1.0, 2.0, 4.0]))
    assert torch.allclose(params["scale"], torch.tensor([0.5, 1.0, 2.0]))   # a 1 mm pixel shrinks by half
    with pytest.raises(ValueError, match="mm_per_pixel"):
        sample_augment_params(3, cfg=cfg)


def test_translate_moves_image_and_labels_by_the_given_fraction():
    x = torch.zeros(1, 3, 64, 64)
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    x[..., 28:36, 28:36] = 1.0
    y[..., 28:36, 28:36] = 4
    p = identity_augment_params(1)
    p["translate"] = torch.tensor([[0.5, -0.25]])        # +0.5 half-width along W, -0.25 along H
    xa, ya = augment_batch(x, y, params=p)
    cols = torch.nonzero(ya[0] == 4)
    assert cols[:, 1].float().mean().item() == pytest.approx(31.5 + 16, abs=0.6)
    assert cols[:, 0].float().mean().item() == pytest.approx(31.5 - 8, abs=0.6)
    assert torch.equal(xa[0, 0] > 0.5, ya[0] == 4)


def test_dataset_records_pixel_size_and_organ_presence(data_dir):
    ds = build_dataset(data_dir, ["ts_chest"], verbose=False)
    assert torch.allclose(ds["mm_per_pixel"], torch.full((20,), 512 * 0.9766 / 192), rtol=1e-3)
    for i in range(20):
        assert ds["presence"][i].tolist() == [bool((ds["labels"][i] == k).any()) for k in range(C)]
        assert ds["areas"][i].tolist() == [int((ds["labels"][i] == k).sum()) for k in range(C)]


def _tiny_run(data_dir, out, *extra):
    return train.main(["--data", str(data_dir), "--cases", "ts_chest,amos_0013", "--epochs", "2",
                       "--steps-per-epoch", "3", "--batch-size", "2", "--device", "cpu", "--threads", "2",
                       "--sampling", "organs", "--zoom-mm", "0.85", "3.0", "--translate", "0.1", "--output", str(out),
                       *extra])


def test_resumed_run_gives_the_weights_of_an_uninterrupted_run(data_dir, tmp_path):
    assert _tiny_run(data_dir, tmp_path / "whole") == 0
    assert _tiny_run(data_dir, tmp_path / "parts", "--run-steps", "4") == 0
    part = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    assert part["complete"] is False and part["train_state"]["step"] == 4
    assert read_status(tmp_path / "parts") == {"step": 4, "total_steps": 6, "complete": False}
    with pytest.raises(SystemExit, match="differs from the resumed run"):
        train.main(["--resume", str(tmp_path / "parts"), "--sampling", "uniform"])
    assert train.main(["--resume", str(tmp_path / "parts"), "--threads", "2"]) == 0
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    assert a["complete"] and b["complete"]
    assert read_status(tmp_path / "parts") == {"step": 6, "total_steps": 6, "complete": True}
    diff = max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"])
    print(f"resumed vs uninterrupted: max |diff| of the weights {diff:.1e}")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    def losses(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
    assert losses("whole") == losses("parts") and len(losses("whole")) == 2


def test_sigterm_checkpoints_and_exits_143(data_dir, tmp_path):
    import signal
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "tools.train", "--data", str(data_dir), "--cases", "ts_chest",
           "--epochs", "1", "--steps-per-epoch", "100000", "--batch-size", "2", "--device", "cpu",
           "--threads", "1", "--output", str(tmp_path / "run")]
    import os
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:                              # wait until the training loop is about to start
        if "steps/epoch" in line:
            break
    import time
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["complete"] is False and ckpt["train_state"]["step"] >= 1
    assert "--resume" in err and "Traceback" not in err


def test_the_stage_clock_accounts_for_each_step(data_dir):
    """The trainer's stage clock (what tools/train_speed.py prints): every stage of a step takes time and the
    stages add up to the step."""
    import time

    from tools.torch_model import load_spec
    from tools.training.loop import STAGES, Trainer
    dataset = build_dataset(data_dir, ["ts_chest"], verbose=False)
    trainer = Trainer(dataset, load_spec("dsconv_eca_unet"), epochs=1, steps_per_epoch=2, batch_size=2)
    t0 = time.perf_counter()
    trainer.train_step()
    wall = time.perf_counter() - t0
    stages = trainer.stage_seconds
    print(f"\n  step {wall * 1000:.0f} ms; " + ", ".join(f"{s} {stages[s] * 1000:.1f}" for s in STAGES))
    assert set(stages) == set(STAGES) and all(stages[s] > 0 for s in STAGES)
    assert 0.9 * wall <= sum(stages.values()) <= wall
    assert stages["backward"] > stages["optimiser"] and stages["forward"] > stages["sample"]


def test_train_speed_prints_both_precisions(data_dir, capsys):
    from tools import train_speed
    assert train_speed.main(["--steps", "1", "--warmup", "0", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "CPU " in out and "1 thread(s)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"fp32", "bf16"}
    for values in rows.values():
        seconds, per_second, *stages = map(float, values[:8])
        assert seconds > 0 and abs(per_second - 1 / seconds) < 0.01 * per_second + 0.01 and len(stages) == 6


@pytest.mark.parametrize("option, words", [(["--flip", "1.5"], "--flip 1.5 is not in [0, 1]"),
                                           (["--organ-shift-hu", "-5"], "--organ-shift-hu -5.0 must be >= 0"),
                                           (["--organ-slice-power", "3"], "--organ-slice-power 3.0 is not in [0, 2]"),
                                           (["--keep-steps", "0"], "steps start at 1")])
def test_recipe_options_out_of_range_are_refused_naming_the_value(option, words, tmp_path):
    with pytest.raises(SystemExit) as refused:
        train.main(["--output", str(tmp_path / "run"), "--sampling", "organs", *option])
    assert words in str(refused.value)
    assert not (tmp_path / "run").exists()
