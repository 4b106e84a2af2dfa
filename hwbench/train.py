"""Co-training runs: a seeded loop over epochs with atomic checkpoints, exact resume, per-epoch
metrics and kNN evaluation of both streams; the learned gate pattern is written at the end.

Run directory (``results/<run-name>/`` by default): ``config.json`` (resolved), ``metrics.jsonl``
(one line per epoch), ``checkpoint.pt`` (rewritten atomically every epoch), ``pattern.json`` and
``summary.json`` at the end; the pattern is also saved as ``models/<run-name>.json``.
Resume (``resume=True``) reloads the checkpoint, optimiser and every RNG state, so the loss curve
continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

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
from hwbench.io import atomic_write_json
from hwbench.nets import create_net
from hwbench.patterns import summarise
from hwbench.ssl.losses import anneal_p
from hwbench.ssl.model import LARS, METHODS, CoTrainStep, SSLModel, knn_top1, lars_param_groups

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    arch: str = "resnet18"
    method: str = "co"
    t_d: float = 0.5
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.3  # base learning rate, scaled by batch_size / 256
    weight_decay: float = 1e-4
    eta: float = 0.02
    warmup_epochs: int = 1
    lam: float = 5.0
    gamma: float = 1.0
    alpha: float = 0.02
    proj_dims: tuple[int, ...] = (2048, 2048, 2048)
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    run_name: str | None = None
    models_dir: str = "models"
    resume: bool = False
    eval_every: int = 5
    knn_k: int = 20
    knn_temperature: float = 0.07
    max_steps_per_epoch: int | None = None  # for smoke tests
    n_synthetic: int = 512
    decision: dict = field(default_factory=dict)  # how t_d was chosen (profile, prediction)


def validate(cfg: TrainConfig) -> None:
    info(cfg.dataset)
    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    if not 0 < cfg.t_d <= 1:
        raise UsageError(f"--t-d must be in (0, 1], got {cfg.t_d}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise UsageError("--epochs must be >= 1 and --batch-size >= 2")


def run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.dataset}_{cfg.arch}_{cfg.method}_td{cfg.t_d:g}_s{cfg.seed}"
    return Path(cfg.out) if cfg.out else Path("results") / name


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


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


@torch.no_grad()
def features(backbone, images: torch.Tensor, labels: torch.Tensor, dataset: str,
             stream: str, device, batch: int = 256) -> torch.Tensor:
    was = backbone.training
    backbone.eval()
    ds = eval_dataset(images, labels, dataset)
    out = [backbone(x.to(device), stream=stream).cpu()
           for x, _ in DataLoader(ds, batch_size=batch)]
    backbone.train(was)
    return torch.cat(out)


def evaluate(model: SSLModel, cfg: TrainConfig, train_xy, test_xy, device) -> dict:
    res = {}
    streams = ("dense",) if cfg.method == "dense" else ("dense", "gated")
    if cfg.method == "gated":
        streams = ("gated",)
    for stream in streams:
        ftr = features(model.backbone, *train_xy, cfg.dataset, stream, device)
        fte = features(model.backbone, *test_xy, cfg.dataset, stream, device)
        res[f"knn_top1_{stream}"] = knn_top1(ftr, train_xy[1], fte, test_xy[1], cfg.knn_k,
                                             cfg.knn_temperature)
    return res


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Co-train per ``cfg``; returns the summary (also written to the run directory)."""
    validate(cfg)
    device = torch.device(cfg.device)
    out = run_dir(cfg)
    ckpt_path = out / CHECKPOINT
    if cfg.resume and not ckpt_path.exists():
        raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
    if not cfg.resume and ckpt_path.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or --out "
                         "elsewhere")
    meta = info(cfg.dataset)
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, n_synthetic=cfg.n_synthetic,
              seed=cfg.seed)
    train_xy = load_tensors(cfg.dataset, True, **kw)
    test_xy = load_tensors(cfg.dataset, False, **kw)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = SSLModel(create_net(cfg.arch, stem=meta.stem), tuple(cfg.proj_dims)).to(device)
    step_fn = CoTrainStep(cfg.method, cfg.t_d, cfg.lam, cfg.gamma)
    opt = LARS(lars_param_groups(model), lr=0.0, weight_decay=cfg.weight_decay, eta=cfg.eta)
    data = TwoViews(*train_xy, ssl_transform(cfg.dataset))
    steps_per_epoch = len(data) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg.batch_size} exceeds the {len(data)} training images")
    start_epoch, history = 0, []
    if cfg.resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["config"]["arch"] != cfg.arch or ck["config"]["dataset"] != cfg.dataset:
            raise UsageError(f"{ckpt_path} is a {ck['config']['arch']}/{ck['config']['dataset']} "
                             f"run, not {cfg.arch}/{cfg.dataset}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        _set_rng_state(ck["rng"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(cfg))
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        p = anneal_p(epoch, cfg.alpha)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
            cfg.seed * 1000 + epoch))
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size].tolist()
            items = [data[i] for i in idx]
            v1 = torch.stack([it[0] for it in items]).to(device)
            v2 = torch.stack([it[1] for it in items]).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, epoch * steps_per_epoch + s, steps_per_epoch)
            res = step_fn(model, v1, v2, p)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()
            for k, v in res.terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress:
                progress({"epoch": epoch, "step": s + 1, "steps": steps_per_epoch, **res.terms})
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "p": p, "lr": opt.param_groups[0]["lr"], "seconds": dt,
               "images_per_s": steps_per_epoch * cfg.batch_size / dt,
               **{k: v / steps_per_epoch for k, v in sums.items()}}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            row.update(evaluate(model, cfg, train_xy, test_xy, device))
        history.append(row)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "epoch": epoch, "history": history, "rng": _rng_state(),
                                     "config": asdict(cfg)})
    name = out.name
    summary = {"run": name, "dir": str(out), "config": asdict(cfg), "final": history[-1]}
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
