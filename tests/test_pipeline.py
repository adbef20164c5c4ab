"""The whole-volume pipeline: parity with the same pipeline in torch ops (tools/torch_pipeline.py) on real
CTs, geometry round trips through the canonical orientation, and the 2.5D / pad / resize steps."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import npunet
from npunet.pipeline import segment_array
from npunet.preprocess import canonical, pad_to_square, stack_25d

FIXTURE_WEIGHTS = Path(__file__).parent / "fixtures" / "dsconv_eca_unet.npuw"


def weights_under_test():
    out = [pytest.param(FIXTURE_WEIGHTS, id="random-weights")]
    shipped = npunet.default_weights_path()
    out.append(pytest.param(shipped, id="shipped-weights",
                            marks=pytest.mark.skipif(not shipped.exists(), reason=f"no shipped weights at {shipped}")))
    return out


def load_ct(data_dir, case):
    img = nib.load(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
    return img, np.asarray(img.dataobj, dtype=np.float32)


@pytest.mark.parametrize("weights", weights_under_test())
@pytest.mark.parametrize("case", ["ts_abdomen", "ts_chest", "ts_cta"])
def test_pipeline_matches_torch_pipeline(data_dir, case, weights):
    torch = pytest.importorskip("torch")
    from tools.torch_pipeline import segment_array_torch, torch_model_from_weights
    torch.set_num_threads(2)
    img, vol = load_ct(data_dir, case)
    if case == "ts_cta":
        vol = vol[:, :, ::4]   # keep the test quick; the geometry is unchanged in-plane
    net = npunet.load(weights)
    tmodel, header = torch_model_from_weights(weights)
    ours = segment_array(vol, img.affine, net, batch_size=8)
    theirs = segment_array_torch(vol, img.affine, tmodel, header["preprocessing"], batch_size=8)
    agree = float((ours == theirs).mean())
    which = f"{weights.parent.name}/{weights.name}"
    organs = sorted(int(v) for v in set(np.unique(ours)) - {0})
    print(f"\n  {case:<11} {vol.shape} {which:<32} label agreement {agree * 100:.4f} %, "
          f"labels present {organs}")
    assert ours.shape == vol.shape and ours.dtype == np.uint8
    assert agree >= 0.999


def test_canonical_round_trip_for_each_orientation(data_dir):
    img, vol = load_ct(data_dir, "ts_abdomen")
    for codes in ("RAS", "LAS", "LPS", "PIR"):
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                               nib.orientations.axcodes2ornt(tuple(codes)))
        re = img.as_reoriented(ornt)
        data = np.asarray(re.dataobj, dtype=np.float32)
        view = canonical(data, re.affine)
        # every orientation sees the same canonical voxels
        assert np.array_equal(view.data, canonical(vol, img.affine).data), codes
        assert np.array_equal(view.back(view.data), data), codes


def test_stack_25d_clamps_at_the_ends():
    vol = np.arange(4, dtype=np.float32)[None, None, :].repeat(2, 0).repeat(3, 1)   # (2, 3, 4), value = z
    s = stack_25d(vol, [0, 2, 3], context=1)
    assert s.shape == (3, 3, 2, 3)
    assert [list(s[b, :, 0, 0]) for b in range(3)] == [[0, 0, 1], [1, 2, 3], [2, 3, 3]]


@pytest.mark.parametrize("layout", ["F", "C", "flipped", "transposed"])
def test_slab_25d_copies_in_blocks_as_one_copy(layout):
    """slab_25d copies the slices in blocks of columns: the same array as one copy, for any memory layout of
    the canonical view and a width that is not a multiple of the block."""
    from npunet.preprocess import SLAB_COLUMNS, slab_25d
    vol = np.random.default_rng(4).standard_normal((23, 2 * SLAB_COLUMNS + 13, 9)).astype(np.float32)
    view = {"F": np.asfortranarray(vol), "C": vol, "flipped": np.asfortranarray(vol)[::-1, ::-1],
            "transposed": np.asfortranarray(vol.transpose(1, 0, 2)).transpose(1, 0, 2)}[layout]
    slab, taps = slab_25d(view, [2, 3, 4, 5], context=1)
    assert slab.flags.c_contiguous and slab.dtype == np.float32
    assert np.array_equal(slab, np.moveaxis(view[:, :, 1:7], 2, 0)) and taps.tolist()[0] == [0, 1, 2]


@pytest.mark.parametrize("shape,zs", [((40, 30, 12), [0, 1, 2, 3, 4, 5, 6, 7]), ((40, 30, 12), [11, 0, 5]),
                                      ((64, 64, 5), [4])])
def test_prepare_slices_equals_the_steps_one_by_one(shape, zs):
    """prepare_slices normalises, pads and resizes each shared slice once; the result must be bit-identical
    to the steps applied stack by stack, as the module docstring lists them."""
    from npunet.kernels import resize_bilinear
    from npunet.preprocess import DEFAULT_PREPROCESSING as P, normalize_hu, prepare_slices
    vol = np.random.default_rng(3).uniform(-1500, 2500, shape).astype(np.float32)
    kept = vol.copy()
    got, win = prepare_slices(vol, zs, P)
    assert np.array_equal(vol, kept)                    # normalised in place: its own copy, not the volume
    stack = normalize_hu(stack_25d(vol, zs, P["context_slices"]), P["hu_min"], P["hu_max"])
    square, want_win = pad_to_square(stack, P["pad_value"])
    want = resize_bilinear(square, P["input_size"], P["input_size"])
    assert win == want_win and got.shape == (len(zs), 3, P["input_size"], P["input_size"])
    assert np.array_equal(got, want)


def test_pad_to_square_centres_the_slice():
    x = np.ones((1, 1, 4, 8), np.float32)
    sq, win = pad_to_square(x)
    assert sq.shape == (1, 1, 8, 8) and (win.y0, win.x0, win.height, win.width) == (2, 0, 4, 8)
    assert sq[0, 0, :2].sum() == 0 and sq[0, 0, 2:6].all() and sq[0, 0, 6:].sum() == 0


def test_warm_up_thread_never_raises(monkeypatch):
    """The background warm-up loads the kernels; an error in it does not escape the thread (that would print
    a traceback; segmenting meets the same error and reports it in one line), and a non-Network model is
    skipped."""
    import threading
    from pathlib import Path
    from npunet.network import Network, from_file
    from npunet.pipeline import start_warm_up
    escaped = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_type))
    net = from_file(Path(__file__).parent / "fixtures" / "dsconv_eca_unet.npuw")

    class Failing(Network):
        def __call__(self, x):
            raise RuntimeError("boom")

    for model in (net, Failing(net.spec, net.tensors), object()):
        start_warm_up(model).join()
    assert escaped == []


class SidedModel:
    """A stand-in network that is mirror-equivariant by construction: the right kidney's score (label 2) is
    g(x), the left kidney's (13) is g of the mirrored slice, mirrored back, with g neither symmetric nor
    constant. Its mirror image predicts the mirrored labels, sides swapped, as a well-trained network should."""

    labels = {k: v for k, v in __import__("npunet.labels", fromlist=["LABELS"]).LABELS.items()}
    preprocessing = {}

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        g = lambda a: 4 * a[:, 1] + np.cumsum(a[:, 0], axis=1) / a.shape[2]      # noqa: E731
        out = np.zeros((x.shape[0], 14) + x.shape[2:], np.float32)
        out[:, 0] = 1.0
        out[:, 2] = g(x)
        out[:, 13] = np.flip(g(np.flip(x, axis=2)), axis=1)
        return out


def test_mirror_average_of_an_equivariant_network_is_the_network():
    """Test-time mirroring swaps the mirror's left and right channels and flips it back: for a network that
    already treats sides consistently the average equals its own probabilities (to float32 rounding: NumPy
    sums a flipped array in another order)."""
    from npunet.pipeline import mirror_average, mirror_slices, softmax
    from npunet.preprocess import DEFAULT_PREPROCESSING
    x = np.random.default_rng(0).random((2, 3, 32, 48), dtype=np.float32)
    model = SidedModel()
    tta = mirror_average(model(x), model(mirror_slices(x, DEFAULT_PREPROCESSING)), DEFAULT_PREPROCESSING,
                         model.labels)
    plain = softmax(model(x))
    print(f"\n  TTA vs plain probabilities: max|diff| {np.abs(tta - plain).max():.1e}")
    assert np.abs(tta - plain).max() < 1e-6
    # without the channel swap the sides would be mixed up: the mirror alone predicts the other kidney
    mirrored = softmax(np.flip(model(mirror_slices(x, DEFAULT_PREPROCESSING)), axis=2))
    assert np.abs(mirrored[:, 2] - plain[:, 2]).max() > 0.1


def test_tta_runs_the_network_twice_and_keeps_an_equivariant_result(data_dir):
    img, vol = load_ct(data_dir, "ts_abdomen")
    vol = vol[:, :, 40:52]
    model = SidedModel()
    plain = segment_array(vol, img.affine, model, batch_size=4)
    calls = model.calls
    tta = segment_array(vol, img.affine, model, batch_size=4, tta=True)
    print(f"\n  network calls: {calls} plain, {model.calls - calls} with --tta; labels equal: "
          f"{np.array_equal(plain, tta)}; right/left kidney voxels {(plain == 2).sum()}/{(plain == 13).sum()}")
    assert model.calls - calls == 2 * calls
    assert (plain == 2).any() and (plain == 13).any()
    # probabilities instead of logits are upsampled: the argmax can move on a tie-close pixel, nowhere else
    assert (plain != tta).mean() < 1e-3


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PSR", "ILA"])
def test_canonical_view_of_an_output_writes_through(codes):
    """segment_array writes its batches through view.of(out): the canonical view of a map on the input's grid."""
    import nibabel as nib
    from npunet.preprocess import canonical
    affine = nib.orientations.inv_ornt_aff(nib.orientations.axcodes2ornt(codes), (5, 6, 7))  # axes `codes`
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    view = canonical(volume, affine)
    assert "".join(nib.aff2axcodes(affine)) != "RAS" or codes == "RAS"
    out = np.zeros(volume.shape, np.float32, order="F")
    view.of(out)[...] = view.data
    assert np.array_equal(out, volume)
    assert np.shares_memory(view.of(out), out)
    assert np.array_equal(view.back(view.of(out)), out)
