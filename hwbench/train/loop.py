"""The co-training loop (``train``): a seeded loop over epochs with atomic checkpoints, exact
resume, per-epoch metrics, kNN evaluation of both streams and the run's energy; the learned gate
pattern at the end. ``hwbench.train``'s other modules: ``config``, ``run`` (what a launch sets
up), ``precision``, ``schedule``, ``evaluation``.

Run directory (``results/<run-name>/`` by default): ``config.json`` (resolved), ``metrics.jsonl``
and ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (rewritten atomically every epoch),
``energy.json`` (codecarbon, one segment per launch, labelled measured/estimated) with
codecarbon's ``emissions.csv``, and at the end ``pattern.json`` and ``summary.json``; the pattern
is also saved as ``models/<run-name>.json``.

Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch, rank), and the data
order from (seed, epoch), so ``resume=True`` continues exactly as an uninterrupted run would.
Time budget (``time_budget_s``): real steps, a checkpoint and a kNN evaluation are timed on this
machine and undone, and the epochs (``plan_epochs``) and learning rate (``choose_lr``) sized to
fit; the run is then the one those epochs would give. ``summary['warnings']``: streams whose
final kNN top-1 fell below the randomly initialised network's.
Speed: channels-last activations and autocast (``amp``: bf16 on CPUs with native bf16 and on
GPUs that support it, fp16 + gradient scaling on older GPUs); the losses run in fp32.
Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (SyncBatchNorm
on GPUs; on CPUs, with gloo, BatchNorm statistics stay per process), each process takes its share
of every global batch, VICReg sees each process's own batch (as the reference; ``vicreg_gather``:
the gathered global batch), and rank 0 alone writes files.
Schedules (``schedule``): "hwbench" warms up per step from 0 over ``warmup_epochs`` then decays
per step by a cosine; "reference" is the paper's scripts' (``lr_at``). ``recipe`` names the
preset (hwbench.train.recipe) the config was resolved from, if any.
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hwbench.data import (
    eval_batches,
)
from hwbench.errors import UsageError
from hwbench.io import atomic_torch_save, atomic_write_json, atomic_write_text
from hwbench.measure.energy import TrainingEnergy, total_energy
from hwbench.nets.gate import set_gate_noise, set_gates_open
from hwbench.pattern.gate_pattern import summarise
from hwbench.ssl.losses import anneal_p
from hwbench.train.config import (
    CHECKPOINT,
    ENERGY,
    FINETUNE_SHARE,
    TrainConfig,
    resolve_net,
    run_dir,
    validate,
)
from hwbench.train.evaluation import (
    evaluate,
    feature_warnings,
    param_divergence,
    streams_of,
    write_metrics_csv,
)
from hwbench.train.run import Dist, TrainingRun, open_checkpoint, resume_state, setup
from hwbench.train.schedule import (
    END_TERMS,
    PAPER_LR,
    choose_lr,
    end_steps,
    lr_at,
    noise_at,
    plan_epochs,
    read_every,
    seed_everything,
)


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None,
          energy_factory=None, say: Callable[[str], None] | None = None) -> dict:
    """Co-train per ``cfg``; returns the summary (also written to the run directory).

    ``progress`` is called with epoch, step, steps, epochs, the loss terms, images/s and the
    ETA in seconds after every step on a CPU, and elsewhere every ``READ_EVERY`` steps and
    after an epoch's last (each call reads the terms from the device). ``energy_factory``
    replaces codecarbon (tests). ``say`` takes one-line messages for the user: the precision,
    the ``--time-budget`` plan and the learning rate chosen, and warnings (also in
    ``summary['warnings']``).
    """
    t_start = time.perf_counter()
    validate(cfg)
    # resolved here and below (gate, widths, lr, a time budget's epochs): the caller's stays
    cfg = resolve_net(cfg)
    dist = Dist.from_env()
    device = torch.device(cfg.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if dist.world > 1 and cfg.batch_size % dist.world:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {dist.world} "
                         "processes")
    out = run_dir(cfg)
    own_group = dist.world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    run = TrainingRun(cfg, dist, device, out, out / CHECKPOINT, say or (lambda line: None),
                      progress, t_start)
    try:
        return _train(run, energy_factory)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _train(run: TrainingRun, energy_factory) -> dict:
    open_checkpoint(run)
    setup(run)
    resume_state(run)
    if run.dist.main and run.cfg.eval_initial and not run.initial:
        t0 = time.perf_counter()
        run.initial = evaluate(run.model, run.cfg, run.train_split, run.test_split, run.device)
        run.eval_s = time.perf_counter() - t0
    _fit_budget(run)
    if run.dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.out / "config.json", {
            **asdict(run.cfg), "world_size": run.dist.world,
            "amp_dtype": str(run.amp).replace("torch.", "") if run.amp else "fp32",
            "amp_reason": run.amp_reason})
    run.dist.barrier()
    meter = None
    if run.dist.main and run.cfg.energy:

        meter = TrainingEnergy(run.out, run.cfg.country, energy_factory)
        meter.start()
    try:
        _epochs(run)
    finally:
        if meter is not None:
            _save_energy(run, meter.stop())
    return _finish(run)


def _fit_budget(run: TrainingRun) -> None:
    """Size a new ``--time-budget`` run to this machine: time real steps, a checkpoint and a
    kNN evaluation, choose epochs (``plan_epochs``), then the learning rate for that many
    steps. Other runs only get their learning rate."""
    cfg = run.cfg
    budgeted = cfg.time_budget_s is not None and run.ck is None
    if budgeted:
        step_s, save_s = _measure_step(run)
        plan = None
        if run.dist.main:
            eval_s = run.eval_s if run.eval_s is not None else _estimate_eval_s(run)
            try:
                plan = plan_epochs(cfg.time_budget_s, step_s, eval_s, run.steps_per_epoch,
                                   cfg.eval_every, cfg.epochs,
                                   spent_s=time.perf_counter() - run.t_start, save_s=save_s,
                                   final_s=_final_s(run, eval_s) + step_s * (
                                       cfg.finetune_steps or 0),
                                   extra_share=FINETUNE_SHARE if cfg.finetune_steps is None
                                   else 0.0)
            except UsageError as exc:  # every process must learn of it, not rank 0 alone
                plan = {"error": str(exc)}
        if run.dist.world > 1:  # every process trains rank 0's plan
            box = [plan]
            torch.distributed.broadcast_object_list(box, src=0)
            plan = box[0]
        if "error" in plan:
            raise UsageError(plan["error"])
        if plan["steps_per_epoch"] < run.steps_per_epoch:
            cfg = replace(cfg, max_steps_per_epoch=plan["steps_per_epoch"])
        run.cfg = cfg = replace(cfg, epochs=plan["epochs"], time_budget=plan)
        run.steps_per_epoch = plan["steps_per_epoch"]
        run.say(_plan_line(plan))
    if run.ck is None:  # a resumed run's was settled with its checkpoint (open_checkpoint)
        steps = cfg.epochs * run.steps_per_epoch
        lr, why = choose_lr(cfg.lr, steps, budgeted)
        ft = (round(FINETUNE_SHARE * steps) if cfg.finetune_steps is None
              else cfg.finetune_steps)
        run.cfg = replace(cfg, lr=lr, lr_reason=why, finetune_steps=ft)
        if budgeted and cfg.lr is None:
            run.say(f"learning rate {lr:g}: {why}")


def _plan_line(plan: dict) -> str:
    return (f"time budget {plan['budget_s']:g} s: on this machine a step takes "
            f"{plan['step_s']:.3f} s, a kNN evaluation {plan['eval_s']:.1f} s, a checkpoint "
            f"{plan['save_s']:.2f} s, and {plan['spent_s']:.1f} s went to loading and "
            f"measuring -> {plan['epochs']} epochs x {plan['steps_per_epoch']} steps "
            f"({plan['evaluations']} kNN evaluation{'' if plan['evaluations'] == 1 else 's'}; "
            f"limited by {plan['limited_by']}), predicted "
            f"{plan['predicted_s']:.0f} s, {plan['margin']:.0%} of the budget kept in reserve")


def _measure_step(run: TrainingRun, warmup: int = 2, timed: int = 3) -> tuple[float, float]:
    """Seconds per training step (the mean of ``timed`` real steps after ``warmup``) and per
    checkpoint (rank 0; 0 elsewhere), on this machine. The steps are undone (_undone): the
    run then trains exactly as one started with the chosen epochs."""
    n = warmup + timed
    # any rate times the same: the paper's where the budget is yet to choose one
    cfg = replace(run.cfg, lr=PAPER_LR if run.cfg.lr is None else run.cfg.lr)
    order = _epoch_order(cfg, len(run.data), 0)
    p = anneal_p(0, cfg.alpha)
    save_s = 0.0
    steps = [s % run.steps_per_epoch for s in range(n)]
    with _undone(run):
        run.model.train()
        for s, views in zip(range(n), _batches(run, order, steps, cfg)):
            if s == warmup:
                _sync(run.device)
                t0 = time.perf_counter()
            _step(run, views, 0, steps[s], p, cfg)
        _sync(run.device)
        step_s = (time.perf_counter() - t0) / timed
        if run.dist.main:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                atomic_torch_save(Path(tmp) / CHECKPOINT, _payload(run, 0))
                save_s = time.perf_counter() - t0
    return step_s, save_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _undone(run: TrainingRun):
    """Put back on exit what a training step changes: weights, BatchNorm statistics,
    gradients, optimiser and scaler state, and every RNG."""
    weights = copy.deepcopy(run.objective.state_dict())
    opt_state = copy.deepcopy(run.opt.state_dict())
    scaler_state = copy.deepcopy(run.scaler.state_dict()) if run.scaler.is_enabled() else None
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None)
    try:
        yield
    finally:
        run.objective.load_state_dict(weights)
        run.opt.load_state_dict(opt_state)
        run.opt.zero_grad(set_to_none=True)
        if scaler_state is not None:
            run.scaler.load_state_dict(scaler_state)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state(rng[3], run.device)


def _eval_images(cfg: TrainConfig, n_train: int, n_test: int) -> int:
    """Images a kNN evaluation runs through the network: both splits per stream, and the
    test split again for the gated MACs ratio."""
    return len(streams_of(cfg.method)) * (n_train + n_test) + (n_test if cfg.method != "dense"
                                                               else 0)


def _estimate_eval_s(run: TrainingRun, n: int = 512) -> float:
    """Seconds a kNN evaluation takes, from a timed one on the first ``n`` images of each
    split, scaled by the images (for runs without the initial evaluation)."""
    tr, te = run.train_split, run.test_split
    part_tr, part_te = tr.subset(range(min(n, len(tr)))), te.subset(range(min(n, len(te))))
    t0 = time.perf_counter()
    evaluate(run.model, run.cfg, part_tr, part_te, run.device)
    dt = time.perf_counter() - t0
    return dt * (_eval_images(run.cfg, len(tr), len(te))
                 / _eval_images(run.cfg, len(part_tr), len(part_te)))


def _final_s(run: TrainingRun, eval_s: float) -> float:
    """Seconds the final pattern summary takes: one gated pass over the test split, costed
    per image like the kNN evaluation."""
    if run.cfg.method == "dense":
        return 0.0
    n_train, n_test = len(run.train_split), len(run.test_split)
    return eval_s * n_test / _eval_images(run.cfg, n_train, n_test)


def _epoch_order(cfg: TrainConfig, n: int, epoch: int) -> torch.Tensor:
    """The epoch's data order: from (seed, epoch) alone, whatever ran before."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))


def _batches(run: TrainingRun, order: torch.Tensor, steps: list[int],
             cfg: TrainConfig | None = None):
    """(view 1, view 2) of this process's share of each of ``steps``' batches of ``order``,
    on the CPU: made in this process without workers (``cfg.workers`` 0), else by a DataLoader
    whose batch sampler is exactly these index lists (its workers draw their augmentations
    from seeds the DataLoader takes from torch's RNG, reseeded every epoch)."""
    cfg = cfg or run.cfg
    per_rank = cfg.batch_size // run.dist.world
    lo = run.dist.rank * per_rank
    index_lists = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size][lo:lo + per_rank].tolist()
                   for s in steps]
    if not cfg.workers:
        for idx in index_lists:
            items = [run.data[i] for i in idx]
            yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
        return
    loader = DataLoader(run.data, batch_sampler=index_lists, num_workers=cfg.workers,
                        pin_memory=run.device.type == "cuda")
    for v1, v2, _ in loader:
        yield v1, v2


def _step(run: TrainingRun, views: tuple[torch.Tensor, torch.Tensor], epoch: int, s: int, p: float,
          cfg: TrainConfig | None = None) -> dict:
    """Training step ``s`` of ``epoch`` on this process's share of the batch, ``views``
    (``_batches``): the learning rate of ``cfg``'s schedule (the run's by default), one
    optimiser step; returns the loss terms (0-dim device tensors: nothing here waits for the
    device, unless fp16's gradient scaler checks for overflow)."""
    cfg = cfg or run.cfg
    v1 = views[0].to(run.device, memory_format=run.fmt, non_blocking=True)
    v2 = views[1].to(run.device, memory_format=run.fmt, non_blocking=True)
    step = epoch * run.steps_per_epoch + s
    for g in run.opt.param_groups:
        g["lr"] = g["lr_mult"] * lr_at(cfg, step, run.steps_per_epoch)
    set_gate_noise(run.model, noise_at(cfg.gate_noise_anneal, step,
                                       cfg.epochs * run.steps_per_epoch))
    set_warmup(run, cfg.gate_warmup and step < cfg.warmup_epochs * run.steps_per_epoch)
    if run.cfg.compile:  # a tensor: a compiled forward would recompile for each new float
        p = torch.full((), p, dtype=torch.float64, device=run.device)
    with torch.autocast(run.device.type, dtype=run.amp or torch.float32,
                        enabled=run.amp is not None):
        loss, terms = run.objective(v1, v2, p)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    return terms


def set_warmup(run: TrainingRun, on: bool) -> None:
    """Open (``on``) or close the gates for this step: the gate warm-up (``gate_warmup``)."""
    set_gates_open(run.model, on)
    objective = getattr(run.objective, "module", run.objective)  # DDP wraps it
    objective.step.gates_open = on


def _epochs(run: TrainingRun) -> None:
    """The remaining epochs, each reseeded from (seed, epoch, rank), evaluated on its cadence,
    logged and checkpointed. The terms are summed on the device (float64, in step order: the
    same sums as on the host) and read at ``read_every``'s cadence for the progress callback
    and once per epoch for the metrics."""
    cfg, spe = run.cfg, run.steps_per_epoch
    clock = {"done": 0, "total": (cfg.epochs - run.start_epoch) * spe,
             "t_run": time.perf_counter()}
    every = read_every(run.device)
    run.model.train()
    for epoch in range(run.start_epoch, cfg.epochs):
        p = anneal_p(epoch, cfg.alpha)
        seed_everything(cfg.seed * 100_003 + epoch * 1_009 + run.dist.rank)
        order = _epoch_order(cfg, len(run.data), epoch)
        sums, tail, names = None, None, []
        t0 = time.perf_counter()
        for s, views in zip(range(spe), _batches(run, order, list(range(spe)))):
            terms = _step(run, views, epoch, s, p)
            names, values = list(terms), torch.stack(list(terms.values()))
            sums = values if sums is None else sums + values
            if s >= spe - end_steps(spe):
                tail = values if tail is None else tail + values
            clock["done"] += 1
            if run.progress and run.dist.main and ((s + 1) % every == 0 or s + 1 == spe):
                elapsed = time.perf_counter() - clock["t_run"]
                run.progress({"epoch": epoch, "epochs": cfg.epochs, "step": s + 1, "steps": spe,
                              **dict(zip(names, values.tolist())),
                              "images_per_s": (s + 1) * cfg.batch_size
                              / (time.perf_counter() - t0),
                              "eta_s": elapsed / clock["done"] * (clock["total"] - clock["done"])})
        means = dict(zip(names, (v / spe for v in sums.tolist())))
        means |= {f"end_{k}": v / end_steps(spe) for k, v in zip(names, tail.tolist())
                  if k in END_TERMS or k.startswith("latency_ms_")}
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "p": p, "lr": run.opt.param_groups[0]["lr"], "seconds": dt,
               "images_per_s": spe * cfg.batch_size / dt, **means}
        if run.dist.main:
            _end_epoch(run, epoch, row)
        run.dist.barrier()


def _payload(run: TrainingRun, epoch: int) -> dict:
    return {"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
            "scaler": run.scaler.state_dict(), "epoch": epoch, "history": run.history,
            "initial": run.initial, "config": asdict(run.cfg)}


def _end_epoch(run: TrainingRun, epoch: int, row: dict) -> None:
    """Rank 0: the epoch's kNN evaluation (on its cadence), metrics and checkpoint."""
    cfg = run.cfg
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
        row.update(evaluate(run.model, cfg, run.train_split, run.test_split, run.device))
    run.history.append(row)
    # rewritten whole from the history, like the checkpoint: an interrupted write never leaves
    # a duplicate or half line for the resumed run to append to
    atomic_write_text(run.out / "metrics.jsonl",
                      "".join(json.dumps(r) + "\n" for r in run.history))
    write_metrics_csv(run.out / "metrics.csv", run.history)
    atomic_torch_save(run.ckpt_path, _payload(run, epoch))


def _save_energy(run: TrainingRun, segment: dict) -> None:
    run.segments.append(segment)
    atomic_write_json(run.out / ENERGY, {
        "schema": "hwbench/training-energy@1", "segments": run.segments,
        "total": total_energy(run.segments),
        "note": "codecarbon: 'measured' components come from hardware counters (RAPL, "
                "NVML); 'estimated' ones from its power model"})


def _finish(run: TrainingRun) -> dict:
    """After the last epoch: warnings, summary.json and (gated runs) the learned pattern."""
    dist, cfg, out = run.dist, run.cfg, run.out
    divergence = param_divergence(run.model) if dist.world > 1 else 0.0
    if not dist.main:
        return {}
    name = out.name
    summary = {"run": name, "dir": str(out), "config": asdict(cfg), "initial": run.initial,
               "final": run.history[-1], "world_size": dist.world,
               "warnings": feature_warnings(run.initial, run.history[-1])}
    for line in summary["warnings"]:
        run.say(line)
    if dist.world > 1:
        summary["ddp_max_param_divergence"] = divergence
    if (out / ENERGY).exists():
        summary["energy"] = json.loads((out / ENERGY).read_text())["total"]
    if cfg.method != "dense":
        batches = eval_batches(run.test_split, cfg.dataset, 256, cfg.workers or 0)
        pattern = summarise(run.model.backbone, batches, run.device, dataset=cfg.dataset,
                            t_d=cfg.t_d, run=name)
        pattern.t_d = cfg.t_d
        pattern.save(out / "pattern.json")
        pattern.save(Path(cfg.models_dir) / f"{name}.json")
        summary["pattern"] = str(Path(cfg.models_dir) / f"{name}.json")
    if cfg.time_budget:  # this launch's wall time against the plan
        summary["time_budget"] = {**cfg.time_budget,
                                  "elapsed_s": time.perf_counter() - run.t_start}
    atomic_write_json(out / "summary.json", summary)
    return summary
