"""A training run on disk: the Trainer driven to its end (or to a stop), one line per epoch appended to
log.jsonl, and checkpoint.pt written at every epoch's end, at least every few minutes, at the steps to keep
(copied to checkpoint_stepN.pt) and at exit, with status.json beside it (tools/training/status.py).
SIGINT and SIGTERM let the current step finish, checkpoint, and stop; `python -m tools.train --resume DIR`
goes on from there.

The checkpoint is {"spec", "state_dict", "config", "cases", "labels", "preprocessing", "train_state",
"complete"} (tools/train.py fills it): only plain Python types and tensors, so
torch.load(weights_only=True) reads it. It is written to a temporary file and renamed over the old one, so
a checkpoint.pt is always whole.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from tools.training.loop import Trainer
from tools.training.status import CHECKPOINT_NAME, write_status


def run_training(trainer: Trainer, out_dir: Path, checkpoint_contents, *, checkpoint_minutes: float = 5.0,
                 keep_steps=frozenset(), run_steps: int | None = None) -> int | None:
    """Train on until the trainer is done, a signal asks to stop, or `run_steps` steps were made in this call;
    checkpoint_contents() gives the dict to save each time. Returns the number of the stopping signal, or
    None."""
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / "log.jsonl"

    def checkpoint():
        save_checkpoint(ckpt_path, checkpoint_contents())
        write_status(out_dir, trainer.step, trainer.total_steps, trainer.done)

    progress = Progress(trainer.total_steps, trainer.step, trainer.steps_per_epoch)
    last_saved, steps_this_run = time.perf_counter(), 0
    with StopRequest() as stop:
        while not trainer.done and stop.signum is None:
            loss = trainer.train_step()
            steps_this_run += 1
            progress.update(trainer.step, loss)
            end_of_epoch = trainer.step % trainer.steps_per_epoch == 0
            if end_of_epoch:
                line = json.dumps(trainer.history[-1])
                with log_path.open("a") as f:
                    f.write(line + "\n")
            if end_of_epoch or time.perf_counter() - last_saved > 60 * checkpoint_minutes \
                    or trainer.step in keep_steps:
                checkpoint()
                last_saved = time.perf_counter()
            if trainer.step in keep_steps:
                shutil.copyfile(ckpt_path, out_dir / f"checkpoint_step{trainer.step}.pt")
            if run_steps is not None and steps_this_run >= run_steps:
                break
        progress.close()
        checkpoint()
    return stop.signum


def save_checkpoint(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class StopRequest:
    """SIGINT / SIGTERM while training: remember the signal and let the current step finish, so the run
    can checkpoint and exit cleanly (128 + signal number, the shell's convention)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Progress:
    """A one-line progress bar on stderr (step, epoch, loss, speed, ETA), redrawn in place on a terminal and
    printed as a plain line every `every` seconds otherwise (a log file stays readable)."""

    def __init__(self, total: int, start: int, steps_per_epoch: int, stream=None, every: float = 60.0):
        self.total, self.start, self.steps_per_epoch = total, start, steps_per_epoch
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if not self.tty else 0.5
        self.t0 = self.last = time.perf_counter()
        self.recent: list[float] = []

    def update(self, step: int, loss: float) -> None:
        self.recent = (self.recent + [loss])[-50:]
        now = time.perf_counter()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        rate = (now - self.t0) / max(1, step - self.start)                  # seconds per step in this run
        eta = rate * (self.total - step)
        width = 24
        filled = int(width * step / self.total)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
                f"epoch {math.ceil(step / self.steps_per_epoch)}/{math.ceil(self.total / self.steps_per_epoch)} "
                f"loss {sum(self.recent) / len(self.recent):.4f} {rate:.2f} s/step "
                f"ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)
