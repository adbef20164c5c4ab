"""`npunet explain`: the page for a real CT, parsed with the standard library and checked against the network.

One report is built for ts_chest_0000 with the shipped weights and the default slice; the tests then check
that every section is there, that nothing outside the page is referenced, that every picture decodes at its
stated size and shows the tensor it names, and that the ECA gates and GroupNorm statistics on the page are
the network's own (recomputed here from Network.run_layers on the slice, prepared by npunet.preprocess).
"""

import base64
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest
from test_postprocess import decode_png   # the test decoder of npunet.io.preview.encode_png's PNGs

import npunet
from npunet.cli import main
from npunet.explain.pictures import radiological
from npunet.explain.slices import file_slice_order
from npunet.preprocess import DEFAULT_PREPROCESSING, canonical, prepare_slices

SECTIONS = {"input", "encoder", "eca", "groupnorm", "decoder", "layers", "probabilities", "labels", "end",
            *(f"encoder-{i}" for i in range(5)), *(f"decoder-{j}" for j in range(4))}


class Page(HTMLParser):
    """Tags, ids, images, and the elements that carry data-gates / data-mean, of one HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.images, self.gates, self.norms = set(), set(), [], [], []
        self.attributes = []        # every (tag, name, value)
        self.header = {}
        self.layer_rows = 0
        self._in_layers = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if "id" in a:
            self.ids.add(a["id"])
            self._in_layers = a["id"] == "layers" or (self._in_layers and tag != "section")
        if tag == "img":
            self.images.append(a)
        if "data-gates" in a:
            self.gates.append(a)
        if "data-mean" in a:
            self.norms.append(a)
        if tag == "header":
            self.header = a
        if tag == "tr" and self._in_layers:
            self.layer_rows += 1


@pytest.fixture(scope="module")
def report(data_dir, tmp_path_factory):
    ct = data_dir / "imagesTr" / "ts_chest_0000.nii.gz"
    out = tmp_path_factory.mktemp("explain") / "ts_chest.html"
    assert main(["explain", str(ct), "-o", str(out), "--runs", "1", "--quiet"]) == 0
    text = out.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    print(f"\n  report: {len(text) / 2**20:.2f} MiB, {len(page.images)} images, slice {page.header.get('data-slice')}")
    return ct, text, page


@pytest.fixture(scope="module")
def network_run(report):
    """The shipped network on every slice of the CT (organ pixels per slice), and run_layers on the page's."""
    ct, _, page = report
    img = nib.load(ct)
    assert nib.aff2axcodes(img.affine)[2] == "S"        # the file's slice index is the canonical one
    net = npunet.load()
    view = canonical(img.get_fdata(dtype=np.float32), img.affine)
    params = {**DEFAULT_PREPROCESSING, **net.preprocessing}
    counts = [int(np.count_nonzero(net(prepare_slices(view.data, [z], params)[0]).argmax(axis=1)))
              for z in range(view.data.shape[2])]
    x, _ = prepare_slices(view.data, [int(page.header["data-slice"])], params)
    return net, counts, x, list(net.run_layers(x, keep=True))


def test_the_default_slice_is_the_one_with_most_organ_pixels(report, network_run):
    _, counts, _, _ = network_run
    assert int(report[2].header["data-slice"]) == int(np.argmax(counts)) and max(counts) > 0


def test_every_section_is_there_and_nothing_is_fetched(report):
    _, text, page = report
    assert SECTIONS <= page.ids, SECTIONS - page.ids
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}
    for tag, name, value in page.attributes:
        if name in ("src", "href"):
            assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:60])
        if name != "xmlns":                      # the SVG namespace is a name, not a request
            assert "http:" not in value and "https:" not in value, (tag, name, value[:60])
    assert "url(" not in text and "@import" not in text
    assert text.rstrip().endswith("</html>")


def test_every_image_decodes_and_shows_the_tensor_it_names(report, network_run):
    _, _, page = report
    net, _, x, steps = network_run
    outputs = {s.layer.name: s.output[0] for s in steps}
    checked = {"decoded": 0, "layer maps": 0, "input channels": 0}
    input_channels = set()
    for a in page.images:
        rgb = decode_png(base64.b64decode(a["src"].split(",", 1)[1]))
        h, w = map(int, a["data-shape"].split("x"))
        assert rgb.shape == (h, w, 3), (a.get("alt"), rgb.shape, a["data-shape"])
        checked["decoded"] += 1
        layer, channel = a.get("data-layer"), a.get("data-channel")
        if layer in outputs and channel is not None:
            m = radiological(outputs[layer][int(channel)])
            assert m.shape == (h, w), (layer, m.shape, (h, w))
            if a.get("data-scale") == "own":       # its own range: the largest value white, the smallest black
                assert tuple(rgb[np.unravel_index(np.argmax(m), m.shape)]) == (255, 255, 255), (layer, channel)
                assert tuple(rgb[np.unravel_index(np.argmin(m), m.shape)]) == (0, 0, 0), (layer, channel)
            checked["layer maps"] += 1
        if layer == "input":                     # the network input, 0 black and 1 white
            grey = np.round(radiological(x[0, int(channel)]).astype(np.float64) * 255)
            assert np.abs(rgb[:, :, 0] - grey).max() <= 1, channel
            checked["input channels"] += 1
            input_channels.add(int(channel))
    shapes = {a.get("data-layer"): a["data-shape"] for a in page.images}
    assert shapes["labels-native"] == "512x512" and shapes["labels-network"] == "192x192"
    print(f"\n  images checked: {checked}")
    assert input_channels == {0, 1, 2} and checked["layer maps"] > 100


def test_eca_gates_on_the_page_are_the_networks(report, network_run):
    _, _, page = report
    net, _, _, steps = network_run
    ecas = {s.layer.name: s for s in steps if s.layer.op == "eca"}
    assert {a["data-layer"] for a in page.gates} == set(ecas) and len(ecas) == 5
    worst = 0.0
    for a in page.gates:
        s = ecas[a["data-layer"]]
        shown = np.array([float(v) for v in a["data-gates"].split()], np.float32)
        assert np.array_equal(shown, s.gate[0])                   # exactly the gates the kernel applied
        w = net.tensors[f"{s.layer.name}.conv.weight"].reshape(-1).astype(np.float64)
        assert np.array_equal(np.array([float(v) for v in a["data-kernel"].split()], np.float32), w)
        k = len(w)                                                 # ECA by its definition, in float64
        y = np.pad(s.input[0].astype(np.float64).mean(axis=(1, 2)), (k // 2, k // 2))
        z = np.array([np.dot(w, y[c:c + k]) for c in range(len(shown))])
        worst = max(worst, float(np.abs(shown - 1 / (1 + np.exp(-z))).max()))
    print(f"\n  ECA gates on the page vs sigmoid(conv1d(mean)) in float64: max|diff| {worst:.1e}")
    assert worst < 1e-6


def test_groupnorm_statistics_on_the_page_are_those_of_the_layer_input(report, network_run):
    _, _, page = report
    net, _, _, steps = network_run
    norms = {s.layer.name: s for s in steps if s.layer.op == "norm_relu"}
    assert {a["data-layer"] for a in page.norms} == set(norms) and len(norms) == 18
    for a in page.norms:
        g = norms[a["data-layer"]].input[0].astype(np.float64).reshape(net.groups, -1)
        mean = np.array([float(v) for v in a["data-mean"].split()])
        std = np.array([float(v) for v in a["data-std"].split()])
        assert np.allclose(mean, g.mean(axis=1), rtol=1e-12, atol=1e-12)
        assert np.allclose(std, g.std(axis=1), rtol=1e-12, atol=1e-12)


def test_the_layer_table_lists_every_layer_with_the_summary_totals(report, network_run):
    _, text, page = report
    net = network_run[0]
    assert page.layer_rows == 1 + len(net.plan) + 1                # head row, one per layer, total
    assert "<b>406,657</b>" in text and "<b>1,232,826,576</b>" in text


def test_file_slice_order_follows_the_affine():
    """A file stored superior first (z axis flipped) or with the axial axis first maps back correctly."""
    assert list(file_slice_order((4, 5, 6), np.diag([1.0, 1.0, -1.0, 1.0]))) == [5, 4, 3, 2, 1, 0]
    assert list(file_slice_order((4, 5, 6), np.diag([-1.0, 1.0, 1.0, 1.0]))) == [0, 1, 2, 3, 4, 5]
    axial_first = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    assert list(file_slice_order((4, 5, 6), axial_first)) == [0, 1, 2, 3]


@pytest.mark.parametrize("argv,message", [
    (["CT", "-o", "OUT/r.html", "--slice", "20"], "--slice 20 is out of range: ts_chest has 20 axial slices (0 .. 19)"),
    (["CT", "-o", "OUT/r.html", "--slice", "-1"], "--slice -1 is out of range"),
    (["CT", "-o", "OUT/r.png"], "r.png: the report must be a .html or .htm file name"),
    (["CT", "-o", "CT"], "must be a .html or .htm file name"),
    (["CT", "-o", "OUT/exists.html"], "exists.html: exists already; pass --overwrite"),
    (["FOLDER", "-o", "OUT/r.html"], "a folder of 8 cases; one CT is meant here: give its file"),
    (["OUT/missing.nii.gz", "-o", "OUT/r.html"], "missing.nii.gz: no such file"),
    (["CT", "-o", "OUT/r.html", "--runs", "0"], "--runs must be at least 1, got 0"),
    (["CT", "-o", "OUT/r.html", "--weights", "OUT/exists.html"], "exists.html is not an npunet weights file"),
])
def test_user_mistakes_are_one_line_errors_and_write_nothing(argv, message, data_dir, tmp_path, capsys):
    (tmp_path / "exists.html").write_text("keep me")
    subst = {"CT": str(data_dir / "imagesTr" / "ts_chest_0000.nii.gz"), "FOLDER": str(data_dir / "imagesTr")}
    argv = [subst.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npunet explain: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.html"]
    assert (tmp_path / "exists.html").read_text() == "keep me"


def test_explain_reads_the_ct_as_segment_does(data_dir, tmp_path, capsys):
    """One CT reader for every command (npunet.io.ct): a header without orientation is refused with the same
    line as `npunet segment` gives, --assume-orientation makes it readable, and the page is published only
    once complete, exclusively (an existing page needs --overwrite)."""
    src = nib.load(data_dir / "imagesTr" / "ts_chest_0000.nii.gz")
    plain = nib.Nifti1Image(np.asarray(src.dataobj)[:, :, :6], src.affine)
    plain.set_qform(None, code=0)
    plain.set_sform(None, code=0)
    ct = tmp_path / "plain.nii.gz"
    nib.save(plain, ct)
    out = tmp_path / "page.html"
    argv = ["explain", str(ct), "-o", str(out), "--slice", "2", "--runs", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no orientation" in err and "--assume-orientation" in err and not out.exists()
    assert main(["segment", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--quiet"]) == 2
    assert capsys.readouterr().err.split("error: ")[1] == err.split("error: ")[1]      # the same refusal
    assert main(argv + ["--assume-orientation", "LAS"]) == 0
    err = capsys.readouterr().err
    assert "assuming LAS" in err and 'data-slice="2"' in out.read_text()
    assert main(argv + ["--assume-orientation", "LAS"]) == 2 and "exists already" in capsys.readouterr().err
    assert main(argv + ["--assume-orientation", "LAS", "--overwrite"]) == 0
