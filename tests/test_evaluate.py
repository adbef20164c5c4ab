"""The FLARE DSC / NSD evaluation (npunet.evaluate, npunet.surface) on cases whose answer is known by hand.

Expected values come from geometry, not from the code under test: voxel counts for DSC; for NSD the
surfels of axis-aligned boxes, whose areas and distances can be written down (a brute-force twin,
`box_nsd_reference`, enumerates them with no neighbour codes and no distance transform).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from npunet import cli, evaluate
from npunet.evaluate import dsc_nsd, evaluate_case, evaluate_paths
from npunet.labels import LABELS, NSD_TOLERANCE_MM, ORGANS
from npunet.surface import neighbour_codes, surface_dice, surfel_area_table

SQ2, SQ3 = math.sqrt(2), math.sqrt(3)


# ------------------------------------------------------------------------------------------ helpers --

def box(shape, lo, hi) -> np.ndarray:
    """A bool mask of `shape` holding voxels lo <= index < hi on every axis."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def box_surfels(lo, hi, spacing):
    """Surfels of the box of voxels [lo, hi) (every side >= 2 voxels), by geometry alone.

    Surfels sit on the corner grid, corner c between voxels c-1 and c; the box's surface corners are those
    with c in [lo, hi] on every axis and c at lo or hi on at least one. With e such "extreme" axes the
    marching-cubes surface in that cell is: e=1 a flat square (area = product of the two other spacings),
    e=2 a chamfer strip along the free axis a (s_a * |(s_b, s_c)| / 2), e=3 a corner triangle
    (|(s0 s1, s0 s2, s1 s2)| / 8). Returns (points in mm (N, 3), areas (N,)).
    """
    s = np.asarray(spacing, dtype=float)
    pts, areas = [], []
    for c in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi))):
        ext = [c[d] in (lo[d], hi[d]) for d in range(3)]
        e = sum(ext)
        if e == 0:
            continue
        if e == 1:
            d = ext.index(True)
            area = np.prod([s[i] for i in range(3) if i != d])
        elif e == 2:
            a = ext.index(False)
            b, cc = [i for i in range(3) if i != a]
            area = s[a] * math.hypot(s[b], s[cc]) / 2
        else:
            area = math.sqrt((s[0] * s[1]) ** 2 + (s[0] * s[2]) ** 2 + (s[1] * s[2]) ** 2) / 8
        pts.append(np.asarray(c) * s)
        areas.append(area)
    return np.array(pts), np.array(areas)


def box_nsd_reference(lo_a, hi_a, lo_b, hi_b, spacing, tol) -> float:
    """NSD of two boxes by brute force: every surfel against every surfel of the other box."""
    pa, aa = box_surfels(lo_a, hi_a, spacing)
    pb, ab = box_surfels(lo_b, hi_b, spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    near_a = aa[d.min(axis=1) <= tol + 1e-9].sum()
    near_b = ab[d.min(axis=0) <= tol + 1e-9].sum()
    return (near_a + near_b) / (aa.sum() + ab.sum())


def ball(shape, center, radius, spacing=(1, 1, 1)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    return r2 <= radius ** 2


def write_nifti(path, data, spacing=(1.0, 1.0, 1.0)):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), np.diag([*spacing, 1.0]))
    nib.save(img, str(path))
    return path


# ---------------------------------------------------------------------------------- the surfel table --

def test_surfel_table_hand_entries():
    """Cells whose marching-cubes surface area is known in closed form, at unit and anisotropic spacing."""
    unit = surfel_area_table((1, 1, 1))
    assert unit[0] == 0 and unit[255] == 0
    for k in range(8):  # one voxel of 8: the corner triangle through 3 edge midpoints
        assert unit[1 << k] == pytest.approx(SQ3 / 8)
    # bits 1, 2 = voxels (1,1,1), (1,1,0): neighbours along z: a strip of length 1 and width sqrt(2)/2
    assert unit[0b11] == pytest.approx(SQ2 / 2)
    # bits 0..3 = the 4 voxels with a = 1: a flat square of area 1
    assert unit[0b1111] == pytest.approx(1.0)
    # bits 0, 1, 2, 4 = voxel (1,1,1) and its 3 neighbours: the regular hexagon x+y+z = 3/2, side sqrt(2)/2
    assert unit[0b10111] == pytest.approx(3 * SQ3 / 4)
    # bits 0, 1, 2 = an L of 3 voxels on one face: a pentagon, fanned as the package does (1/2 + 3 sqrt(3)/8)
    assert unit[0b111] == pytest.approx(0.5 + 3 * SQ3 / 8)
    s = (0.7, 1.3, 2.9)
    aniso = surfel_area_table(s)
    assert aniso[1] == pytest.approx(math.sqrt((s[0] * s[1]) ** 2 + (s[0] * s[2]) ** 2 + (s[1] * s[2]) ** 2) / 8)
    assert aniso[0b11] == pytest.approx(s[2] * math.hypot(s[0], s[1]) / 2)  # strip along axis 2
    assert aniso[0b1111] == pytest.approx(s[1] * s[2])  # square normal to axis 0


def test_surfel_table_symmetries():
    """Inside and outside swapped give the same surface; permuting the axes of a cell and of the spacing
    together gives the same area."""
    s = (0.6, 1.7, 3.1)
    area = surfel_area_table(s)
    assert np.allclose(area, area[::-1])  # code c and 255 - c
    bit_of = {((7 - k) >> 2 & 1, (7 - k) >> 1 & 1, (7 - k) & 1): k for k in range(8)}
    for perm in itertools.permutations(range(3)):
        area_p = surfel_area_table(tuple(s[perm.index(i)] for i in range(3)))
        for code in range(256):
            moved = 0
            for off, k in bit_of.items():
                if code >> k & 1:
                    moved |= 1 << bit_of[tuple(off[perm.index(i)] for i in range(3))]
            assert area_p[moved] == pytest.approx(area[code]), (perm, code)


def test_surfel_table_matches_the_package_table():
    """The whole table at once: the sum of all 256 surfel areas at two anisotropic spacings, as computed from
    the surface-distance package's own lookup table (its 256 lists of normals) when this file was written.
    Catches a change of triangulation or of the ambiguous-face rule that the hand entries above miss."""
    assert surfel_area_table((1, 2, 3)).sum() == pytest.approx(950.4895895094019, abs=1e-9)
    assert surfel_area_table((0.7, 1.3, 2.9)).sum() == pytest.approx(591.6622968920766, abs=1e-9)


def test_neighbour_codes_match_scipy_correlate():
    rng = np.random.default_rng(0)
    m = rng.random((9, 8, 7)) > 0.5
    padded = np.zeros((10, 9, 8), np.uint8)
    padded[:-1, :-1, :-1] = m
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    expect = ndimage.correlate(padded, kernel, mode="constant", cval=0)
    assert np.array_equal(neighbour_codes(m), expect)


# ------------------------------------------------------------------------------------- DSC and NSD --

def test_identical_masks_score_one():
    rng = np.random.default_rng(1)
    blob = ndimage.binary_opening(rng.random((30, 30, 20)) > 0.4)
    for m, spacing in ((blob, (1, 1, 1)), (blob, (0.8, 0.8, 2.5)), (ball((40, 40, 40), (20, 20, 20), 12), (1, 1, 1))):
        assert dsc_nsd(m, m, spacing, 0.0) == (1.0, 1.0)


def test_sphere_vs_itself_and_vs_shifted():
    sphere = ball((50, 50, 50), (25, 25, 25), 15)
    assert dsc_nsd(sphere, sphere, (1, 1, 1), 1.0) == (1.0, 1.0)
    shifted = np.roll(sphere, 2, axis=0)
    d, n = dsc_nsd(shifted, sphere, (1, 1, 1), 2.0)  # every surfel moves by exactly 2 mm: within tolerance
    assert n == pytest.approx(1.0)
    assert d == pytest.approx(2 * np.count_nonzero(sphere & shifted) / (2 * np.count_nonzero(sphere)))


def test_cube_shifted_by_one_voxel():
    gt = box((20, 20, 20), (3, 3, 3), (13, 13, 13))
    pred = box((20, 20, 20), (4, 3, 3), (14, 13, 13))
    d, n = dsc_nsd(pred, gt, (1, 1, 1), 1.0)
    assert d == pytest.approx(2 * 900 / 2000)  # 0.9
    assert n == pytest.approx(1.0)  # each surfel has its shifted twin 1 mm away


def test_cube_shifted_by_three_voxels_tolerance_one():
    """Cube [0, 10)^3 vs the same cube 3 voxels further along x, tolerance 1 mm, spacing 1.

    The gt surface has 486 face surfels (area 1), 108 edge surfels (sqrt(2)/2) and 8 corner ones
    (sqrt(3)/8). Within 1 mm of the shifted surface (its corners have x in 3..13): the side-wall ring
    (y or z at 0 or 10) for x = 2..10 (x = 2 is 1 mm from x = 3), and on the x = 10 face, which lies inside
    the shifted cube, the face surfels next to its rim (y or z at 1 or 9: 81 - 7*7 = 32).
    Rings x = 2..9: 8 x 36 faces + 8 x 4 edges; the x = 10 face: 32 faces, its 36 edges, its 4 corners.
    The shifted cube's surface is the mirror image (x -> 13 - x), so it contributes the same fraction.
    """
    within = 8 * 36 + 32 + (8 * 4 + 36) * SQ2 / 2 + 4 * SQ3 / 8
    total = 486 + 108 * SQ2 / 2 + 8 * SQ3 / 8
    expect = within / total  # 0.6541
    gt = box((20, 20, 20), (2, 4, 4), (12, 14, 14))
    pred = box((20, 20, 20), (5, 4, 4), (15, 14, 14))
    d, n = dsc_nsd(pred, gt, (1, 1, 1), 1.0)
    assert d == pytest.approx(2 * 700 / 2000)
    assert n == pytest.approx(expect, abs=1e-12)
    assert box_nsd_reference((2, 4, 4), (12, 14, 14), (5, 4, 4), (15, 14, 14), (1, 1, 1), 1.0) == pytest.approx(expect)
    print(f"\ncube shifted by 3, tolerance 1: NSD {n:.6f} (hand: {expect:.6f})")


def test_anisotropic_shift_along_z():
    """Spacing (1, 1, 3), cube of 10 voxels shifted by 1 slice = 3 mm. Tolerance 3: NSD 1. Tolerance 2:
    the side walls (x or y at an end, areas 3 per face surfel) stay within for z = 1..10, the z = 0 face and
    its rim do not, and on the top face (z = 10, inside the shifted cube) the surfels within 2 mm of the
    side walls in-plane count (81 - 5*5 = 56). Surfel areas at this spacing: z-face 1, x/y-face 3, edge along
    z 3*sqrt(2)/2, edge along x or y sqrt(10)/2, corner sqrt(19)/8.
    """
    spacing = (1.0, 1.0, 3.0)
    gt = box((16, 16, 16), (3, 3, 3), (13, 13, 13))
    pred = box((16, 16, 16), (3, 3, 4), (13, 13, 14))
    d3, n3 = dsc_nsd(pred, gt, spacing, 3.0)
    assert d3 == pytest.approx(0.9) and n3 == pytest.approx(1.0)
    d2, n2 = dsc_nsd(pred, gt, spacing, 2.0)
    total = 2 * 81 + 4 * 81 * 3 + 4 * 9 * 3 * SQ2 / 2 + 8 * 9 * math.sqrt(10) / 2 + 8 * math.sqrt(19) / 8
    within = 4 * 81 * 3 + 56 + 4 * 9 * 3 * SQ2 / 2 + 4 * 9 * math.sqrt(10) / 2 + 4 * math.sqrt(19) / 8
    assert n2 == pytest.approx(within / total, abs=1e-12)  # 0.8757
    assert n2 < 1
    print(f"\nanisotropic z shift, tolerance 2 mm: NSD {n2:.6f} (hand: {within / total:.6f})")


@pytest.mark.parametrize("lo_a,hi_a,lo_b,hi_b,spacing,tol", [
    ((2, 2, 2), (8, 8, 8), (2, 2, 4), (8, 8, 10), (1, 1, 1), 1.0),
    ((2, 2, 2), (8, 9, 7), (3, 1, 2), (9, 8, 8), (0.8, 1.2, 2.5), 1.5),
    ((1, 2, 3), (9, 6, 5), (2, 2, 2), (7, 8, 6), (2.0, 0.5, 1.0), 2.0),
    ((2, 2, 2), (6, 6, 6), (3, 3, 3), (5, 5, 5), (1, 1, 1), 1.0),  # one box inside the other
    ((1, 1, 1), (5, 5, 5), (3, 3, 3), (9, 9, 9), (1.5, 1.5, 1.5), 3.0),
])
def test_boxes_match_brute_force(lo_a, hi_a, lo_b, hi_b, spacing, tol):
    shape = (12, 12, 12)
    got = surface_dice(box(shape, lo_a, hi_a), box(shape, lo_b, hi_b), spacing, tol)
    assert got == pytest.approx(box_nsd_reference(lo_a, hi_a, lo_b, hi_b, spacing, tol), abs=1e-12)


def test_empty_masks():
    empty = np.zeros((8, 8, 8), bool)
    full = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    assert dsc_nsd(empty, empty, (1, 1, 1), 2.0) == (1.0, 1.0)
    assert dsc_nsd(empty, full, (1, 1, 1), 2.0) == (0.0, 0.0)  # nothing predicted
    assert dsc_nsd(full, empty, (1, 1, 1), 2.0) == (0.0, 0.0)  # predicted where gt has nothing


def test_low_dice_gives_nsd_zero():
    gt = box((30, 20, 20), (0, 2, 2), (10, 12, 12))
    far = box((30, 20, 20), (9, 2, 2), (19, 12, 12))  # overlap 1 slab of 100 voxels: DSC 0.1
    assert dsc_nsd(far, gt, (1, 1, 1), 100.0) == (pytest.approx(0.1), 0.0)
    edge = box((30, 20, 20), (8, 2, 2), (18, 12, 12))  # overlap 200: DSC exactly 0.2, NSD computed
    d, n = dsc_nsd(edge, gt, (1, 1, 1), 100.0)
    assert d == pytest.approx(0.2) and n == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ one case --

def test_evaluate_case_identical_label_maps():
    lab = np.zeros((30, 30, 30), np.uint8)
    for k in ORGANS:
        x = 2 * k
        lab[x:x + 2, 3:20, 5:25] = k
    out = evaluate_case(lab, lab, (0.8, 0.8, 2.0))
    assert list(out) == [LABELS[k] for k in ORGANS]
    assert all(v == {"DSC": 1.0, "NSD": 1.0} for v in out.values())


def test_evaluate_case_empty_rules():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:8, 2:8, 2:8] = 1  # liver only in gt
    pred[10:15, 10:15, 10:15] = 3  # spleen only in the prediction
    out = evaluate_case(pred, gt, (1, 1, 1))
    assert out["liver"] == {"DSC": 0.0, "NSD": 0.0}
    assert out["spleen"] == {"DSC": 0.0, "NSD": 0.0}
    assert out["pancreas"] == {"DSC": 1.0, "NSD": 1.0}  # in neither


def test_evaluate_case_rounds_to_four_decimals():
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[1:8, 1:8, 1:8] = 1  # 343 voxels
    pred = np.zeros_like(gt)
    pred[1:8, 1:8, 2:9] = 1  # 343 voxels, overlap 294
    out = evaluate_case(pred, gt, (1, 1, 1), labels=[1])
    assert out["liver"]["DSC"] == round(2 * 294 / 686, 4) == 0.8571


@pytest.mark.parametrize("organ", [5, 6, 10])
def test_z_range_rule(organ):
    """Aorta, IVC, esophagus: scored on gt[:, :, z_lo:z_hi], the last labelled slice z_hi left out."""
    gt = np.zeros((20, 20, 40), np.uint8)
    gt[5:15, 5:15, 10:20] = organ  # z_lo = 10, z_hi = 19: the slab is slices 10..18
    # outside the gt's z-range the prediction does not count, nor does the last labelled slice
    pred = gt.copy()
    pred[5:15, 5:15, 19:35] = organ
    pred[0:3, 0:3, 0:5] = organ
    assert evaluate_case(pred, gt, (1, 1, 1), [organ])[LABELS[organ]] == {"DSC": 1.0, "NSD": 1.0}
    missing_last = gt.copy()
    missing_last[:, :, 19] = 0
    assert evaluate_case(missing_last, gt, (1, 1, 1), [organ])[LABELS[organ]] == {"DSC": 1.0, "NSD": 1.0}
    # shifted up one slice: in the slab, gt has slices 10..18 (900 voxels), pred 11..18 (800)
    shifted = np.roll(gt, 1, axis=2)
    got = evaluate_case(shifted, gt, (1, 1, 1), [organ])[LABELS[organ]]
    assert got["DSC"] == round(2 * 800 / 1700, 4)  # 0.9412; with slice 19 it would be 1800/1900
    # predicted only outside the slab: an empty mask in the slab
    outside = np.zeros_like(gt)
    outside[5:15, 5:15, 25:30] = organ
    assert evaluate_case(outside, gt, (1, 1, 1), [organ])[LABELS[organ]] == {"DSC": 0.0, "NSD": 0.0}


def test_z_range_rule_not_applied_to_other_organs():
    gt = np.zeros((20, 20, 40), np.uint8)
    gt[5:15, 5:15, 10:20] = 1  # liver, 1000 voxels
    pred = gt.copy()
    pred[:, :, 19] = 0  # 900 voxels
    assert evaluate_case(pred, gt, (1, 1, 1), [1])["liver"]["DSC"] == round(1800 / 1900, 4)
    shifted = np.roll(gt, 1, axis=2)
    assert evaluate_case(shifted, gt, (1, 1, 1), [1])["liver"]["DSC"] == 0.9


def test_z_range_organ_on_one_slice_is_nan():
    """One labelled slice leaves an empty slab: the official script gives NaN (and its means skip it)."""
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 4] = 5
    out = evaluate_case(gt, gt, (1, 1, 1), [5, 1])
    assert math.isnan(out["aorta"]["DSC"]) and math.isnan(out["aorta"]["NSD"])
    assert out["liver"] == {"DSC": 1.0, "NSD": 1.0}


def test_evaluate_case_shape_mismatch():
    with pytest.raises(evaluate.InputError, match=r"\(10, 10, 10\).*\(10, 10, 11\)"):
        evaluate_case(np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 11), np.uint8), (1, 1, 1))


def test_tolerances_cover_every_organ():
    assert set(NSD_TOLERANCE_MM) == set(ORGANS) and LABELS[6] == "inferior_vena_cava"


# ----------------------------------------------------------------------------------- command line --

@pytest.fixture
def run_cli(monkeypatch, capsys):
    """npunet.cli.main with only the evaluate command registered (so no other module is imported)."""
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": cli.COMMANDS["evaluate"]})

    def run(*argv):
        code = cli.main(["evaluate", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _two_cases(folder_gt, folder_pred):
    folder_gt.mkdir()
    folder_pred.mkdir()
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[3:13, 3:13, 3:13] = 1
    gt[14:18, 14:18, 14:18] = 3
    pred = np.zeros_like(gt)
    pred[4:14, 3:13, 3:13] = 1  # liver shifted by 1: DSC 0.9
    write_nifti(folder_gt / "caseA.nii.gz", gt, (1.0, 1.0, 1.0))
    write_nifti(folder_pred / "caseA.nii.gz", pred)
    write_nifti(folder_gt / "caseB.nii.gz", gt, (2.0, 2.0, 2.0))
    write_nifti(folder_pred / "caseB.nii.gz", gt, (2.0, 2.0, 2.0))   # the same grid: another is refused
    return gt, pred


def test_cli_files_json(tmp_path, run_cli):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    _two_cases(gt_dir, pred_dir)
    out_json = tmp_path / "scores.json"
    code, out, err = run_cli(pred_dir / "caseA.nii.gz", gt_dir / "caseA.nii.gz", "--json", out_json, "--labels", "1,3")
    assert code == 0 and err == ""
    assert "liver" in out and "0.9000" in out and "mean over organs" in out and "pancreas" not in out
    res = json.loads(out_json.read_text())
    assert res["cases"]["caseA"]["liver"] == {"DSC": 0.9, "NSD": 1.0}  # tolerance 5 mm >= 1 mm shift
    assert res["cases"]["caseA"]["spleen"] == {"DSC": 0.0, "NSD": 0.0}
    assert res["mean_over_organs"] == {"DSC": 0.45, "NSD": 0.5}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_cli_folders_and_missing_prediction(tmp_path, run_cli):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt, _ = _two_cases(gt_dir, pred_dir)
    write_nifti(gt_dir / "caseC.nii.gz", gt)  # no prediction for caseC
    out_json = tmp_path / "scores.json"
    code, out, err = run_cli(pred_dir, gt_dir, "--json", out_json)
    assert code == 1  # a case could not be scored
    assert "caseC: error: no prediction caseC.nii.gz" in out
    res = json.loads(out_json.read_text())
    assert set(res["cases"]) == {"caseA", "caseB"} and set(res["errors"]) == {"caseC"}
    assert res["spacing_mm"]["caseB"] == [2.0, 2.0, 2.0]
    assert res["mean"]["liver"]["DSC"] == 0.95  # (0.9 + 1.0) / 2
    assert res["mean"]["spleen"]["DSC"] == 0.5


def test_cli_missing_file_one_line_error(tmp_path, run_cli):
    gt = write_nifti(tmp_path / "gt.nii.gz", np.ones((4, 4, 4)))
    code, out, err = run_cli(tmp_path / "nope.nii.gz", gt)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "nope.nii.gz" in err and "Traceback" not in err


def test_cli_shape_mismatch_one_line_error(tmp_path, run_cli):
    gt = write_nifti(tmp_path / "gt.nii.gz", np.ones((4, 4, 4)))
    pred = write_nifti(tmp_path / "pred.nii.gz", np.ones((4, 4, 5)))
    code, out, err = run_cli(pred, gt)
    assert code == 2 and err.count("\n") == 1
    assert "(4, 4, 5)" in err and "(4, 4, 4)" in err


def test_cli_bad_labels(tmp_path, run_cli):
    gt = write_nifti(tmp_path / "gt.nii.gz", np.ones((4, 4, 4)))
    code, _, err = run_cli(gt, gt, "--labels", "1,14")
    assert code == 2 and "14" in err and err.count("\n") == 1


def test_cli_subprocess_missing_file(tmp_path):
    """The real process: exit status 2 and a single stderr line, no traceback."""
    gt = write_nifti(tmp_path / "gt.nii.gz", np.ones((4, 4, 4)))
    prog = ("import sys, npunet.cli as c; c.COMMANDS = {'evaluate': c.COMMANDS['evaluate']}; "
            "sys.exit(c.main(sys.argv[1:]))")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", prog, "evaluate", str(tmp_path / "missing.nii.gz"), str(gt)],
                          capture_output=True, text=True, cwd=repo, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.nii.gz" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------ real data --

def test_real_label_map_against_itself(data_dir):
    gt = data_dir / "labelsTr" / "ts_abdomen.nii.gz"
    res = evaluate_paths(gt, gt)
    scores = res["cases"]["ts_abdomen"]
    assert res["spacing_mm"]["ts_abdomen"] == [3.0, 3.0, 3.0]
    assert all(v == {"DSC": 1.0, "NSD": 1.0} for v in scores.values()), scores


def test_label_noise_ceiling(data_dir):
    """ts_abdomen (TotalSegmentator v2 --fast) scored against a second model's labels (v1, full resolution):
    the agreement two good models reach, i.e. the ceiling label noise puts on any model scored against
    these labels. The esophagus is left out: it is unlabelled (unknown) in this case, not absent."""
    organs = [k for k in ORGANS if k != 10]
    res = evaluate_paths(data_dir / "labels_alt" / "ts_abdomen_tsv1_full.nii.gz",
                         data_dir / "labelsTr" / "ts_abdomen.nii.gz", organs)
    print("\n" + evaluate.format_report(res))
    scores = res["cases"]["ts_abdomen"]
    assert scores["liver"]["DSC"] > 0.97 and scores["liver"]["NSD"] > 0.99
    for name in ("spleen", "right_kidney", "left_kidney"):
        assert scores[name]["DSC"] > 0.95 and scores[name]["NSD"] > 0.98, name
    for name, v in scores.items():  # the hardest (pancreas, adrenals) still agree to DSC > 0.75
        assert v["DSC"] > 0.75 and v["NSD"] > 0.85, (name, v)
    assert 0.9 < res["mean_over_organs"]["DSC"] < 0.99
    # Regression pins: these exact values were cross-checked against an independent run of the
    # surface-distance package's algorithm with its own lookup table when this evaluation was written.
    assert scores["pancreas"] == {"DSC": 0.809, "NSD": 0.9568}
    assert scores["aorta"] == {"DSC": 0.9405, "NSD": 0.9136}
    assert scores["inferior_vena_cava"] == {"DSC": 0.9438, "NSD": 0.8991}
