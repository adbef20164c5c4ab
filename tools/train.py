"""Train an npunet network (default: the depthwise-separable ECA U-Net of Cheng et al., FLARE 2024 Task 2)
in PyTorch on a FLARE-layout folder, and write a checkpoint that `python -m tools.convert` turns into npunet
weights.

    python -m tools.train --unknown ts_abdomen:esophagus --holdout ts_abdomen --output runs/abdomen-out
    python -m tools.train --epochs 2 --cases ts_chest --device cpu --output /tmp/x      # a quick smoke run

This file is the command line; the work is in tools/training/, one concern per module.

What it promises:
- The network sees exactly what npunet sees at inference (tools/training/data.py: every training slice is
  made by npunet's own preprocessing; tests/test_train.py checks the arrays are equal).
- The recipe is the paper's: Dice + cross-entropy, AdamW lr 1e-3, cosine annealing over all steps, batch 8,
  100 epochs (an epoch is one pass over all training slices). Weight decay 1e-4 (the paper gives none;
  torch's AdamW default of 1e-2 is strong for a 0.4 M-parameter net on a few hundred slices).
- Partial labels are handled with the marginal loss (tools/training/loss.py): an organ a case does not
  annotate is unknown there, never taught as background.
- Augmentation runs in torch on the training device (tools/training/augment.py); a left-right flip (--flip)
  always swaps the left/right organ labels with it, since organs are sided.
- The checkpoint is {"spec", "state_dict", "config", "cases", "labels", "preprocessing", "train_state",
  "complete"}: only plain Python types and tensors, so torch.load(weights_only=True) reads it; status.json
  beside it says how far it got. A run stopped at any step (Ctrl-C, SIGTERM, --run-steps) resumes with
  --resume DIR and ends with the weights of an uninterrupted run (same device and thread count).

Data layout: see tools/training/description.py (dataset.json's labels and per-case "annotated" lists).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from npunet.preprocess import DEFAULT_PREPROCESSING
from tools import REPO
from tools.torch_model import load_spec
from tools.training.augment import AUGMENT_DEFAULTS
from tools.training.data import build_dataset
from tools.training.description import (annotated_organs, default_data_dir, label_names, list_cases,
                                        parse_class_weights, parse_pairs, parse_unknown,
                                        read_dataset_json)
from tools.training.loop import PRECISIONS, Trainer
from tools.training.predict import segment_holdout
from tools.training.run import run_training
from tools.training.sampling import SAMPLERS
from tools.training.status import CHECKPOINT_NAME

# The options that define what is trained; a resumed run takes them from its checkpoint.
RECIPE_OPTIONS = ("data", "cases", "holdout", "unknown", "spec", "epochs", "steps_per_epoch", "batch_size", "lr",
                  "weight_decay", "no_augment", "scale", "zoom_mm", "translate", "sampling", "p_organ", "seed",
                  "flip", "organ_shift_hu", "precision", "organ_slice_power", "class_weight",
                  "pair", "p_pair")


def parse_steps(text) -> set[int]:
    """'2000,5000' -> {2000, 5000} (None or '' -> empty)."""
    try:
        steps = {int(t) for t in str(text or "").split(",") if t.strip()}
    except ValueError:
        raise SystemExit(f"train: --keep-steps {text!r} must be comma-separated step numbers") from None
    if any(s < 1 for s in steps):
        raise SystemExit(f"train: --keep-steps {text!r}: steps start at 1")
    return steps


def _plain(v):
    """args values as plain JSON-able / weights_only-loadable Python types."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The shipped recipe (weights/MODEL_CARD.md) on every case of the data folder:\n"
               "  python -m tools.train --output runs/all8\n"
               "Stop it at any time (Ctrl-C, or SIGTERM): it checkpoints and says how to go on. Resume with:\n"
               "  python -m tools.train --resume runs/all8\n"
               "Then: python -m tools.convert runs/all8/checkpoint.pt -o weights/dsconv_eca_unet.npuw")
    d = p.add_argument_group("data")
    d.add_argument("--data", type=Path, default=default_data_dir(), metavar="DIR",
                   help="FLARE-layout folder with imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz and "
                        "dataset.json (default: $NPUNET_DATA, else ../shared/data beside the repository; "
                        "now %(default)s)")
    d.add_argument("--cases", default=None, metavar="CASE[,CASE...]",
                   help="comma-separated cases to train on (default: every case with an image and a label)")
    d.add_argument("--holdout", default=None, metavar="CASE",
                   help="leave CASE out of training; afterwards segment it with the trained model (npunet's "
                        "preprocessing, bilinear logit upsampling, argmax, closing) and write "
                        "OUTPUT/pred/CASE.nii.gz plus a quick per-organ Dice against its label "
                        "(python -m tools.cv scores held-out cases with npunet segment + npunet evaluate instead)")
    d.add_argument("--unknown", action="append", default=[], metavar="CASE:LABEL[,LABEL...]",
                   help="mark organs (by number or name) as unknown in CASE, on top of dataset.json's "
                        "'annotated' lists: the marginal loss then never teaches them as background there. "
                        "Repeatable. Example: --unknown ts_abdomen:esophagus")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--spec", default="dsconv_eca_unet", metavar="NAME|JSON",
                   help="architecture: a built-in spec name or a spec JSON file (default: %(default)s)")
    m.add_argument("--epochs", type=int, default=100, metavar="N",
                   help="epochs; one epoch is one pass over all training slices, or --steps-per-epoch "
                        "batches (default: %(default)s)")
    m.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="batches per epoch instead of ceil(slices / batch size): fixes the number of steps "
                        "whatever the number of slices (cross-validation folds)")
    m.add_argument("--batch-size", type=int, default=8, metavar="N", help="slices per batch (default: %(default)s)")
    m.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW peak learning rate, cosine-annealed to 0 over all steps (default: %(default)s)")
    m.add_argument("--weight-decay", type=float, default=1e-4, metavar="WD", help="AdamW weight decay (default: %(default)s)")
    m.add_argument("--sampling", choices=SAMPLERS, default="uniform",
                   help="uniform: every slice once per epoch; organs: with probability --p-organ a slice "
                        "showing an organ drawn uniformly from the organs, else a random slice "
                        "(default: %(default)s)")
    m.add_argument("--p-organ", type=float, default=0.5, metavar="P",
                   help="share of organ-drawn samples with --sampling organs (default: %(default)s)")
    m.add_argument("--organ-slice-power", type=float, default=0.0, metavar="P",
                   help="with --sampling organs, draw the slice that shows the drawn organ with weight "
                        "area**-P (area: the organ's pixels in it), so an organ's thin ends (a kidney's poles) "
                        "come more often; 0: uniform over its slices (default: %(default)s)")
    m.add_argument("--pair", action="append", default=[], metavar="LABEL:LABEL",
                   help="with --sampling organs and --p-pair, a pair of organs the model confuses "
                        "(e.g. left_kidney:spleen); repeatable")
    m.add_argument("--p-pair", type=float, default=0.0, metavar="P",
                   help="share of the organ-drawn samples that are instead a slice showing both organs of a "
                        "--pair drawn uniformly (default: %(default)s, never)")
    m.add_argument("--class-weight", action="append", default=[], metavar="LABEL=W",
                   help="weight the cross-entropy of voxels labelled LABEL (a name or id in dataset.json) by W "
                        "(others 1; the Dice part is not weighted), e.g. --class-weight left_kidney=2; "
                        "repeatable (default: every class 1)")
    m.add_argument("--no-augment", action="store_true",
                   help="train without augmentation (default: random scale 0.8-1.2, rotation +-15 deg, "
                        "elastic, intensity shift/scale and gamma; a left-right flip only with --flip)")
    m.add_argument("--scale", type=float, nargs=2, default=AUGMENT_DEFAULTS["scale"], metavar=("LO", "HI"),
                   help="range of the random zoom factor, whatever the scan's spacing (default: %(default)s); "
                        "replaced by --zoom-mm when that is given")
    m.add_argument("--zoom-mm", type=float, nargs=2, default=AUGMENT_DEFAULTS["zoom_mm"], metavar=("LO", "HI"),
                   help="spacing-aware zoom: every sample is zoomed so that one network pixel covers LO..HI mm "
                        "(log-uniform), so a 0.57 mm and a 3 mm scan both show organs at realistic sizes "
                        "(default: off)")
    m.add_argument("--translate", type=float, default=AUGMENT_DEFAULTS["translate"], metavar="T",
                   help="random shift of up to T half-widths, plus the margin a zoomed-out slice leaves "
                        "(default: %(default)s)")
    m.add_argument("--flip", type=float, default=AUGMENT_DEFAULTS["p_flip"], metavar="P",
                   help="left-right mirror each sample with probability P, the left/right organ labels swapped "
                        "with it (kidneys, adrenal glands), so a right kidney stays on the patient's right "
                        "(default: %(default)s, never)")
    m.add_argument("--organ-shift-hu", type=float, default=0.0, metavar="HU",
                   help="per sample, move each labelled organ's voxels by its own uniform shift in +-HU, as "
                        "contrast phases move organs' HU apart (default: %(default)s, off)")
    m.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the forward under torch.autocast in bfloat16 (weights, optimiser and loss stay "
                        "float32): 1.4x faster steps on CPUs with native bfloat16 (AVX512-BF16 or AMX), slower "
                        "elsewhere (default: %(default)s)")
    m.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for python, numpy and torch (init, batch order, augmentation) (default: %(default)s)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device: cpu, cuda or cuda:N (default: cuda if available, else cpu; now %(default)s)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads for CPU work (default: torch's choice). A resumed run equals an "
                        "uninterrupted one when both use the same device and thread count")
    r.add_argument("--output", type=Path, default=None, metavar="DIR",
                   help="output folder for checkpoint.pt, log.jsonl and pred/ (default: runs/<timestamp> in "
                        "the repository)")
    r.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="go on with the run in DIR from its checkpoint.pt, with the recipe stored there "
                        "(recipe options given again must agree with it)")
    r.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="MIN",
                   help="write checkpoint.pt at least every MIN minutes, at every epoch's end and at exit "
                        "(default: %(default)s)")
    r.add_argument("--keep-steps", default=None, metavar="N[,N...]",
                   help="also keep the checkpoint of these steps as checkpoint_stepN.pt (a learning curve from "
                        "one run: python -m tools.cv --curve scores each)")
    r.add_argument("--run-steps", type=int, default=None, metavar="N",
                   help="stop after N steps in this run (checkpointed; --resume goes on): train in slices")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; with --resume, the recipe comes from the checkpoint (what is given again must agree)."""
    args = build_parser().parse_args(argv)
    if args.resume is None:
        return args
    path = Path(args.resume) / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"train: --resume {args.resume}: no checkpoint.pt there")
    saved_config = torch.load(path, map_location="cpu", weights_only=True)["config"]
    saved = saved_config.get("recipe")
    explicit_defaults = {a.dest: a.default for a in build_parser()._actions}   # for options newer than the run
    if saved is None:
        raise SystemExit(f"train: {path} holds no recipe to resume (written by an older train.py)")
    explicit = build_parser()                               # the same options, without defaults: what was given
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    given = vars(explicit.parse_args(argv))
    for key in RECIPE_OPTIONS:
        if key in given and _plain(given[key]) != saved.get(key):
            raise SystemExit(f"train: --{key.replace('_', '-')} {_plain(given[key])!r} differs from the resumed "
                             f"run's {saved.get(key)!r}; leave it out to resume")
        default = explicit_defaults.get(key)
        setattr(args, key, Path(saved[key]) if key == "data" else saved.get(key, default))
    if "keep_steps" not in given:
        args.keep_steps = saved_config.get("keep_steps")
    args.output = Path(args.resume)
    return args


def check_args(args: argparse.Namespace) -> set[int]:
    """SystemExit naming the option and its value for the first option out of range; the --keep-steps."""
    if args.epochs < 1 or args.batch_size < 1 or (args.steps_per_epoch is not None and args.steps_per_epoch < 1):
        raise SystemExit(f"train: --epochs {args.epochs}, --batch-size {args.batch_size} and --steps-per-epoch "
                         f"{args.steps_per_epoch} must be >= 1")
    if args.run_steps is not None and args.run_steps < 1:
        raise SystemExit(f"train: --run-steps {args.run_steps} must be >= 1")
    keep_steps = parse_steps(args.keep_steps)
    if not 0.0 <= args.flip <= 1.0:
        raise SystemExit(f"train: --flip {args.flip} is not in [0, 1]")
    if args.organ_shift_hu < 0:
        raise SystemExit(f"train: --organ-shift-hu {args.organ_shift_hu} must be >= 0")
    if not 0.0 <= args.p_organ <= 1.0:
        raise SystemExit(f"train: --p-organ {args.p_organ} is not in [0, 1]")
    if not 0.0 <= args.p_pair <= 1.0:
        raise SystemExit(f"train: --p-pair {args.p_pair} is not in [0, 1]")
    if args.p_pair > 0 and (args.sampling != "organs" or not args.pair):
        raise SystemExit(f"train: --p-pair {args.p_pair} needs --sampling organs and at least one --pair")
    if not 0.0 <= args.organ_slice_power <= 2.0:
        raise SystemExit(f"train: --organ-slice-power {args.organ_slice_power} is not in [0, 2]")
    if args.zoom_mm is not None and not 0 < args.zoom_mm[0] <= args.zoom_mm[1]:
        raise SystemExit(f"train: --zoom-mm {args.zoom_mm} must be 0 < LO <= HI")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"train: --device {args.device} but torch sees no CUDA device; use --device cpu")
    return keep_steps


def training_cases(args: argparse.Namespace) -> list[str]:
    """--cases (default: every case of --data with an image and a label) without --holdout."""
    available = list_cases(args.data)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else list(available)
    missing = [c for c in cases + ([args.holdout] if args.holdout else []) if c not in available]
    if missing:
        raise SystemExit(f"train: no image+label for {missing} in {args.data}; cases there: {available}")
    if args.holdout:
        cases = [c for c in cases if c != args.holdout]
    if not cases:
        raise SystemExit("train: no training cases left")
    return cases


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_steps = check_args(args)
    meta = read_dataset_json(args.data)
    names = label_names(meta)
    cases = training_cases(args)
    unknown = parse_unknown(args.unknown, names)
    class_weight = parse_class_weights(args.class_weight, names)
    pairs = parse_pairs(args.pair, names)
    spec = load_spec(args.spec)
    params = dict(DEFAULT_PREPROCESSING)
    out_dir = args.output or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / "log.jsonl"
    if args.resume is None and ckpt_path.exists():
        raise SystemExit(f"train: {ckpt_path} exists; resume it with --resume {out_dir}, or choose another --output")

    print(f"train: cases {cases} from {args.data}" + (f", holdout {args.holdout}" if args.holdout else ""))
    dataset = build_dataset(args.data, cases, params, unknown, num_classes=spec["num_classes"])
    n = dataset["images"].shape[0]
    augment_cfg = {**AUGMENT_DEFAULTS, "scale": list(args.scale), "translate": float(args.translate),
                   "zoom_mm": list(args.zoom_mm) if args.zoom_mm is not None else None,
                   "p_flip": float(args.flip),
                   "organ_shift": float(args.organ_shift_hu) / float(params["hu_max"] - params["hu_min"])}
    try:
        trainer = Trainer(dataset, spec, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, steps_per_epoch=args.steps_per_epoch,
                          augment=not args.no_augment, augment_cfg=augment_cfg, sampling=args.sampling,
                          p_organ=args.p_organ, organ_slice_power=args.organ_slice_power,
                          pairs=pairs, p_pair=args.p_pair, class_weight=class_weight, device=args.device,
                          seed=args.seed, precision=args.precision)
    except ValueError as e:                 # a recipe the data cannot serve (a --pair no slice shows)
        raise SystemExit(f"train: {e}") from None
    config = {**{k: _plain(v) for k, v in vars(args).items() if k not in ("resume", "output")},
              "recipe": {k: _plain(getattr(args, k)) for k in RECIPE_OPTIONS}, "output": str(out_dir),
              "spec_name": spec.get("name"), "num_slices": n,
              "slices_per_case": dataset["slices"], "annotated": {c: v for c, v in dataset["annotated"].items()},
              "unknown": unknown, "steps_per_epoch": trainer.steps_per_epoch, "total_steps": trainer.total_steps,
              "optimizer": "AdamW", "schedule": "cosine annealing per step to 0",
              "loss": "marginal CE + batch soft Dice over annotated organs (background excluded)",
              "augmentation": augment_cfg if not args.no_augment else None,
              "torch_version": str(torch.__version__), "epochs_done": 0, "train_seconds": 0.0}
    if args.resume is not None:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if saved.get("train_state") is None:
            raise SystemExit(f"train: {ckpt_path} holds no training state (written by an older train.py)")
        trainer.load_state_dict(saved["train_state"])
        config.update({k: saved["config"][k] for k in ("epochs_done", "train_seconds", "torch_version")
                       if k in saved["config"]})
        print(f"train: resuming {out_dir} at step {trainer.step} of {trainer.total_steps}")
    else:
        log_path.write_text("")
    print(f"train: {n} slices, {trainer.steps_per_epoch} steps/epoch x {args.epochs} epochs, batch "
          f"{args.batch_size}, sampling {args.sampling}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}; output {out_dir}")

    seconds_before = float(config["train_seconds"])
    t_start = time.perf_counter()

    def checkpoint_contents() -> dict:
        config["epochs_done"] = trainer.step // trainer.steps_per_epoch
        config["train_seconds"] = round(seconds_before + time.perf_counter() - t_start, 1)
        return {"spec": spec,
                "state_dict": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
                "config": config, "cases": list(cases), "labels": dict(names), "preprocessing": params,
                "train_state": trainer.state_dict(), "complete": trainer.done}

    signum = run_training(trainer, out_dir, checkpoint_contents, checkpoint_minutes=args.checkpoint_minutes,
                          keep_steps=keep_steps, run_steps=args.run_steps)
    if not trainer.done:
        why = f"stopped by signal {signum}" if signum else f"stopped after --run-steps {args.run_steps}"
        print(f"train: {why} at step {trainer.step} of {trainer.total_steps}; checkpoint written. Go on with:\n"
              f"  python -m tools.train --resume {out_dir}", file=sys.stderr)
        return 128 + signum if signum else 0
    print(f"train: wrote {ckpt_path} ({config['train_seconds']:.1f} s of training in all)")
    if args.holdout:
        segment_holdout(trainer.model, args.data, args.holdout, annotated_organs(args.holdout, meta, unknown),
                        names, params, args.device, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
