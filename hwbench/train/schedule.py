"""When things happen in a run: the learning rate and gate-noise schedules, the epochs a time
budget fits (``plan_epochs``), how often the loss terms are read to the host, and the steps an
epoch's end-of-epoch terms average."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from hwbench.errors import UsageError
from hwbench.train.config import TrainConfig


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step``; the peak is the base lr x batch / 256.

    "hwbench": linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0, per step.
    "reference" (the paper's scripts: pl_bolts' LinearWarmupCosineAnnealingLR stepped once per
    epoch), constant within an epoch e: with W = warmup_epochs and E = epochs,
    e < W: warmup_start_lr + e (peak - warmup_start_lr) / max(1, W - 1) (the peak at e = W - 1);
    e >= W: peak (1 + cos(pi (e - W) / (E - W))) / 2. W = 0: the cosine from epoch 0."""
    peak = cfg.lr * cfg.batch_size / 256
    if cfg.schedule == "reference":
        return _reference_lr(peak, cfg.warmup_start_lr, step // max(1, steps_per_epoch),
                             cfg.warmup_epochs, cfg.epochs)
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def noise_at(anneal: float, step: int, total_steps: int) -> float:
    """The gates' training-noise scale at global step ``step`` of ``total_steps``: 1 (the
    paper's Gumbel-sigmoid) until the last ``anneal`` share of the steps, then linearly to 0
    over the first half of that share, and 0 for its second half: the gates train on the
    decisions the deployed network takes, and so does the rest of the network."""
    if anneal <= 0 or total_steps <= 0:
        return 1.0
    start, span = 1.0 - anneal, anneal / 2
    progress = step / total_steps
    return float(min(1.0, max(0.0, 1.0 - (progress - start) / span)))


def _reference_lr(peak: float, start: float, epoch: int, warmup: int, epochs: int) -> float:
    if epoch < warmup:
        return start + epoch * (peak - start) / max(1, warmup - 1)
    return peak * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


PAPER_LR = 0.3
# measured on mnist5k (docs/training.md, "Co-training"): with lr 0.3 the features collapse
# within ~400 steps (kNN 58 % after 4 epochs); lr 0.05 improved the dense kNN by 4.1 points in
# 13 epochs
SHORT_RUN_LR, SHORT_RUN_STEPS = 0.05, 2000


def choose_lr(lr: float | None, steps: int | None, budgeted: bool) -> tuple[float, str]:
    """The base learning rate and why: ``lr`` where given; else 0.05 for a ``--time-budget``
    run of fewer than 2000 steps in all, and the paper's 0.3 otherwise."""
    if lr is not None:
        return lr, "given (--lr)"
    if budgeted and steps is not None and steps < SHORT_RUN_STEPS:
        return SHORT_RUN_LR, (f"a --time-budget run of {steps} steps (< {SHORT_RUN_STEPS}): the "
                              f"paper's {PAPER_LR:g} collapsed the features of short runs "
                              "(docs/training.md)")
    return PAPER_LR, "the paper's" + (f": a --time-budget run of {steps} steps "
                                      f"(>= {SHORT_RUN_STEPS})" if budgeted and steps else "")


BUDGET_MARGIN = 0.10  # of the time budget, left for what the plan does not model
BUDGET_MAX_EPOCHS = 1000  # a --time-budget run without --epochs: in practice, as many as fit


def plan_epochs(budget_s: float, step_s: float, eval_s: float, steps_per_epoch: int,
                eval_every: int, max_epochs: int, *, spent_s: float = 0.0,
                save_s: float = 0.0, final_s: float = 0.0,
                margin: float = BUDGET_MARGIN, extra_share: float = 0.0) -> dict:
    """How many epochs fit a time budget (all times in seconds).

    A run of E epochs of S steps costs E * (S * step_s * (1 + extra_share) + save_s) (steps,
    ``extra_share`` of them again for the fine-tuning after training, and a checkpoint per
    epoch) + ceil(E / eval_every) * eval_s (a kNN evaluation every ``eval_every`` epochs and
    after the last) + final_s (the pattern summary), on top of ``spent_s`` (loading, the
    initial evaluation, the measuring). The plan is the most epochs, at most ``max_epochs``,
    whose total is within (1 - margin) x budget_s; where not one epoch fits, one epoch of as
    many steps as fit. UsageError where not even one step does."""
    usable = budget_s * (1 - margin) - spent_s

    def cost(epochs: int, steps: int) -> float:
        return (epochs * (steps * step_s * (1 + extra_share) + save_s)
                + math.ceil(epochs / eval_every) * eval_s + final_s)

    lo, hi = 0, max_epochs  # cost rises with epochs: the largest that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid, steps_per_epoch) <= usable else (lo, mid - 1)
    epochs, steps = lo, steps_per_epoch
    if epochs == 0:
        epochs = 1
        steps = min(steps_per_epoch,
                    math.floor((usable - save_s - eval_s - final_s)
                               / (step_s * (1 + extra_share))) if step_s > 0
                    else steps_per_epoch)
        while steps >= 1 and cost(1, steps) > usable:  # floor's rounding, the other way
            steps -= 1
        if steps < 1:
            raise UsageError(
                f"--time-budget {budget_s:g} s is too short for this run: after {spent_s:.1f} s "
                f"of loading and measuring, one step ({step_s:.3f} s), one kNN evaluation "
                f"({eval_s:.1f} s) and the rest ({save_s + final_s:.1f} s) do not fit in "
                f"{1 - margin:.0%} of it")
    limited_by = "--epochs" if epochs == max_epochs and steps == steps_per_epoch else "budget"
    return {"budget_s": budget_s, "margin": margin, "spent_s": spent_s, "step_s": step_s,
            "eval_s": eval_s, "save_s": save_s, "final_s": final_s, "max_epochs": max_epochs,
            "epochs": epochs, "steps_per_epoch": steps, "steps": epochs * steps,
            "evaluations": math.ceil(epochs / eval_every), "limited_by": limited_by,
            "finetune_share": extra_share,
            "predicted_s": spent_s + cost(epochs, steps)}


# On a GPU the loss terms are read to the host (a sync: the host waits for the queued step,
# and the GPU then idles while the host launches the next step's first kernels) once every
# READ_EVERY steps and at an epoch's end, not every step. At 25 that idle gap, at most one
# step's host-side launch time, costs <= 4 % even of a launch-bound step, and the progress bar
# still moves every few seconds at GPU step times (0.05-0.3 s). On a CPU a read is free.
READ_EVERY = 25


def read_every(device: torch.device) -> int:
    """Steps between host reads of the loss terms on ``device`` (1 on a CPU)."""
    return 1 if device.type == "cpu" else READ_EVERY


# What the network is at the end of an epoch, for the fidelity check (``pipeline.fidelity``):
# the MACs and latency terms averaged over the epoch's last quarter of steps only (``end_*``),
# not over the whole epoch, in which a short run's network is still moving (the EPYC make run of
# issue 23: 1 epoch of 9 steps; the epoch mean of the predicted p90 was 13 % above the deployed
# network's, at equal MACs).
END_SHARE = 0.25
END_TERMS = ("macs_ratio", "deployed_macs_ratio")


def end_steps(steps_per_epoch: int) -> int:
    """The epoch's last steps whose mean is its ``end_*`` terms."""
    return max(1, math.ceil(END_SHARE * steps_per_epoch))
