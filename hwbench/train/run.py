"""A run's state and what a launch sets up before its first step: the process group
(``Dist``), the run directory and checkpoint (new or resumed), the data, the model, optimiser and
autocast, and the state a resume restores."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from hwbench.data import (
    SSL_SPLIT,
    Split,
    TwoViews,
    auto_workers,
    info,
    load_split,
    view_transforms,
)
from hwbench.errors import UsageError
from hwbench.nets import net_from_config
from hwbench.nets.gate import freeze_gate_bias
from hwbench.ssl.model import (
    LARS,
    CoTrainStep,
    Objective,
    SSLModel,
    lars_param_groups,
    upgrade_lars_state,
)
from hwbench.train.config import (
    ENERGY,
    RESUME_DEFAULTS,
    RESUME_HINTS,
    RESUME_KEYS,
    TrainConfig,
    latency_budget,
)
from hwbench.train.precision import COMPILE_BACKEND, amp_choice
from hwbench.train.schedule import (
    choose_lr,
    seed_everything,
)


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


@dataclass
class TrainingRun:
    """One launch of a training run: what its stages (_train) share."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    ckpt_path: Path
    say: Callable[[str], None]
    progress: Callable[[dict], None] | None
    t_start: float  # time.perf_counter() when train() began (the time budget's clock)
    ck: dict | None = None  # the checkpoint a resumed run continues
    train_split: Split | None = None  # labelled: the kNN memory bank
    test_split: Split | None = None
    amp: torch.dtype | None = None
    amp_reason: str = ""
    fmt: torch.memory_format = torch.contiguous_format
    model: SSLModel | None = None
    objective: torch.nn.Module | None = None
    opt: LARS | None = None
    scaler: torch.amp.GradScaler | None = None
    data: TwoViews | None = None
    steps_per_epoch: int = 0
    start_epoch: int = 0
    history: list = field(default_factory=list)
    initial: dict = field(default_factory=dict)
    segments: list = field(default_factory=list)  # earlier launches' energy
    eval_s: float | None = None  # seconds the initial kNN evaluation took


def open_checkpoint(run: TrainingRun) -> None:
    """Refuse a run that would overwrite another or resume nothing; load a resumed run's
    checkpoint and check that this launch continues it (a ``--time-budget`` run keeps the
    epochs, steps and learning rate its first launch chose)."""
    cfg, out, path = run.cfg, run.out, run.ckpt_path
    if cfg.resume and not path.exists():
        raise UsageError(f"--resume: no checkpoint at {path}")
    if not cfg.resume and path.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or --out "
                         "elsewhere")
    if not cfg.resume:
        return
    run.ck = torch.load(path, map_location="cpu", weights_only=False)
    old = run.ck["config"]
    if old.get("time_budget") and cfg.time_budget_s == old.get("time_budget_s"):
        run.cfg = cfg = replace(cfg, epochs=old["epochs"], time_budget=old["time_budget"],
                                max_steps_per_epoch=old["max_steps_per_epoch"],
                                **({"lr": old["lr"], "lr_reason": old.get("lr_reason", "")}
                                   if cfg.lr is None else {}))
        run.say(f"resuming with {cfg.epochs} epochs, as --time-budget "
                f"{cfg.time_budget_s:g} s chose at the start of the run")
    elif old.get("time_budget_s") is not None:
        raise UsageError(f"--resume: {path} was sized by --time-budget "
                         f"{old['time_budget_s']:g} s: resume it with that --time-budget")
    if cfg.lr is None or not cfg.lr_reason:  # not adopted: as a new run without a budget
        lr, why = choose_lr(cfg.lr, None, False)
        run.cfg = cfg = replace(cfg, lr=lr, lr_reason=why)
    for key in RESUME_KEYS:
        if old.get(key, RESUME_DEFAULTS.get(key)) != getattr(cfg, key):
            hint = f" (see {RESUME_HINTS[key]})" if key in RESUME_HINTS else ""
            raise UsageError(f"--resume: {path} was run with "
                             f"{key}={old.get(key, RESUME_DEFAULTS.get(key))!r}, "
                             f"not {getattr(cfg, key)!r}{hint}")


def load_data(run: TrainingRun) -> None:
    """The splits (SSL training: ``data.SSL_SPLIT``; kNN: the labelled train and test splits)
    and the DataLoader workers (``run.cfg.workers``, resolved: ``data.auto_workers``)."""
    cfg = run.cfg
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, n_synthetic=cfg.n_synthetic,
              seed=cfg.seed)
    run.train_split = load_split(cfg.dataset, "train", **kw)
    run.test_split = load_split(cfg.dataset, "test", **kw)
    ssl = load_split(cfg.dataset, "ssl", **kw) if cfg.dataset in SSL_SPLIT else run.train_split
    if cfg.workers is None:
        run.cfg = replace(cfg, workers=auto_workers(ssl.lazy, run.dist.world))
    run.data = TwoViews(ssl, *view_transforms(cfg.dataset, cfg.views))


def setup(run: TrainingRun) -> None:
    """Data, model (a resumed run's weights), objective (DDP-wrapped under torchrun),
    optimiser, gradient scaler, precision and steps per epoch."""
    load_data(run)
    cfg, device = run.cfg, run.device
    meta = info(cfg.dataset)
    run.amp, run.amp_reason = amp_choice(cfg.amp, device)
    run.say(f"precision: {str(run.amp).replace('torch.', '') if run.amp else 'fp32'} "
            f"({run.amp_reason})")
    run.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    seed_everything(cfg.seed)
    model = SSLModel(net_from_config(asdict(cfg), meta.stem), tuple(cfg.proj_dims))
    for _, block in model.backbone.blocks():
        block.gate.surrogate = cfg.surrogate
    if run.ck is not None:
        model.load_state_dict(run.ck["model"])
    if cfg.gate_bias == "none":
        freeze_gate_bias(model)
    model = model.to(device, memory_format=run.fmt)
    objective = Objective(model, CoTrainStep(cfg.method, cfg.t_d, cfg.lam, cfg.gamma,
                                             latency=latency_budget(cfg),
                                             sparsity_on=cfg.sparsity_on,
                                             vicreg_gather=cfg.vicreg_gather).to(device))
    if run.dist.world > 1:
        if device.type == "cuda":
            objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
            model = objective.model
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            # co uses both streams' BatchNorms; dense and gated leave the other stream's unused
            find_unused_parameters=cfg.method != "co" or cfg.gate_warmup)
    if cfg.compile:
        # in place, after DDP wrapping: state_dict keys and the wrapper stay as they are
        objective.compile(backend=COMPILE_BACKEND)
    run.model, run.objective = model, objective
    run.opt = LARS(lars_param_groups(model, cfg.gate_lr_mult), lr=0.0,
                   weight_decay=cfg.weight_decay, eta=cfg.eta)
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.amp == torch.float16)
    run.steps_per_epoch = len(run.data) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        run.steps_per_epoch = min(run.steps_per_epoch, cfg.max_steps_per_epoch)
    if run.steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg.batch_size} exceeds the {len(run.data)} training "
                         "images")


def resume_state(run: TrainingRun) -> None:
    """A resumed run's optimiser, scaler, epoch, history, initial kNN and energy so far."""
    ck = run.ck
    if ck is None:
        return
    try:  # a checkpoint from before issue 16 has three groups: regrouped as today's four
        run.opt.load_state_dict(upgrade_lars_state(ck["optimizer"], run.model))
    except ValueError as exc:  # e.g. a checkpoint from an older hwbench's parameter groups
        raise UsageError(f"--resume: {run.ckpt_path}'s optimiser state does not fit this "
                         f"version's ({exc})") from None
    if ck.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ck["scaler"])
    run.start_epoch, run.history = ck["epoch"] + 1, ck["history"]
    run.initial = ck.get("initial", {})
    if (run.out / ENERGY).exists():  # the earlier launches' energy: a resumed run adds to it
        run.segments = json.loads((run.out / ENERGY).read_text())["segments"]
