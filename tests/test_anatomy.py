"""Laterality and anatomy checks (npunet.anatomy): on the shared CTs with correct headers every side check
passes (ground-truth label maps of all eight, and the shipped network's own labels of ts_abdomen); a header
that mirrors left and right (the voxels flipped but not the affine, or the affine's x flipped) makes the side
checks fail, and one that flips head and feet the liver-above-kidneys check; a cropped volume flags the organs
it cuts (their volumes are lower bounds); stray voxels do not move a check; the checks reach the statistics
JSON/CSV and one warning line, and never change the labels."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from npunet.anatomy import check_anatomy, warning_line
from npunet.cli import main
from npunet.labels import LABELS

CASES = ["amos_0001", "amos_0013", "ts_abdomen", "ts_chest", "ts_cta", "tsds_s0002", "tsds_s0003", "tsds_s0009"]


def load(data_dir, case):
    ct = nib.load(data_dir / "imagesTr" / f"{case}_0000.nii.gz")
    labels = np.asarray(nib.load(data_dir / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.uint8)
    return ct.get_fdata(dtype=np.float32), labels, ct.affine


def status(checks, kind):
    return {c.organ: c.status for c in checks if c.check == kind}


def show(case, checks):
    for c in checks:
        if c.check != "edge":
            print(f"    {case}: {c.check} {c.organ}: {c.status}: {c.detail}")


def test_correct_headers_pass_on_every_shared_ct(data_dir):
    """Ground truth of the eight CTs: no side or position check fails; where an organ is too small to tell
    (the TotalSegmentator subjects' slabs), it is skipped, not failed."""
    judged = 0
    print()
    for case in CASES:
        volume, labels, affine = load(data_dir, case)
        checks = check_anatomy(labels, volume, affine, LABELS)
        show(case, checks)
        failed = [c for c in checks if c.status == "fail" and c.check != "edge"]
        assert not failed, [(c.organ, c.detail) for c in failed]
        judged += sum(c.status == "pass" and c.check == "side" for c in checks)
    print(f"  {judged} side checks passed over {len(CASES)} CTs, none failed")
    assert judged >= 20


def mirrored_data(volume, labels, affine):
    """The voxels flipped along the left-right voxel axis, the affine kept: the header now lies."""
    axis = int(np.argmax(np.abs(affine[:3, :3])[0]))
    return np.flip(volume, axis).copy(), np.flip(labels, axis).copy(), affine


def mirrored_affine(volume, labels, affine):
    """The voxels kept, the affine's x flipped (its sign): the same lie, told by the header."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    return volume, labels, flip @ affine


@pytest.mark.parametrize("mirror", [mirrored_data, mirrored_affine], ids=["data flipped", "affine flipped"])
@pytest.mark.parametrize("case", ["ts_abdomen", "amos_0013", "tsds_s0009"])
def test_a_mirrored_header_fails_the_side_checks(data_dir, case, mirror):
    volume, labels, affine = mirror(*load(data_dir, case))
    checks = check_anatomy(labels, volume, affine, LABELS)
    sides = status(checks, "side")
    line = warning_line(checks)
    print(f"\n  {case}, {mirror.__name__}: {sides}\n  {line}")
    assert sides == {"liver": "fail", "right_kidney": "fail", "inferior_vena_cava": "fail", "spleen": "fail",
                     "left_kidney": "fail"}
    assert "mirrored header" in line and "liver on the left" in line


def test_head_and_feet_flipped_fails_liver_above_kidneys(data_dir):
    volume, labels, affine = load(data_dir, "ts_abdomen")
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    checks = check_anatomy(labels, volume, flip @ affine, LABELS)
    (above,) = [c for c in checks if c.check == "above_kidneys"]
    print(f"\n  {above.status}: {above.detail}\n  {warning_line(checks)}")
    assert above.status == "fail" and "below the right kidney's" in above.detail
    assert "head-feet axis flipped" in warning_line(checks)
    assert set(status(checks, "side").values()) == {"pass"}        # left and right still right


def test_a_cropped_volume_flags_the_organs_it_cuts(data_dir):
    volume, labels, affine = load(data_dir, "tsds_s0009")
    whole = {c.organ: c.edges for c in check_anatomy(labels, volume, affine, LABELS) if c.check == "edge"}
    assert whole["right_kidney"] == ["R"]        # this scan's field of view already cuts a few organs
    crop = (slice(None), slice(None), slice(120, 160))     # kidneys 102-163 and 116-172, liver from 137 up
    checks = check_anatomy(labels[crop], volume[crop], affine, LABELS)
    edges = {c.organ: c.edges for c in checks if c.check == "edge" and c.status == "fail"}
    print(f"\n  slices 120-160 of tsds_s0009: {edges}\n  {warning_line(checks)}")
    assert set(edges["right_kidney"]) == {"R", "I", "S"} and set(edges["left_kidney"]) >= {"I", "S"}
    assert "S" in edges["liver"] and "I" not in edges["liver"]
    assert "lower bounds" in warning_line(checks) and "cropped scan" in warning_line(checks)


def test_stray_voxels_do_not_move_a_check(data_dir):
    """A few voxels of liver and spleen predicted on the wrong side (as weak weights do) change nothing: each
    organ is its largest connected part."""
    volume, labels, affine = load(data_dir, "ts_abdomen")
    noisy = labels.copy()
    rng = np.random.default_rng(0)
    left_half = np.argwhere(volume[: volume.shape[0] // 2] > -500)     # RAS: low i is the patient's left here
    for organ in (1, 6, 2):                                            # liver, IVC, right kidney: 300 voxels each
        for i, j, k in left_half[rng.choice(len(left_half), 300, replace=False)]:
            noisy[i, j, k] = organ
    before = [(c.check, c.organ, c.status) for c in check_anatomy(labels, volume, affine, LABELS)]
    after = [(c.check, c.organ, c.status) for c in check_anatomy(noisy, volume, affine, LABELS)]
    print(f"\n  {sum(n != l for n, l in zip(noisy.ravel(), labels.ravel()))} stray voxels: checks unchanged")
    assert after == before


def test_real_network_labels_pass_and_a_mirrored_ct_is_flagged(data_dir, tmp_path, capsys):
    """The shipped network on ts_abdomen as it is (no side fails) and with its voxels flipped left-right but
    its header kept (a mirrored header): the warning line says so; the label map is the network's either way.
    On the mirrored CT the network, trained on correctly oriented ones, partly follows position: it labels
    little of the liver (now on the image's left) as liver and much of it as spleen, so the spleen and the
    kidneys can land on their usual sides; the liver's side check is the one that catches it here."""
    weights = Path(__file__).resolve().parent.parent / "weights" / "dsconv_eca_unet.npuw"
    if not weights.exists():
        pytest.skip(f"no shipped weights at {weights}")
    src = nib.load(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz")
    data = np.asarray(src.dataobj)[:, :, 20:100]                        # the kidneys to the liver's dome
    results = {}
    for name, voxels in (("as scanned", data), ("mirrored", np.flip(data, 0).copy())):
        img = nib.Nifti1Image(voxels, src.affine, src.header)
        path = tmp_path / f"{name.replace(' ', '_')}_0000.nii.gz"
        nib.save(img, path)
        out = tmp_path / f"{path.name[:-12]}.nii.gz"
        rc = main(["segment", str(path), "-o", str(out), "--statistics", "--quiet", "--weights", str(weights)])
        err = capsys.readouterr().err
        assert rc == 0, err
        stats = json.loads(out.with_name(out.name[:-7] + ".statistics.json").read_text())
        sides = {o: c["status"] for o, row in stats.items() for c in row["checks"] if c["check"] == "side"}
        results[name] = (sides, err)
        print(f"\n  {name}: sides {sides}\n  {err.strip()}")
    sides, err = results["as scanned"]
    assert "fail" not in sides.values() and "mirrored header" not in err
    assert sides["liver"] == "pass" and sides["spleen"] == "pass"
    sides, err = results["mirrored"]
    assert sides["liver"] == "fail"
    assert len([line for line in err.splitlines() if "anatomy check" in line]) == 1 and "mirrored header" in err


def test_statistics_carry_the_checks_and_labels_are_unchanged(data_dir, tmp_path, capsys):
    """Through `npunet segment` with a stand-in network that returns the ground truth: the statistics JSON
    has each organ's checks and faces, the CSV an at_image_edge column, one warning line, labels as given."""
    truth = np.asarray(nib.load(data_dir / "labelsTr" / "ts_abdomen.nii.gz").dataobj).astype(np.uint8)

    class Model:
        labels = dict(LABELS)
        preprocessing = {}

    def segment_volume(volume, affine, model, **options):
        return truth.copy()
    out = tmp_path / "abd.nii.gz"
    rc = main(["segment", str(data_dir / "imagesTr" / "ts_abdomen_0000.nii.gz"), "-o", str(out), "--statistics",
               "--quiet"], load_model=lambda weights=None: Model(), segment_volume=segment_volume)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert np.array_equal(np.asarray(nib.load(out).dataobj), truth)
    stats = json.loads((tmp_path / "abd.statistics.json").read_text())
    print(f"\n  liver: {stats['liver']['at_image_edge']}, lower bound {stats['liver']['volume_is_lower_bound']}, "
          f"{stats['liver']['checks']}\n  {err.strip()}")
    assert stats["liver"]["at_image_edge"] == ["superior"] and stats["liver"]["volume_is_lower_bound"] is True
    assert {c["check"]: c["status"] for c in stats["liver"]["checks"]} == {"side": "pass", "above_kidneys": "pass"}
    assert stats["right_kidney"]["at_image_edge"] == [] and stats["right_kidney"]["volume_is_lower_bound"] is False
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "abd.statistics.csv").open())}
    assert rows["liver"]["at_image_edge"] == "superior" and rows["right_kidney"]["at_image_edge"] == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "anatomy check" in lines[0] and "liver (superior)" in lines[0]


# ------------------------------------------------------------------ the largest part: Numba against scipy --

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("order", ["C", "F"])
def test_largest_part_equals_scipy_reference(seed, order):
    """morphology.largest_part (union-find over runs, in Numba) and anatomy.largest_part_reference (scipy.ndimage.label)
    find the same part (voxels, centroid, box), on random maps sparse enough to break into many parts, some of
    equal size."""
    from npunet.anatomy import largest_part_reference
    from npunet.kernels.morphology import label_boxes, largest_part
    rng = np.random.default_rng(seed)
    labels = (rng.random((23, 17, 11)) < [0.08, 0.2, 0.35, 0.5][seed % 4]).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.3] *= 2                  # a second label among the first
    labels = np.asarray(labels, order=order)
    boxes = label_boxes(labels)
    for k in (1, 2):
        voxels, centroid, box = largest_part(labels, k, boxes[k])
        expected_voxels, expected_centroid, expected_box = largest_part_reference(labels, k, boxes[k])
        assert voxels == expected_voxels > 0
        assert np.array_equal(centroid, expected_centroid) and np.array_equal(box, expected_box)


@pytest.mark.parametrize("shape,density", [((64, 48, 40), 0.28), ((200, 9, 7), 0.45), ((5, 80, 70), 0.3)])
def test_largest_part_on_larger_maps_equals_scipy_reference(shape, density):
    """Runs long and short, parts that meet only at a corner (x, y and z at once) and branches that join late
    (the union-find's roots): the same part as scipy's labelling, on maps of some size in F order."""
    from npunet.anatomy import largest_part_reference
    from npunet.kernels.morphology import label_boxes, largest_part
    rng = np.random.default_rng(int(sum(shape)))
    labels = np.asfortranarray((rng.random(shape) < density).astype(np.uint8) * 7)
    diagonal = np.zeros(shape, bool)                          # a chain of voxels touching only at corners
    steps = min(shape)
    diagonal[np.arange(steps), np.arange(steps), np.arange(steps)] = True
    labels[diagonal] = 9
    boxes = label_boxes(labels)
    for k in (7, 9):
        got = largest_part(labels, k, boxes[k])
        want = largest_part_reference(labels, k, boxes[k])
        assert got[0] == want[0] > 0
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])
    assert largest_part(labels, 9, boxes[9])[0] == steps      # the corner-touching chain is one part


def test_largest_part_of_equal_parts_is_the_first_met():
    """Two parts of 8 voxels: A, a column along z met first (and last), B met in between; A wins, as the
    first in scipy's numbering."""
    from npunet.anatomy import largest_part_reference
    from npunet.kernels.morphology import largest_part
    labels = np.zeros((10, 3, 8), np.uint8, order="F")
    labels[0, 0, :] = 4                                           # A: x 0, y 0, z 0..7
    labels[2:6, 2, 3:5] = 4                                       # B: x 2..5, y 2, z 3..4 (two voxels from A)
    got, want = largest_part(labels, 4, (0, 10, 0, 3, 0, 8)), largest_part_reference(labels, 4, (0, 10, 0, 3, 0, 8))
    assert got[0] == want[0] == 8 and list(got[2]) == list(want[2]) == [0, 1, 0, 1, 0, 8]


def test_largest_part_reaches_the_box_faces_and_a_single_voxel():
    from npunet.kernels.morphology import largest_part
    labels = np.zeros((6, 5, 4), np.uint8, order="F")
    labels[:, 0, 0] = 3                                          # a part along the whole x edge (6 voxels)
    labels[5, 4, 3] = 3                                          # one voxel in the far corner
    voxels, centroid, box = largest_part(labels, 3, (0, 6, 0, 5, 0, 4))
    assert voxels == 6 and np.array_equal(centroid, [2.5, 0, 0]) and list(box) == [0, 6, 0, 1, 0, 1]
    voxels, centroid, box = largest_part(labels, 3, (5, 6, 4, 5, 3, 4))   # the corner voxel's own box
    assert voxels == 1 and np.array_equal(centroid, [5, 4, 3]) and list(box) == [5, 6, 4, 5, 3, 4]
    voxels, centroid, box = largest_part(labels, 3, (1, 4, 1, 4, 1, 3))   # a box without label 3
    assert voxels == 0 and np.isnan(centroid).all() and list(box) == [6, 0, 5, 0, 4, 0]
    from npunet.anatomy import largest_part_reference
    voxels, centroid, box = largest_part_reference(labels, 3, (1, 4, 1, 4, 1, 3))
    assert voxels == 0 and np.isnan(centroid).all() and list(box) == [6, 0, 5, 0, 4, 0]
    with pytest.raises(ValueError, match="outside labels"):
        largest_part(labels, 3, (0, 7, 0, 5, 0, 4))


def test_checks_with_the_numba_parts_equal_those_with_scipy(data_dir):
    """The whole check on a real label map (tsds_s0009, all 13 organs): the same parts, so the same centroids,
    volumes and edges, with the kernel as with scipy."""
    import npunet.anatomy as anatomy
    volume, labels, affine = load(data_dir, "tsds_s0009")
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    ours = anatomy._largest_parts(labels, affine, voxel_ml, list(range(1, 14)))
    theirs = anatomy._largest_parts(labels, affine, voxel_ml, list(range(1, 14)),
                                    largest=anatomy.largest_part_reference)
    assert sorted(ours) == sorted(theirs) and len(ours) >= 12
    for k in ours:
        assert ours[k].voxels == theirs[k].voxels and ours[k].edges == theirs[k].edges
        assert np.array_equal(ours[k].centroid, theirs[k].centroid)
    print(f"    tsds_s0009: {len(ours)} organs, largest parts {sum(p.voxels for p in ours.values())} voxels, identical")


def test_midline_is_the_body_centroid_in_world_x():
    """_midline_x, summed slab by slab through profiles, against the centroid of np.nonzero's coordinates (an
    oblique affine, so that world x takes all three voxel axes; slabs of 16 slices with 1024x256 slices)."""
    from npunet.anatomy import BODY_HU, _midline_x
    rng = np.random.default_rng(5)
    volume = np.full((1024, 256, 40), -1000.0, np.float32, order="F")
    volume[200:700, 50:200, 3:37] = rng.uniform(-900, 200, (500, 150, 34))
    affine = np.array([[0.7, 0.1, 0.2, -10], [0.05, 0.8, 0.0, 3], [0.1, 0.0, 2.5, 7], [0, 0, 0, 1]])
    expected = (affine @ np.append(np.mean(np.nonzero(volume > BODY_HU), axis=1), 1.0))[0]
    assert _midline_x(volume, affine) == pytest.approx(expected, rel=1e-12)
    assert _midline_x(np.full((4, 4, 4), -1000.0, np.float32), affine) is None
