"""Where a prediction's kidney voxels went: the failures issue 21 aims the recipe at, measured.

    python -m tools.kidney_errors runs/cv/fold_tsds_s0009/pred/tsds_s0009.nii.gz [...] [--data ../shared/data]
    python -m tools.kidney_errors --draws tsds_s0009 [--power 0 0.5]

For each predicted label map (a file named CASE*.nii.gz, CASE a case of the data folder, scored against
labelsTr/CASE.nii.gz), and each kidney the truth labels:
- where its true voxels went: the share predicted as the kidney itself, background, the spleen, the liver, the
  other kidney, or another organ (a kidney labelled spleen is the confusion users saw; one labelled background
  is a kidney not found);
- its recall in the upper, middle and lower third of its head-feet extent (the poles are where the model loses
  kidneys). Meaningless for a short slab (the AMOS cases are 11 slices at the kidneys): the thirds are printed
  only for a kidney spanning at least 15 slices.

--draws HELD_OUT: which kidney slices organ sampling draws when training the fold that holds HELD_OUT out
(torch needed): the share of the draws in the upper, middle and lower third of each training case's kidney
and in slabs too short for thirds, for each --power (train.py's --organ-slice-power).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.labels import LABELS

BY_NAME = {name: index for index, name in LABELS.items()}
KIDNEYS = (("right_kidney", "left_kidney"), ("left_kidney", "right_kidney"))
DESTINATIONS = ("itself", "background", "spleen", "liver", "other kidney", "other organ")
MIN_SLICES_FOR_THIRDS = 15


def case_of(prediction: Path, cases: list[str]) -> str:
    """The data folder's case whose name starts the prediction's file name (the longest such name)."""
    matches = [case for case in cases if prediction.name.startswith(case)]
    if not matches:
        raise SystemExit(f"kidney_errors: {prediction.name} does not start with a case name of the data folder "
                         f"({', '.join(sorted(cases))})")
    return max(matches, key=len)


def destinations(truth: np.ndarray, prediction: np.ndarray, kidney: str, other: str) -> dict[str, float]:
    """Share of the kidney's true voxels that the prediction gives each destination (they sum to 1)."""
    got = prediction[truth == BY_NAME[kidney]]
    count = {"itself": BY_NAME[kidney], "background": 0, "spleen": BY_NAME["spleen"], "liver": BY_NAME["liver"],
             "other kidney": BY_NAME[other]}
    shares = {name: float(np.count_nonzero(got == label)) / got.size for name, label in count.items()}
    shares["other organ"] = 1.0 - sum(shares.values())
    return shares


def recall_by_thirds(truth: np.ndarray, prediction: np.ndarray, label: int, axial: int,
                     superior_last: bool) -> list[float] | None:
    """Recall of `label` in the upper, middle and lower third of the slices that show it along `axial`."""
    other_axes = tuple(axis for axis in range(3) if axis != axial)
    slices = np.flatnonzero((truth == label).any(axis=other_axes))
    if slices.size < MIN_SLICES_FOR_THIRDS:
        return None
    thirds = np.array_split(slices, 3)
    if superior_last:
        thirds = thirds[::-1]
    recalls = []
    for third in thirds:
        window = [slice(None)] * 3
        window[axial] = slice(third[0], third[-1] + 1)
        true_here = truth[tuple(window)] == label
        recalls.append(float(np.count_nonzero(prediction[tuple(window)][true_here] == label)) / true_here.sum())
    return recalls


def report(prediction_path: Path, data: Path, cases: list[str]) -> list[str]:
    case = case_of(prediction_path, cases)
    truth_image = nib.load(data / "labelsTr" / f"{case}.nii.gz")
    truth = np.asarray(truth_image.dataobj).astype(np.uint8)
    prediction = np.asarray(nib.load(prediction_path).dataobj).astype(np.uint8)
    if prediction.shape != truth.shape:
        raise SystemExit(f"kidney_errors: {prediction_path} has shape {prediction.shape}, its truth "
                         f"labelsTr/{case}.nii.gz {truth.shape}")
    codes = nib.aff2axcodes(truth_image.affine)
    axial = next(axis for axis, code in enumerate(codes) if code in "SI")
    lines = [f"{prediction_path} (truth labelsTr/{case}.nii.gz)"]
    for kidney, other in KIDNEYS:
        voxels = int(np.count_nonzero(truth == BY_NAME[kidney]))
        if voxels == 0:
            continue
        shares = destinations(truth, prediction, kidney, other)
        went = ", ".join(f"{name} {shares[name]:.2f}" for name in DESTINATIONS if shares[name] >= 0.005)
        thirds = recall_by_thirds(truth, prediction, BY_NAME[kidney], axial, codes[axial] == "S")
        poles = ("; recall upper / middle / lower third " + " / ".join(f"{r:.2f}" for r in thirds)
                 if thirds else "; slab too short for thirds")
        lines.append(f"  {kidney} ({voxels:,} voxels): {went}{poles}")
    return lines


def draw_shares(data: Path, held_out: str, powers: list[float]) -> list[str]:
    """Shares of organ sampling's kidney draws per third (upper, middle, lower) and in short slabs, for the
    training set of the fold without `held_out` (RAS slices: a higher index is more superior)."""
    import torch

    from tools.training.data import build_dataset
    from tools.training.description import label_names, list_cases, parse_unknown, read_dataset_json
    cases = [case for case in list_cases(data) if case != held_out]
    unknown = parse_unknown(["ts_abdomen:esophagus"], label_names(read_dataset_json(data)))
    dataset = build_dataset(data, cases, unknown=unknown, verbose=False)
    areas, case_index = dataset["areas"], dataset["case_index"]
    lines = [f"fold without {held_out}: training cases {', '.join(cases)}"]
    for kidney, _ in KIDNEYS:
        slices = torch.nonzero(areas[:, BY_NAME[kidney]] > 0).flatten()
        part = torch.full((len(slices),), 3)                  # 0 upper, 1 middle, 2 lower third, 3 slab
        for case in case_index[slices].unique():
            mine = torch.nonzero(case_index[slices] == case).flatten()
            if len(mine) >= MIN_SLICES_FOR_THIRDS:
                top_down = mine[torch.argsort(slices[mine], descending=True)]
                for third, members in enumerate(torch.tensor_split(top_down, 3)):
                    part[members] = third
        for power in powers:
            weights = areas[slices, BY_NAME[kidney]].double() ** -power
            shares = [float(weights[part == p].sum() / weights.sum()) for p in range(4)]
            lines.append(f"  {kidney}, power {power:g}: upper / middle / lower third / slabs "
                         + " / ".join(f"{v:.2f}" for v in shares) + f" ({len(slices)} slices)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kidney_errors", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="*", type=Path, help="predicted label maps (CASE*.nii.gz)")
    parser.add_argument("--draws", metavar="HELD_OUT", help="the kidney draws of the fold without HELD_OUT")
    parser.add_argument("--power", type=float, nargs="+", default=[0.0, 0.5],
                        help="--organ-slice-power values for --draws (default: 0 0.5)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NPUNET_DATA", "../shared/data")),
                        help="FLARE-layout data folder with labelsTr/ (default $NPUNET_DATA or ../shared/data)")
    args = parser.parse_args(argv)
    if not (args.data / "labelsTr").is_dir():
        raise SystemExit(f"kidney_errors: no labelsTr/ in the data folder {args.data}")
    if not args.predictions and not args.draws:
        parser.error("give predicted label maps, or --draws HELD_OUT")
    cases = [path.name[:-len(".nii.gz")] for path in (args.data / "labelsTr").glob("*.nii.gz")]
    if args.draws:
        if args.draws not in cases:
            raise SystemExit(f"kidney_errors: --draws {args.draws} is not a case of {args.data}")
        print("\n".join(draw_shares(args.data, args.draws, args.power)))
    for path in args.predictions:
        if not path.is_file():
            raise SystemExit(f"kidney_errors: no prediction file {path}")
        print("\n".join(report(path, args.data, cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
