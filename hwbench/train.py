"""Co-training runs: a seeded loop over epochs with atomic checkpoints, exact resume, per-epoch
metrics, kNN evaluation of both streams and the run's energy; the learned gate pattern at the end.

Run directory (``results/<run-name>/`` by default): ``config.json`` (resolved), ``metrics.jsonl``
and ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (rewritten atomically every epoch),
``energy.json`` (codecarbon, one segment per launch, labelled measured/estimated) with
codecarbon's ``emissions.csv``, and at the end ``pattern.json`` and ``summary.json``; the pattern
is also saved as ``models/<run-name>.json``.

Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch, rank), and the data
order from (seed, epoch), so ``resume=True`` continues exactly as an uninterrupted run would.
Speed: channels-last activations and autocast (``amp``: bf16 on CPUs with native bf16 and on
GPUs that support it, fp16 + gradient scaling on older GPUs); the losses run in fp32.
Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (SyncBatchNorm
on GPUs; on CPUs, with gloo, BatchNorm statistics stay per process), each process takes its share
of every global batch, VICReg sees the gathered global batch, and rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hwbench.data import TwoViews, eval_dataset, info, load_tensors, ssl_transform
from hwbench.errors import UsageError
from hwbench.io import atomic_write_json, atomic_write_text
from hwbench.nets import create_net
from hwbench.patterns import summarise
from hwbench.ssl.losses import anneal_p
from hwbench.ssl.model import (
    LARS,
    METHODS,
    CoTrainStep,
    Objective,
    SSLModel,
    knn_top1,
    lars_param_groups,
)

CHECKPOINT = "checkpoint.pt"
ENERGY = "energy.json"
# what a resumed run must share with the run it continues (else the curve would not continue)
RESUME_KEYS = ("arch", "dataset", "method", "t_d", "epochs", "batch_size", "seed", "lr",
               "warmup_epochs", "alpha", "lam", "gamma", "gate_lr_mult", "proj_dims", "amp",
               "budget", "latency_targets", "budget_shape", "budget_combine", "sparsity_on",
               "surrogate")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    arch: str = "resnet18"
    method: str = "co"
    t_d: float = 0.5
    epochs: int = 10
    batch_size: int = 128  # global: split over the processes under DDP
    lr: float = 0.3  # base learning rate, scaled by batch_size / 256
    weight_decay: float = 1e-4
    eta: float = 0.02
    warmup_epochs: int = 1
    gate_lr_mult: float = 1.0  # the gates' learning rate / the backbone's (reference: 1)
    lam: float = 5.0
    gamma: float = 1.0
    alpha: float = 0.02  # the bound's slack decays as p = exp(-alpha * epoch)
    proj_dims: tuple[int, ...] = (2048, 2048, 2048)
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"
    channels_last: bool = True
    out: str | None = None
    run_name: str | None = None
    models_dir: str = "models"
    resume: bool = False
    eval_every: int = 5
    eval_initial: bool = True  # kNN of the randomly initialised network, the floor to beat
    knn_k: int = 20
    knn_temperature: float = 0.07
    energy: bool = True
    country: str = "USA"  # codecarbon's carbon intensity (ISO 3166 alpha-3)
    max_steps_per_epoch: int | None = None  # for smoke tests
    n_synthetic: int = 512
    decision: dict = field(default_factory=dict)  # how t_d was chosen (profile, prediction)
    # --budget latency (hwbench.budget): the sparsity term targets each device's predicted
    # latency; latency_targets holds DeviceTarget dicts (device, profile, target_ms, percentile)
    budget: str = "flops"
    sparsity_on: str = "sampled"  # or "deployed": whose MACs the sparsity term pulls to t_d
    # the gradient of the noise-free decisions the deployed-gate terms read (nets.gate.SURROGATES)
    surrogate: str = "sigmoid"
    latency_targets: tuple = ()
    budget_shape: str = "two-sided"
    budget_combine: str = "max"


# --budget latency's own defaults, measured (README, "Training against device latency"): with
# the paper's lambda 5 a latency term moves too slowly for short runs (4 epochs: 7.7 -> 6.2 ms
# predicted for a 2.97 ms target); lambda 50 reaches 4.35 ms in 3 epochs. The linear surrogate
# was measured too and is not the default (README).
LATENCY_DEFAULTS = {"lam": 50.0, "surrogate": "sigmoid"}
PAPER_DEFAULTS = {"lam": 5.0, "surrogate": "sigmoid"}


def budget_defaults(budget: str, lam: float | None = None, surrogate: str | None = None) -> dict:
    """lam and surrogate for ``budget``, where the user gave none."""
    base = LATENCY_DEFAULTS if budget == "latency" else PAPER_DEFAULTS
    return {"lam": base["lam"] if lam is None else lam,
            "surrogate": base["surrogate"] if surrogate is None else surrogate}


def latency_budget(cfg: TrainConfig):
    """The ``--budget latency`` term for ``cfg`` (None for the paper's MACs budget)."""
    if cfg.budget != "latency":
        return None
    from hwbench.budget import LatencyBudget, LatencyEstimate
    from hwbench.profiles import load_profile

    if not cfg.latency_targets:
        raise UsageError("--budget latency needs --target-latency (the latency to train for)")
    meta = info(cfg.dataset)
    estimates = []
    for t in cfg.latency_targets:
        est = LatencyEstimate(load_profile(t["profile"]), t.get("percentile", "p90"))
        if (est.arch, est.stem, est.input_size) != (cfg.arch, meta.stem, meta.input_size):
            raise UsageError(f"{t['profile']} profiles {est.arch}/{est.stem}/{est.input_size}px; "
                             f"this run trains {cfg.arch}/{meta.stem}/{meta.input_size}px")
        estimates.append(est)
    return LatencyBudget(estimates, [t["target_ms"] for t in cfg.latency_targets],
                         cfg.budget_shape, cfg.budget_combine)


def validate(cfg: TrainConfig) -> None:
    info(cfg.dataset)
    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    if not 0 < cfg.t_d <= 1:
        raise UsageError(f"--t-d must be in (0, 1], got {cfg.t_d}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise UsageError("--epochs must be >= 1 and --batch-size >= 2")
    if cfg.sparsity_on not in ("sampled", "deployed"):
        raise UsageError(f"--sparsity-on must be sampled or deployed, got {cfg.sparsity_on!r}")
    from hwbench.nets.gate import SURROGATES

    if cfg.surrogate not in SURROGATES:
        raise UsageError(f"--surrogate must be one of {', '.join(SURROGATES)}, got "
                         f"{cfg.surrogate!r}")
    if cfg.budget not in ("flops", "latency"):
        raise UsageError(f"--budget must be flops or latency, got {cfg.budget!r}")
    if cfg.budget == "latency" and cfg.method == "dense":
        raise UsageError("--budget latency trains gates: use --method co or gated")
    if cfg.amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    amp_dtype(cfg.amp, torch.device(cfg.device))  # fp16 without CUDA fails here, before any work


def run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.dataset}_{cfg.arch}_{cfg.method}_td{cfg.t_d:g}_s{cfg.seed}"
    return Path(cfg.out) if cfg.out else Path("results") / name


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32). ``auto`` takes bf16 where the
    hardware runs it natively (CPUs with AVX512-BF16/AMX, GPUs from Ampere), fp16 on older GPUs,
    and fp32 on other CPUs (emulated bf16 is slower than fp32)."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device (use bf16 on CPUs)")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_bf16_native() else None


def _cpu_bf16_native() -> bool:
    """oneDNN's own test for native bf16 (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to 0, per step; base lr scaled by batch / 256."""
    peak = cfg.lr * cfg.batch_size / 256
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


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


@torch.no_grad()
def features(backbone, images: torch.Tensor, labels: torch.Tensor, dataset: str,
             stream: str, device, batch: int = 256, amp: torch.dtype | None = None,
             channels_last: bool = False) -> torch.Tensor:
    """(N, num_features) fp32 features of one stream (eval mode: hard gates, running BN)."""
    was = backbone.training
    backbone.eval()
    ds = eval_dataset(images, labels, dataset)
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, _ in DataLoader(ds, batch_size=batch):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out.append(backbone(x.to(device, memory_format=fmt), stream=stream).float().cpu())
    backbone.train(was)
    return torch.cat(out)


@torch.no_grad()
def eval_macs_ratio(backbone, images, labels, dataset: str, device, batch: int = 256) -> float:
    """Mean gated/dense MACs ratio over a data set, hard gates (what the deployed net runs).
    A pass of its own, in fp32 like the deployed engine: under autocast a logit near 0 could
    fall on the other side of the threshold, and this number is judged to +-0.05."""
    was = backbone.training
    backbone.eval()
    total, n = 0.0, 0
    for x, _ in DataLoader(eval_dataset(images, labels, dataset), batch_size=batch):
        r = backbone.forward_gated(x.to(device)).macs_ratio
        total, n = total + float(r.sum()), n + len(r)
    backbone.train(was)
    return total / n


def top1_se(top1_pct: float, n: int) -> float:
    """Binomial standard error (percentage points) of a top-1 measured on ``n`` test images."""
    p = top1_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def streams_of(method: str) -> tuple[str, ...]:
    return {"dense": ("dense",), "gated": ("gated",)}.get(method, ("dense", "gated"))


def evaluate(model: SSLModel, cfg: TrainConfig, train_xy, test_xy, device) -> dict:
    """kNN top-1 (%) of each trained stream, and the gated MACs ratio on the test split.

    In fp32, whatever the training's autocast: that is the precision the deployed network is
    profiled and verified in, and under bf16 gate logits near 0 fall on the other side of the
    threshold often enough to move the gated top-1 by more than a point (measured: 88.6 vs
    90.2 % on one mnist5k run)."""
    res = {}
    kw = dict(device=device, amp=None, channels_last=cfg.channels_last)
    for stream in streams_of(cfg.method):
        ftr = features(model.backbone, *train_xy, cfg.dataset, stream, **kw)
        fte = features(model.backbone, *test_xy, cfg.dataset, stream, **kw)
        res[f"knn_top1_{stream}"] = knn_top1(ftr, train_xy[1], fte, test_xy[1], cfg.knn_k,
                                             cfg.knn_temperature)
    res["knn_test_n"] = len(test_xy[1])
    if cfg.method != "dense":
        res["eval_macs_ratio"] = eval_macs_ratio(model.backbone, *test_xy, cfg.dataset, device)
    return res


def _param_divergence(model: torch.nn.Module) -> float:
    """Largest |difference| between any process's parameters and rank 0's (0 when DDP keeps
    the replicas in sync, as it must)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, 0)
    div = (flat - ref).abs().max()
    torch.distributed.all_reduce(div, op=torch.distributed.ReduceOp.MAX)
    return float(div)


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    cols = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None,
          energy_factory=None) -> dict:
    """Co-train per ``cfg``; returns the summary (also written to the run directory).

    ``progress`` is called after every step with epoch, step, steps, epochs, the loss terms,
    images/s and the ETA in seconds. ``energy_factory`` replaces codecarbon (tests).
    """
    validate(cfg)
    dist = Dist.from_env()
    device = torch.device(cfg.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if dist.world > 1 and cfg.batch_size % dist.world:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {dist.world} "
                         "processes")
    out = run_dir(cfg)
    ckpt_path = out / CHECKPOINT
    own_group = dist.world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return _train(cfg, dist, device, out, ckpt_path, progress, energy_factory)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: Dist, device: torch.device, out: Path, ckpt_path: Path,
           progress, energy_factory) -> dict:
    if cfg.resume and not ckpt_path.exists():
        raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
    if not cfg.resume and ckpt_path.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or --out "
                         "elsewhere")
    ck = None
    if cfg.resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        old = ck["config"]
        for key in RESUME_KEYS:
            if old.get(key) != getattr(cfg, key):
                raise UsageError(f"--resume: {ckpt_path} was run with {key}={old.get(key)!r}, "
                                 f"not {getattr(cfg, key)!r}")
    meta = info(cfg.dataset)
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, n_synthetic=cfg.n_synthetic,
              seed=cfg.seed)
    train_xy = load_tensors(cfg.dataset, True, **kw)
    test_xy = load_tensors(cfg.dataset, False, **kw)
    amp = amp_dtype(cfg.amp, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    _seed_everything(cfg.seed)
    model = SSLModel(create_net(cfg.arch, stem=meta.stem), tuple(cfg.proj_dims))
    for _, block in model.backbone.blocks():
        block.gate.surrogate = cfg.surrogate
    if ck is not None:
        model.load_state_dict(ck["model"])
    model = model.to(device, memory_format=fmt)
    objective = Objective(model, CoTrainStep(cfg.method, cfg.t_d, cfg.lam, cfg.gamma,
                                             latency=latency_budget(cfg),
                                             sparsity_on=cfg.sparsity_on).to(device))
    if dist.world > 1:
        if device.type == "cuda":
            objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
            model = objective.model
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            # co uses both streams' BatchNorms; dense and gated leave the other stream's unused
            find_unused_parameters=cfg.method != "co")
    opt = LARS(lars_param_groups(model, cfg.gate_lr_mult), lr=0.0, weight_decay=cfg.weight_decay,
               eta=cfg.eta)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    data = TwoViews(*train_xy, ssl_transform(cfg.dataset))
    steps_per_epoch = len(data) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg.batch_size} exceeds the {len(data)} training images")
    start_epoch, history, initial, segments = 0, [], {}, []
    if ck is not None:
        try:
            opt.load_state_dict(ck["optimizer"])
        except ValueError as exc:  # e.g. a checkpoint from an older hwbench's parameter groups
            raise UsageError(f"--resume: {ckpt_path}'s optimiser state does not fit this "
                             f"version's ({exc})") from None
        if ck.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ck["scaler"])
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        initial = ck.get("initial", {})
        if (out / ENERGY).exists():  # the earlier launches' energy: a resumed run adds to it
            segments = json.loads((out / ENERGY).read_text())["segments"]
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {**asdict(cfg), "world_size": dist.world,
                                                "amp_dtype": str(amp).replace("torch.", "")
                                                if amp else "fp32"})
        if cfg.eval_initial and not initial:
            initial = evaluate(model, cfg, train_xy, test_xy, device)
    dist.barrier()
    meter = None
    if dist.main and cfg.energy:
        from hwbench.measure.energy import TrainingEnergy

        meter = TrainingEnergy(out, cfg.country, energy_factory)
        meter.start()
    per_rank = cfg.batch_size // dist.world
    total_steps = (cfg.epochs - start_epoch) * steps_per_epoch
    done, t_run = 0, time.perf_counter()
    model.train()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            p = anneal_p(epoch, cfg.alpha)
            _seed_everything(cfg.seed * 100_003 + epoch * 1_009 + dist.rank)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
                cfg.seed * 1000 + epoch))
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            for s in range(steps_per_epoch):
                batch = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                idx = batch[dist.rank * per_rank:(dist.rank + 1) * per_rank].tolist()
                items = [data[i] for i in idx]
                v1 = torch.stack([it[0] for it in items]).to(device, memory_format=fmt)
                v2 = torch.stack([it[1] for it in items]).to(device, memory_format=fmt)
                for g in opt.param_groups:
                    g["lr"] = g["lr_mult"] * lr_at(cfg, epoch * steps_per_epoch + s,
                                                   steps_per_epoch)
                with torch.autocast(device.type, dtype=amp or torch.float32,
                                    enabled=amp is not None):
                    loss, terms = objective(v1, v2, p)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                done += 1
                if progress and dist.main:
                    elapsed = time.perf_counter() - t_run
                    progress({"epoch": epoch, "epochs": cfg.epochs, "step": s + 1,
                              "steps": steps_per_epoch, **terms,
                              "images_per_s": (s + 1) * cfg.batch_size / (time.perf_counter()
                                                                          - t0),
                              "eta_s": elapsed / done * (total_steps - done)})
            dt = time.perf_counter() - t0
            row = {"epoch": epoch, "p": p, "lr": opt.param_groups[0]["lr"], "seconds": dt,
                   "images_per_s": steps_per_epoch * cfg.batch_size / dt,
                   **{k: v / steps_per_epoch for k, v in sums.items()}}
            if dist.main:
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    row.update(evaluate(model, cfg, train_xy, test_xy, device))
                history.append(row)
                # rewritten whole from the history, like the checkpoint: an interrupted write
                # never leaves a duplicate or half line for the resumed run to append to
                atomic_write_text(out / "metrics.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in history))
                _write_metrics_csv(out / "metrics.csv", history)
                _save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch, "history": history,
                    "initial": initial, "config": asdict(cfg)})
            dist.barrier()
    finally:
        if meter is not None:
            from hwbench.measure.energy import total_energy

            segments.append(meter.stop())
            atomic_write_json(out / ENERGY, {
                "schema": "hwbench/training-energy@1", "segments": segments,
                "total": total_energy(segments),
                "note": "codecarbon: 'measured' components come from hardware counters (RAPL, "
                        "NVML); 'estimated' ones from its power model"})
    divergence = _param_divergence(model) if dist.world > 1 else 0.0
    if not dist.main:
        return {}
    name = out.name
    summary = {"run": name, "dir": str(out), "config": asdict(cfg), "initial": initial,
               "final": history[-1], "world_size": dist.world}
    if dist.world > 1:
        summary["ddp_max_param_divergence"] = divergence
    if (out / ENERGY).exists():
        summary["energy"] = json.loads((out / ENERGY).read_text())["total"]
    if cfg.method != "dense":
        test_x = eval_dataset(*test_xy, cfg.dataset)
        pattern = summarise(model.backbone, DataLoader(test_x, batch_size=256), device,
                            dataset=cfg.dataset, t_d=cfg.t_d, run=name)
        pattern.t_d = cfg.t_d
        pattern.save(out / "pattern.json")
        pattern.save(Path(cfg.models_dir) / f"{name}.json")
        summary["pattern"] = str(Path(cfg.models_dir) / f"{name}.json")
    atomic_write_json(out / "summary.json", summary)
    return summary
