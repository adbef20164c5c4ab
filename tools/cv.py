"""Leave-one-patient-out cross-validation of a training recipe: the judge of every recipe change.

    python -m tools.cv --output runs/cv -- --sampling organs --zoom-mm 0.85 3.0 --epochs 20 --steps-per-epoch 100

For each fold (by default the five abdominal cases ts_abdomen, ts_chest, tsds_s0009, amos_0001, amos_0013)
the recipe after `--` is trained by `python -m tools.train` on every other case of the data folder (so ts_cta
and the neck cases always train), the checkpoint is converted by tools/convert.py, and the held-out scan is
scored exactly as a user would score it: `npunet segment` with those weights, then `npunet evaluate`
against its label (the FLARE DSC and NSD). The result is a per-organ table of DSC and NSD per fold and the
mean over the folds where the organ is labelled and present (OUTPUT/cv_table.md, OUTPUT/cv.json).

Resumable: each fold keeps its state in OUTPUT/fold_CASE/; run the same command again and it goes on from
where it stopped (a fold's interrupted training resumes from its checkpoint, a finished fold is reused). The
recipe is kept in OUTPUT/recipe.json, and another recipe is refused there (its folds would be reused). Several
processes may share one OUTPUT when their --folds do not overlap (one per core); a last run over all folds
then gathers the table.
Ctrl-C or SIGTERM stop the running fold's training cleanly (it checkpoints).

A learning curve costs one run per fold: `--curve 2000,5000,10000` keeps each fold's checkpoint at those steps
(train.py --keep-steps) and scores each like the final weights (OUTPUT/cv_curve.md). While the folds still
train, `--so-far` (with the same --output, --folds and --curve, the recipe read from recipe.json) trains nothing
and scores the checkpoints they have kept so far (OUTPUT/cv_curve_so_far.md).

An organ is left out of a fold's scores when the held-out case does not annotate it (dataset.json's
"annotated", plus the `--unknown CASE:ORGAN` given to the recipe), and counted as absent when its label is
empty there: the FLARE score of an absent organ is 1 if nothing is predicted and 0 otherwise, which says
nothing about segmenting it, so those go into a separate false-positive column instead of the means.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.labels import LABELS
from tools import REPO
from tools.training.description import (annotated_organs, default_data_dir, label_names, list_cases,
                                        parse_unknown, read_dataset_json)
from tools.training.status import CHECKPOINT_NAME, read_status

ABDOMINAL_CASES = ("ts_abdomen", "ts_chest", "tsds_s0009", "amos_0001", "amos_0013")
ORGANS = [k for k in sorted(LABELS) if k != 0]


def run_child(cmd: list[str]) -> int:
    """Run cmd in the repository root (`python -m tools.train` finds the tools package there), forwarding
    SIGINT/SIGTERM to it (training checkpoints on either); its exit code."""
    child = subprocess.Popen(cmd, cwd=REPO)
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def fold_state(fold_dir: Path) -> str:
    """'new', 'partial' or 'trained', from the status.json beside the fold's checkpoint; from the checkpoint
    itself (with torch) when there is none as new as it (a fold trained before status.json existed)."""
    ckpt = fold_dir / CHECKPOINT_NAME
    if not ckpt.is_file():
        return "new"
    status = read_status(fold_dir)
    if status is not None:
        complete = status["complete"]
    else:
        import torch
        complete = torch.load(ckpt, map_location="cpu", weights_only=True).get("complete")
    return "trained" if complete else "partial"


def run_fold(case: str, cases: list[str], data: Path, out: Path, recipe: list[str], threads: int | None,
             curve: tuple[int, ...] = (), tta: bool = False) -> dict:
    """Train (or resume) the fold that holds `case` out, then segment and evaluate it; its evaluate JSON
    ({"final": ...} plus {step: ...} for each step of `curve`, kept by train.py --keep-steps, and "tta" for
    the final weights with `npunet segment --tta` when `tta`)."""
    fold_dir = out / f"fold_{case}"
    state = fold_state(fold_dir)
    train = [sys.executable, "-m", "tools.train"] + (["--threads", str(threads)] if threads else [])
    if state == "new":
        training = [c for c in cases if c != case]
        keep = ["--keep-steps", ",".join(map(str, curve))] if curve else []
        code = run_child(train + ["--data", str(data), "--cases", ",".join(training), "--output", str(fold_dir)]
                         + keep + recipe)
    elif state == "partial":
        code = run_child(train + ["--resume", str(fold_dir)])
    else:
        code = 0
    if code != 0 or fold_state(fold_dir) != "trained":
        raise SystemExit(f"cv: fold {case}: training stopped (exit code {code}); run the same command to go on")

    results = {"final": score_checkpoint(fold_dir, case, data, "")}
    if tta:
        results["tta"] = score_checkpoint(fold_dir, case, data, "", tta=True)
    for step in curve:
        if not (fold_dir / f"checkpoint_step{step}.pt").is_file():
            raise SystemExit(f"cv: fold {case}: no checkpoint_step{step}.pt (the run has fewer steps, or was "
                             f"started without --curve {step})")
        results[step] = score_checkpoint(fold_dir, case, data, f"_step{step}")
    return results


def score_checkpoint(fold_dir: Path, case: str, data: Path, tag: str, tta: bool = False) -> dict:
    """Convert fold_dir/checkpoint{tag}.pt, segment the held-out case with it as a user would (npunet segment,
    with --tta when `tta`) and score it (npunet evaluate); the evaluate JSON, kept as evaluate{tag}[_tta].json
    until the checkpoint changes."""
    checkpoint = fold_dir / f"checkpoint{tag}.pt"
    weights = fold_dir / f"fold{tag}.npuw"
    mode = "_tta" if tta else ""
    pred = fold_dir / "pred" / f"{case}{tag}{mode}.nii.gz"
    result = fold_dir / f"evaluate{tag}{mode}.json"
    if not result.is_file() or result.stat().st_mtime < checkpoint.stat().st_mtime:
        if not weights.is_file() or weights.stat().st_mtime < checkpoint.stat().st_mtime:
            from tools.convert import convert
            convert(checkpoint, weights)
        npunet = [sys.executable, "-m", "npunet"]
        t0 = time.perf_counter()
        steps = [npunet + ["segment", str(data / "imagesTr" / f"{case}_0000.nii.gz"), "-o", str(pred),
                           "--weights", str(weights), "--overwrite", "--quiet"] + (["--tta"] if tta else []),
                 npunet + ["evaluate", str(pred), str(data / "labelsTr" / f"{case}.nii.gz"), "--json", str(result)]]
        for cmd in steps:
            if subprocess.run(cmd, stdout=subprocess.DEVNULL, cwd=REPO).returncode != 0:
                raise SystemExit(f"cv: fold {case}: {' '.join(cmd[2:4])} failed")
        print(f"cv: fold {case}{tag}{mode}: segmented and evaluated ({time.perf_counter() - t0:.1f} s)", flush=True)
    return json.loads(result.read_text())


def organ_status(case: str, data: Path, meta: dict, unknown: dict, pred_path: Path) -> dict[int, str]:
    """Per organ in the held-out case: 'scored' (labelled and present), 'absent' (labelled, empty in the
    ground truth; 'absent, predicted' when the prediction has it) or 'unlabelled'."""
    gt = np.asarray(nib.load(str(data / "labelsTr" / f"{case}.nii.gz")).dataobj)
    pred = np.asarray(nib.load(str(pred_path)).dataobj)
    in_gt, in_pred = set(np.unique(gt).tolist()), set(np.unique(pred).tolist())
    annotated = set(annotated_organs(case, meta, unknown))
    out = {}
    for k in ORGANS:
        if k not in annotated:
            out[k] = "unlabelled"
        elif k in in_gt:
            out[k] = "scored"
        else:
            out[k] = "absent, predicted" if k in in_pred else "absent"
    return out


def summarise(folds: dict[str, dict], status: dict[str, dict[int, str]]) -> dict:
    """{organ: {"folds": {case: {"DSC", "NSD"} | status}, "mean": {"DSC", "NSD", "n"}, "false_positive":
    "k of m"}} plus the mean over organs of the per-organ means."""
    table = {}
    for k in ORGANS:
        name = LABELS[k]
        per_fold, dsc, nsd, fp, absent = {}, [], [], 0, 0
        for case, result in folds.items():
            s = status[case][k]
            if s == "scored":
                score = result["cases"][case][name]
                per_fold[case] = score
                if not math.isnan(score["DSC"]):
                    dsc.append(score["DSC"])
                    nsd.append(score["NSD"])
            else:
                per_fold[case] = s
                absent += s.startswith("absent")
                fp += s == "absent, predicted"
        mean = {"DSC": round(float(np.mean(dsc)), 4) if dsc else None,
                "NSD": round(float(np.mean(nsd)), 4) if nsd else None, "n": len(dsc)}
        table[name] = {"folds": per_fold, "mean": mean, "false_positive": f"{fp} of {absent}"}
    means = [v["mean"] for v in table.values() if v["mean"]["DSC"] is not None]
    overall = {m: round(float(np.mean([v[m] for v in means])), 4) for m in ("DSC", "NSD")}
    return {"organs": table, "mean_over_organs": overall}


def curve_markdown(by_step: dict, cases: list[str]) -> str:
    """Mean DSC / NSD over the folds per organ (rows) against training steps (columns)."""
    steps = list(by_step)
    lines = ["| organ | " + " | ".join(f"{s} steps DSC / NSD" for s in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for name in next(iter(by_step.values()))["organs"]:
        cells = []
        for s in steps:
            m = by_step[s]["organs"][name]["mean"]
            cells.append(f"{m['DSC']:.3f} / {m['NSD']:.3f} ({m['n']})" if m["DSC"] is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean over organs** | " + " | ".join(
        f"**{by_step[s]['mean_over_organs']['DSC']:.3f}** / {by_step[s]['mean_over_organs']['NSD']:.3f}"
        for s in steps) + " |")
    return f"Folds: {', '.join(cases)}\n\n" + "\n".join(lines) + "\n"


def markdown(summary: dict, cases: list[str]) -> str:
    head = "| organ | " + " | ".join(f"{c} DSC / NSD" for c in cases) + " | mean DSC / NSD (n) | predicted where absent |"
    lines = [head, "|" + "---|" * (len(cases) + 3)]
    for name, row in summary["organs"].items():
        cells = []
        for c in cases:
            v = row["folds"][c]
            cells.append(f"{v['DSC']:.3f} / {v['NSD']:.3f}" if isinstance(v, dict) else v)
        m = row["mean"]
        mean = f"**{m['DSC']:.3f}** / {m['NSD']:.3f} ({m['n']})" if m["DSC"] is not None else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} | {row['false_positive']} |")
    o = summary["mean_over_organs"]
    lines.append("| **mean over organs** | " + " | ".join("" for _ in cases) + f" | **{o['DSC']:.3f}** / "
                 f"{o['NSD']:.3f} | |")
    return "\n".join(lines) + "\n"


def score_so_far(out: Path, folds: list[str], data: Path, meta: dict, unknown: dict, curve: tuple[int, ...]) -> int:
    """--so-far: each fold's kept checkpoints that exist (and its final weights once trained) scored as a user
    would, without training; one table per step over the folds that have reached it."""
    tables = []
    for step in [*curve, "final"]:
        tag = "" if step == "final" else f"_step{step}"
        results, status = {}, {}
        for case in folds:
            fold_dir = out / f"fold_{case}"
            if (step == "final" and fold_state(fold_dir) != "trained") or not (fold_dir / f"checkpoint{tag}.pt").is_file():
                continue
            results[case] = score_checkpoint(fold_dir, case, data, tag)
            status[case] = organ_status(case, data, meta, unknown, fold_dir / "pred" / f"{case}{tag}.nii.gz")
        if results:
            name = "final weights" if step == "final" else f"step {step}"
            tables.append(f"### {name}\n\n" + markdown(summarise(results, status), list(results)))
    if not tables:
        raise SystemExit(f"cv: no fold in {out} has kept a checkpoint of --curve {','.join(map(str, curve))} yet")
    text = "\n".join(tables)
    (out / "cv_curve_so_far.md").write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m tools.cv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the folds and the table")
    p.add_argument("--data", type=Path, default=default_data_dir(), metavar="DIR",
                   help="FLARE-layout data folder (default: $NPUNET_DATA or ../shared/data; now %(default)s)")
    p.add_argument("--folds", default=",".join(ABDOMINAL_CASES), metavar="CASE[,CASE...]",
                   help="the held-out cases, one fold each (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads for training")
    p.add_argument("--curve", default="", metavar="STEP[,STEP...]",
                   help="a learning curve from the same runs: keep each fold's checkpoint at these steps and "
                        "score each like the final one (OUTPUT/cv_curve.md, cv_curve.json)")
    p.add_argument("--so-far", action="store_true",
                   help="train nothing: score the --curve checkpoints (and final weights) the folds have kept so "
                        "far, while their trainings run, and print a table per step with the folds that have it "
                        "(OUTPUT/cv_curve_so_far.md)")
    p.add_argument("--tta", action="store_true",
                   help="also score each fold's final weights with `npunet segment --tta` (test-time mirroring; "
                        "OUTPUT/cv_tta_table.md, cv_tta.json)")
    args = p.parse_args(own)
    args.output, args.data = args.output.resolve(), args.data.resolve()     # the children run in the repository
    try:
        curve = tuple(sorted({int(t) for t in args.curve.split(",") if t.strip()}))
    except ValueError:
        raise SystemExit(f"cv: --curve {args.curve!r} must be comma-separated step numbers") from None
    if "--cases" in recipe or "--holdout" in recipe or "--output" in recipe or "--resume" in recipe:
        raise SystemExit("cv: the recipe after -- must not choose --cases, --holdout, --output or --resume")
    earlier = args.output / "recipe.json"
    if earlier.is_file():       # trained folds are reused: they must come from the same recipe
        before = json.loads(earlier.read_text()).get("recipe")
        if args.so_far and not recipe:
            recipe = before or []
        if before != recipe:
            raise SystemExit(f"cv: {args.output} holds folds of another recipe ({' '.join(before or []) or 'none'}); "
                             f"give a new --output for this one ({' '.join(recipe) or 'none'})")
    cases = list_cases(args.data)
    folds = [c.strip() for c in args.folds.split(",") if c.strip()]
    missing = [c for c in folds if c not in cases]
    if missing:
        raise SystemExit(f"cv: no image+label for folds {missing} in {args.data}")
    meta = read_dataset_json(args.data)
    unknown = parse_unknown([recipe[i + 1] for i, a in enumerate(recipe[:-1]) if a == "--unknown"],
                            label_names(meta))
    if args.so_far:
        return score_so_far(args.output, folds, args.data, meta, unknown, curve)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "recipe.json").write_text(json.dumps({"folds": folds, "recipe": recipe, "data": str(args.data),
                                                          "command": " ".join(sys.argv)}, indent=1) + "\n")
    results, status = {}, {}
    for case in folds:
        print(f"cv: fold {case} ({folds.index(case) + 1} of {len(folds)})", flush=True)
        by_step = run_fold(case, cases, args.data, args.output, recipe, args.threads, curve, args.tta)
        results[case] = by_step
        status[case] = organ_status(case, args.data, meta, unknown, args.output / f"fold_{case}" / "pred" /
                                    f"{case}.nii.gz")
    if curve:
        by_step = {s: summarise({c: r[s] for c, r in results.items()}, status) for s in curve}
        by_step["final"] = summarise({c: r["final"] for c, r in results.items()}, status)
        (args.output / "cv_curve.json").write_text(json.dumps({"folds": folds, "recipe": recipe, "steps": {
            str(s): v for s, v in by_step.items()}}, indent=1) + "\n")
        (args.output / "cv_curve.md").write_text(curve_markdown(by_step, folds))
        print(curve_markdown(by_step, folds))
    if args.tta:
        summary_tta = summarise({c: r["tta"] for c, r in results.items()}, status)
        (args.output / "cv_tta.json").write_text(json.dumps({"folds": folds, "recipe": recipe, **summary_tta},
                                                            indent=1) + "\n")
        (args.output / "cv_tta_table.md").write_text(markdown(summary_tta, folds))
        print("with --tta:\n" + markdown(summary_tta, folds))
    results = {c: r["final"] for c, r in results.items()}
    summary = summarise(results, status)
    table = markdown(summary, folds)
    (args.output / "cv.json").write_text(json.dumps({"folds": folds, "recipe": recipe, **summary}, indent=1) + "\n")
    (args.output / "cv_table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
