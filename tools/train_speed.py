"""Seconds per training step of the shipped recipe on this CPU, and where they go (issue 21: CPU time is the
limit of training).

    python -m tools.train_speed [--precision fp32 bf16] [--threads 1] [--steps 15]

Builds the training set of the data folder as `python -m tools.train` does (the eight cases, ts_abdomen's
esophagus unknown), the shipped recipe's Trainer (organ sampling, zoom 0.85-3 mm, translation 0.1), runs
--warmup untimed steps (3), then --steps timed ones, and prints per precision the median seconds per step, steps per
second, and the mean milliseconds per stage (sampling, augmentation, forward, loss, backward, optimiser: the
trainer's own stage clock), with the CPU named. Precisions are measured in turns (one step each, interleaved),
so a machine that gets busier slows them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from npunet.machine import cpu_model
from tools.torch_model import load_spec
from tools.training.augment import AUGMENT_DEFAULTS
from tools.training.data import build_dataset
from tools.training.description import label_names, list_cases, parse_unknown, read_dataset_json
from tools.training.loop import PRECISIONS, STAGES, Trainer

SHIPPED = {"sampling": "organs", "p_organ": 0.5, "augment_cfg": {**AUGMENT_DEFAULTS, "zoom_mm": [0.85, 3.0],
                                                                 "translate": 0.1}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the recipe trains)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per precision (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NPUNET_DATA", "../shared/data")))
    args = parser.parse_args(argv)
    if not (args.data / "dataset.json").is_file():
        raise SystemExit(f"train_speed: no dataset.json in the data folder {args.data}")
    torch.set_num_threads(args.threads)
    names = label_names(read_dataset_json(args.data))
    dataset = build_dataset(args.data, list_cases(args.data),
                            unknown=parse_unknown(["ts_abdomen:esophagus"], names), verbose=False)
    spec = load_spec("dsconv_eca_unet")
    trainers = {p: Trainer(dataset, spec, epochs=20, steps_per_epoch=100, precision=p, **SHIPPED)
                for p in args.precision}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_step()
        trainer.stage_seconds = dict.fromkeys(STAGES, 0.0)
    seconds = {p: [] for p in trainers}
    for _ in range(args.steps):
        for precision, trainer in trainers.items():
            before = sum(trainer.stage_seconds.values())
            trainer.train_step()
            seconds[precision].append(sum(trainer.stage_seconds.values()) - before)
    print(f"CPU {cpu_model()}, torch {torch.__version__}, {args.threads} thread(s), batch 8 of 3x192x192, "
          f"{args.steps} steps each")
    print(f"{'precision':10s} {'s/step':>7s} {'steps/s':>8s}  " + " ".join(f"{s:>9s}" for s in STAGES) + "  (ms)")
    for precision, trainer in trainers.items():
        median = statistics.median(seconds[precision])
        stages = " ".join(f"{trainer.stage_seconds[s] / args.steps * 1000:9.1f}" for s in STAGES)
        print(f"{precision:10s} {median:7.3f} {1 / median:8.2f}  {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
