"""The training loop, in memory: the Trainer makes one step at a time (sample a batch, augment it, forward,
marginal Dice + CE, AdamW, cosine lr) and keeps in state_dict() every piece of state a resumed run needs, so
a run stopped after any step and resumed does exactly what the uninterrupted run does (on the CPU, with the
same thread count); train() runs one to the end in one go. tools/training/run.py drives a Trainer on disk.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from npunet.labels import mirror_labels
from tools.torch_model import build_model
from tools.training.augment import AUGMENT_DEFAULTS, augment_batch, sample_augment_params
from tools.training.loss import marginal_dice_ce_loss
from tools.training.sampling import SAMPLERS, OrganSampler, UniformSampler

PRECISIONS = ("fp32", "bf16")
STAGES = ("sample", "augment", "forward", "loss", "backward", "optimiser")


class _StageClock:
    """Adds the seconds since the last lap to totals[stage] (on a GPU these are launch times unless the caller
    synchronises: the CPU is what tools/train_speed.py measures)."""

    def __init__(self, totals: dict, start: float):
        self.totals, self.last = totals, start

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] += now - self.last
        self.last = now


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global random streams (model init draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """A fresh build_model(spec) trained on `dataset` (from build_dataset), one step at a time, with every
    piece of state a resumed run needs in state_dict(): model, AdamW, the cosine schedule, the sampler's and
    the augmentation's random streams, torch's global stream, the step count and the running sums. A run
    stopped after any step and resumed from state_dict() does, on the CPU with the same thread count, exactly
    what the uninterrupted run does (tests/test_train.py checks the final weights are equal).

    The recipe: AdamW (lr, weight_decay), lr cosine-annealed per step from lr to 0 over
    epochs * steps_per_epoch steps; steps_per_epoch defaults to ceil(N / batch_size) (an epoch is then one
    pass over the N slices; it is only the logging unit when the sampler is "organs"); each batch drawn by
    the sampler, augmented (augment_batch with augment_cfg) and scored by marginal_dice_ce_loss.
    """

    def __init__(self, dataset: dict, spec: dict, *, epochs: int = 100, batch_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 1e-4, steps_per_epoch: int | None = None, augment: bool = True,
                 augment_cfg: dict = AUGMENT_DEFAULTS, sampling: str = "uniform", p_organ: float = 0.5,
                 organ_slice_power: float = 0.0, pairs=(), p_pair: float = 0.0, class_weight=None,
                 device="cpu", seed: int = 0, precision: str = "fp32"):
        if sampling not in SAMPLERS:
            raise ValueError(f"sampling {sampling!r} is not one of {SAMPLERS}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        seed_everything(seed)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True    # fixed shapes: let cuDNN pick the fastest kernels
        self.model = build_model(spec).to(self.device)
        self.images = dataset["images"].to(self.device)
        self.labels = dataset["labels"].to(self.device)
        self.context_labels = (dataset["context_labels"].to(self.device)
                               if augment and augment_cfg.get("organ_shift", 0.0) > 0 else None)
        self.mirror = torch.tensor(mirror_labels(dataset["label_names"]), device=self.device)
        self.num_classes = int(spec["num_classes"])
        self.class_weight = (None if class_weight is None else
                             torch.as_tensor(class_weight, dtype=torch.float32, device=self.device))
        if self.class_weight is not None and self.class_weight.shape != (self.num_classes,):
            raise ValueError(f"class_weight has {tuple(self.class_weight.shape)} weights for "
                             f"{self.num_classes} classes")
        self.precision = precision
        self.known = dataset["known"].to(self.device)
        self.mm_per_pixel = dataset.get("mm_per_pixel")
        n = self.images.shape[0]
        if n == 0:
            raise ValueError("the dataset has no slices")
        self.augment, self.augment_cfg = augment, augment_cfg
        self.steps_per_epoch = steps_per_epoch or math.ceil(n / batch_size)
        self.epochs = epochs
        self.total_steps = epochs * self.steps_per_epoch
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, self.total_steps))
        self.sampler = (UniformSampler(n, batch_size, seed) if sampling == "uniform"
                        else OrganSampler(dataset["areas"], batch_size, seed, p_organ, organ_slice_power,
                                             pairs, p_pair))
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.history: list[dict] = []
        self.sums = torch.zeros(3, dtype=torch.float64)      # loss, dice, ce over the current epoch's steps
        self.epoch_seconds = 0.0
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)      # summed over steps; tools/train_speed.py reads it

    def train_step(self) -> float:
        """One batch: sample, augment, forward, loss, backward, AdamW step, lr step. Returns the loss."""
        t0 = time.perf_counter()
        clock = _StageClock(self.stage_seconds, t0)
        self.model.train()
        idx = self.sampler.next_batch().to(self.device)
        x, y, k = self.images[idx], self.labels[idx].long(), self.known[idx]
        clock.lap("sample")
        if self.augment:
            mm = self.mm_per_pixel[idx.cpu()] if self.mm_per_pixel is not None else None
            params = sample_augment_params(len(idx), self.aug_gen, self.device, self.augment_cfg, mm,
                                           self.num_classes)
            yc = self.context_labels[idx] if self.context_labels is not None else None
            x, y = augment_batch(x, y, params, cfg=self.augment_cfg, y_context=yc, mirror=self.mirror)
            if "flip" in params:                # a mirrored slice annotates the mirrored organs
                k = torch.where(params["flip"][:, None], k[:, self.mirror], k)
        clock.lap("augment")
        if self.precision == "bf16":            # autocast: convs in bfloat16, weights and loss in float32
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.model(x)
        else:
            logits = self.model(x)
        clock.lap("forward")
        loss, dice, ce = marginal_dice_ce_loss(logits, y, k, class_weight=self.class_weight)
        clock.lap("loss")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.lap("backward")
        self.opt.step()
        self.sched.step()
        clock.lap("optimiser")
        self.step += 1
        self.sums += torch.stack([loss.detach(), dice.detach(), ce.detach()]).double().cpu()
        self.epoch_seconds += time.perf_counter() - t0
        if self.step % self.steps_per_epoch == 0:
            means = (self.sums / self.steps_per_epoch).tolist()
            self.history.append({"epoch": self.step // self.steps_per_epoch, "steps": self.steps_per_epoch,
                                 "loss": round(means[0], 6), "dice": round(means[1], 6), "ce": round(means[2], 6),
                                 "lr": float(self.sched.get_last_lr()[0]), "seconds": round(self.epoch_seconds, 3)})
            self.sums.zero_()
            self.epoch_seconds = 0.0
        return loss.item()

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "sampler": self.sampler.state_dict(),
                "augment_generator": self.aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": list(self.history), "sums": self.sums.clone(), "epoch_seconds": self.epoch_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.aug_gen.set_state(state["augment_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.sums = state["sums"].clone()
        self.epoch_seconds = float(state["epoch_seconds"])


def train(dataset: dict, spec: dict, *, on_epoch=None, **recipe):
    """Train to the end in one go (see Trainer for the recipe arguments). Returns (model, history);
    on_epoch(record, model) is called after every epoch with the record {"epoch", "steps", "loss", "dice",
    "ce", "lr", "seconds"} (means over the epoch's steps; lr after its last step)."""
    trainer = Trainer(dataset, spec, **recipe)
    while not trainer.done:
        trainer.train_step()
        if on_epoch is not None and trainer.step % trainer.steps_per_epoch == 0:
            on_epoch(trainer.history[-1], trainer.model)
    return trainer.model, trainer.history
