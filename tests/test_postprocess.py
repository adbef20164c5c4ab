"""Post-processing and the per-case extras: the bounding-box cube closing against a whole-volume scipy
reference, its border and fill rules and its speed; per-organ statistics; the hand-written PNG preview."""

import csv
import json
import struct
import time
import zlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from npunet.labels import LABELS
from npunet.postprocess import close_labels, close_labels_reference
from npunet.io.preview import COLOURS, colour_of, encode_png, render_preview, write_preview
from npunet.io.statistics import organ_statistics, voxel_volume_mm3, write_statistics


def random_blobs(shape, n_labels, seed, holes=0.15):
    """Smooth random label regions with salt-and-pepper background holes punched in."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.5)
    edges = np.quantile(field, np.linspace(0.3, 1, n_labels + 1)[:-1])
    labels = np.digitize(field, edges).astype(np.uint8)
    labels[rng.random(shape) < holes] = 0
    return labels


# ------------------------------------------------------------------------------------------ closing --

@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("radius", [1, 2])
def test_close_labels_matches_whole_volume_reference(seed, radius):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(4, 28, size=3))
    labels = random_blobs(shape, n_labels=int(rng.integers(1, 6)), seed=seed)
    ours = close_labels(labels, radius)
    ref = close_labels_reference(labels, radius)
    changed = int(np.count_nonzero(ours != labels))
    print(f"\n  shape {shape} r={radius}: {changed} voxels filled, {int(np.count_nonzero(ours != ref))} differ")
    assert ours.dtype == np.uint8 and ours.shape == labels.shape
    assert np.array_equal(ours, ref)


def test_reference_is_scipy_binary_closing_with_the_cube():
    labels = random_blobs((20, 18, 16), 1, seed=5)
    pad = 2
    whole = ndimage.binary_closing(np.pad(labels == 1, pad), structure=np.ones((3, 3, 3), bool))
    whole = whole[pad:-pad, pad:-pad, pad:-pad]
    expected = np.where(whole & (labels == 0), 1, labels)
    assert np.array_equal(close_labels(labels, 1), expected)
    # scipy's default structure (the 6-cross) gives a different answer: the cube matters
    cross = ndimage.binary_closing(np.pad(labels == 1, pad))[pad:-pad, pad:-pad, pad:-pad]
    assert not np.array_equal(whole, cross)


def test_object_touching_the_border_survives():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:4, :4, :] = 3          # touches three faces of the volume
    labels[8:, 5:, 9] = 2          # a one-voxel-thick sheet on the last slice
    out = close_labels(labels, 1)
    assert np.array_equal(out, labels)
    # scipy on the unpadded volume erodes them (what the padding protects against)
    eroded = ndimage.binary_closing(labels == 3, structure=np.ones((3, 3, 3), bool))
    assert eroded.sum() < (labels == 3).sum()


def test_only_background_is_filled_and_lower_label_wins():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[4, 4, 4] = 0            # a hole in label 1: filled
    labels[3, 4, 4] = 5            # another organ inside label 1: kept
    out = close_labels(labels, 1)
    assert out[4, 4, 4] == 1 and out[3, 4, 4] == 5
    # a voxel that both closings fill: every 3x3x3 cube around it holds a 2 and a 4 (a checkerboard)
    parity = np.indices((5, 5, 5)).sum(axis=0) % 2
    labels = np.where(parity == 0, 2, 4).astype(np.uint8)
    labels[2, 2, 2] = 0
    for k in (2, 4):
        alone = np.where(labels == k, k, 0).astype(np.uint8)
        assert close_labels(alone, 1)[2, 2, 2] == k
    out = close_labels(labels, 1)
    assert out[2, 2, 2] == 2       # the lower label wins
    assert np.array_equal(out, close_labels_reference(labels, 1))


def test_hole_and_short_tunnel_are_filled():
    labels = np.zeros((7, 7, 7), np.uint8)
    labels[1:6, 1:6, 1:6] = 7
    labels[3, 3, 3] = 0
    labels[2, 3, 3] = labels[4, 3, 3] = 0  # a tunnel along x: the 6-cross closing would also fill it
    out = close_labels(labels, 1)
    assert out[3, 3, 3] == 7 and out[2, 3, 3] == 7


def test_close_labels_radius_zero_and_empty():
    labels = random_blobs((6, 7, 8), 3, seed=1)
    assert np.array_equal(close_labels(labels, 0), labels)
    assert not close_labels(np.zeros((4, 4, 4), np.uint8)).any()
    with pytest.raises(ValueError):
        close_labels(np.zeros((4, 4), np.uint8))


def organ_phantom(shape=(512, 512, 100), seed=3):
    """A few ellipsoids of organ size (liver, spleen, kidneys, aorta, pancreas) with 5 % holes."""
    X, Y, Z = shape
    labels = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(seed)
    organs = [(1, (180, 250, 50), (110, 90, 40)), (3, (360, 260, 50), (50, 60, 25)),
              (2, (200, 330, 40), (30, 35, 25)), (13, (330, 330, 40), (30, 35, 25)),
              (5, (256, 300, 50), (12, 12, 60)), (4, (280, 240, 45), (60, 15, 12))]
    for k, c, r in organs:
        box = tuple(slice(max(0, c[i] - r[i]), min(shape[i], c[i] + r[i] + 1)) for i in range(3))
        g = np.ogrid[box]
        inside = sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) < 1
        inside &= rng.random(inside.shape) > 0.05
        labels[box][inside] = k
    return labels


def test_close_labels_speed_on_a_ct_sized_volume():
    labels = organ_phantom()
    close_labels(labels[:32, :32, :16])  # import / first-call costs out of the timing
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = close_labels(labels)
        times.append(time.perf_counter() - t0)
    print(f"\n  close_labels on {labels.shape} with {len(np.unique(labels)) - 1} organs: "
          f"best {min(times):.3f} s (target < 0.5 s), {int(np.count_nonzero(out != labels))} voxels filled")
    assert min(times) < 1.0  # target 0.5 s; slack for a loaded CI machine


# --------------------------------------------------------------------------------------- statistics --

def test_statistics_on_a_real_label_map(data_dir, tmp_path):
    img = nib.load(data_dir / "imagesTr" / "ts_chest_0000.nii.gz")
    lab_img = nib.load(data_dir / "labelsTr" / "ts_chest.nii.gz")
    labels = np.asarray(lab_img.dataobj)
    ct = img.get_fdata(dtype=np.float32)
    rows = organ_statistics(labels, ct, lab_img.affine, LABELS)
    meta = json.loads((data_dir / "dataset.json").read_text())["cases"]["ts_chest"]
    voxel_ml = float(np.prod(lab_img.header.get_zooms()[:3])) / 1000
    assert voxel_volume_mm3(lab_img.affine) == pytest.approx(voxel_ml * 1000, rel=1e-9)
    assert [r["label"] for r in rows] == list(range(1, 14))
    by_name = {r["name"]: r for r in rows}
    for name, count in meta["voxels"].items():
        assert by_name[name]["voxels"] == count == int(np.count_nonzero(labels == list(LABELS.values()).index(name)))
        assert by_name[name]["volume_ml"] == pytest.approx(count * voxel_ml, abs=1e-3)
    # the dataset's own mean-HU check: {"liver": 89, "spleen": 80, "aorta": 177, "stomach": -56}
    for name, hu in {"liver": 89, "spleen": 80, "aorta": 177, "stomach": -56}.items():
        assert abs(by_name[name]["mean_hu"] - hu) < 1.0, (name, by_name[name]["mean_hu"])
    assert by_name["gallbladder"]["voxels"] == 0 and by_name["gallbladder"]["mean_hu"] is None
    print("\n  " + ", ".join(f"{r['name']} {r['volume_ml']:.1f} mL {r['mean_hu']} HU" for r in rows if r["voxels"]))

    csv_path, json_path = tmp_path / "s.statistics.csv", tmp_path / "s.statistics.json"
    write_statistics(rows, csv_path, json_path)
    table = list(csv.DictReader(csv_path.open()))
    assert [t["name"] for t in table] == [r["name"] for r in rows]
    assert int(table[0]["voxels"]) == by_name["liver"]["voxels"] and table[8]["mean_hu"] == ""
    data = json.loads(json_path.read_text())
    assert data["liver"]["volume_ml"] == by_name["liver"]["volume_ml"] and data["gallbladder"]["mean_hu"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.statistics.csv", "s.statistics.json"]


# ------------------------------------------------------------------------------------------ preview --

def decode_png(blob: bytes) -> np.ndarray:
    """Decode the 8-bit RGB, filter-0 PNG that encode_png writes, checking the chunk CRCs."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, data = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", blob[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF, kind
        chunks.append((kind, data))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_encode_png_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 11, 3)).astype(np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)


def test_preview_is_a_png_with_coloured_labels(data_dir, tmp_path):
    img = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    labels = np.asarray(nib.load(data_dir / "labelsTr" / "ts_abdomen.nii.gz").dataobj)
    ct = img.get_fdata(dtype=np.float32)
    path = tmp_path / "case.preview.png"
    write_preview(ct, labels, img.affine, path)
    blob = path.read_bytes()
    w, h = struct.unpack(">II", blob[16:24])
    rgb = decode_png(blob)
    assert rgb.shape == (h, w, 3) and w > 200 and h > 200
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    print(f"\n  preview {w}x{h}, {int(coloured.sum())} coloured pixels")
    assert coloured.sum() > 1000
    # the same CT without labels is pure grey
    grey = render_preview(ct, np.zeros_like(labels), img.affine)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    # and the picture does not depend on how the file orders its axes
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(("L", "P", "S")))
    lps_ct = nib.orientations.apply_orientation(ct, ornt)
    lps_lab = nib.orientations.apply_orientation(labels, ornt)
    lps_affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, ct.shape)
    assert np.array_equal(render_preview(lps_ct, lps_lab, lps_affine), rgb)


def test_preview_pixels_are_the_blend():
    ct = np.full((40, 30, 20), 40.0, np.float32)        # 40 HU: mid-grey in the [-160, 240] window
    labels = np.zeros(ct.shape, np.uint8)
    labels[10:30, 5:25, :] = 1
    rgb = render_preview(ct, labels, np.diag([2.0, 2.0, 3.0, 1.0]))
    grey = 255 * 200 / 400
    liver = np.round(0.55 * grey + 0.45 * np.array(colour_of(1))).astype(np.uint8)
    is_liver = np.all(rgb == liver, axis=-1)
    is_grey = np.all(rgb == np.uint8(round(grey)), axis=-1)
    is_gap = np.all(rgb == 0, axis=-1)
    assert is_liver.sum() > 500 and is_grey.sum() > 500
    assert (is_liver | is_grey | is_gap).all()


def test_colour_table_is_fixed():
    assert len(COLOURS) == 14 and colour_of(1) == tuple(COLOURS[1]) and colour_of(14) == colour_of(1)


@pytest.mark.parametrize("order", ["C", "F"])
def test_close_labels_either_memory_order(order):
    labels = np.array(random_blobs((23, 17, 11), 4, seed=9), order=order)
    ours = close_labels(labels, 1)
    assert np.array_equal(ours, close_labels_reference(labels, 1))
    assert ours.flags.f_contiguous == (order == "F")                     # the copy keeps the memory order


def test_close_labels_on_a_real_label_map(data_dir):
    """A label map of the real network on a real CT, with holes punched in, against the scipy reference."""
    import npunet
    from npunet.io.ct import load_ct
    from npunet.pipeline import segment_array
    ct = load_ct(data_dir / "imagesTr" / "ts_chest_0000.nii.gz")
    labels = segment_array(ct.volume, ct.affine, npunet.load(), postprocess=False)
    labels[np.random.default_rng(0).random(labels.shape) < 0.05] = 0
    ours = close_labels(labels, 1)
    assert np.count_nonzero(ours != labels) > 1000
    assert np.array_equal(ours, close_labels_reference(labels, 1))


def test_label_boxes_match_find_objects():
    from npunet.kernels.morphology import label_boxes
    labels = np.asfortranarray(random_blobs((19, 14, 9), 5, seed=3))
    boxes = label_boxes(labels)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            assert boxes[k, 0] == labels.shape[0] and boxes[k, 1] == 0
        else:
            assert tuple(boxes[k]) == tuple(v for s in box for v in (s.start, s.stop))


@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_label_counts_equal_bincount(order):
    from npunet.io.statistics import label_counts
    labels = random_blobs((21, 13, 8), 6, seed=4)
    labels = {"C": labels, "F": np.asfortranarray(labels), "strided": labels[::2, :, 1:]}[order]
    expected = np.bincount(labels.ravel(), minlength=256)
    assert np.array_equal(label_counts(labels), expected)
    assert np.array_equal(label_counts(labels, 14), expected[:14])
    assert np.array_equal(label_counts(labels.astype(np.int16), 14), expected[:14])


@pytest.mark.parametrize("seed", range(4))
def test_close_labels_in_place_fills_the_same_voxels(seed):
    labels = np.asfortranarray(random_blobs((19, 23, 12), 5, seed=seed))
    expected = close_labels(labels, 1)
    mine = labels.copy(order="F")
    assert close_labels(mine, 1, in_place=True) is mine
    assert np.array_equal(mine, expected)
