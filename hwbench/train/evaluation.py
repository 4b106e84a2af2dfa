"""What a run is worth: features of each stream, kNN top-1 with its standard error, the MACs the
deployed function runs on the test split, warnings when training made features worse, the
metrics CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from hwbench.data import (
    Split,
    eval_batches,
)
from hwbench.io import atomic_write_text
from hwbench.ssl.knn import knn_top1
from hwbench.ssl.model import (
    SSLModel,
)
from hwbench.train.config import TrainConfig


@torch.no_grad()
def features(backbone, split: Split, dataset: str, stream: str, device, batch: int = 256,
             amp: torch.dtype | None = None, channels_last: bool = False,
             workers: int = 0) -> torch.Tensor:
    """(N, num_features) fp32 features of one stream over ``split``, in order (eval mode: hard
    gates, running BN)."""
    was = backbone.training
    backbone.eval()
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, _ in eval_batches(split, dataset, batch, workers):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out.append(backbone(x.to(device, memory_format=fmt), stream=stream).float().cpu())
    backbone.train(was)
    return torch.cat(out)


@torch.no_grad()
def eval_macs_ratio(backbone, split: Split, dataset: str, device, batch: int = 256,
                    workers: int = 0) -> float:
    """Mean gated/dense MACs ratio over a data set, hard gates (what the deployed net runs).
    A pass of its own, in fp32 like the deployed engine: under autocast a logit near 0 could
    fall on the other side of the threshold, and this number is judged to +-0.05."""
    was = backbone.training
    backbone.eval()
    total, n = 0.0, 0
    for x, _ in eval_batches(split, dataset, batch, workers):
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


def evaluate(model: SSLModel, cfg: TrainConfig, train_split: Split, test_split: Split,
             device) -> dict:
    """kNN top-1 (%) of each trained stream by ``cfg.knn``'s protocol (named in the row's
    ``knn_protocol``; its memory bank: the labelled ``train_split``), and the gated MACs ratio
    on the test split.

    In fp32, whatever the training's autocast: that is the precision the deployed network is
    profiled and verified in, and under bf16 gate logits near 0 fall on the other side of the
    threshold often enough to move the gated top-1 by more than a point (measured: 88.6 vs
    90.2 % on one mnist5k run)."""
    res = {}
    workers = cfg.workers or 0
    kw = dict(device=device, amp=None, channels_last=cfg.channels_last, workers=workers)
    for stream in streams_of(cfg.method):
        ftr = features(model.backbone, train_split, cfg.dataset, stream, **kw)
        fte = features(model.backbone, test_split, cfg.dataset, stream, **kw)
        res[f"knn_top1_{stream}"] = knn_top1(ftr, train_split.labels, fte, test_split.labels,
                                             cfg.knn)
    res["knn_test_n"] = len(test_split)
    res["knn_protocol"] = cfg.knn
    if cfg.method != "dense":
        res["eval_macs_ratio"] = eval_macs_ratio(model.backbone, test_split, cfg.dataset, device,
                                                 workers=workers)
    return res


def param_divergence(model: torch.nn.Module) -> float:
    """Largest |difference| between any process's parameters and rank 0's (0 when DDP keeps
    the replicas in sync, as it must)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, 0)
    div = (flat - ref).abs().max()
    torch.distributed.all_reduce(div, op=torch.distributed.ReduceOp.MAX)
    return float(div)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    cols = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def feature_warnings(initial: dict, final: dict) -> list[str]:
    """A warning for each stream whose final kNN top-1 is below the randomly initialised
    network's: training made its features worse (too short a run, too high a rate)."""
    warnings = []
    n = final.get("knn_test_n", 0)
    for stream in ("dense", "gated"):
        key = f"knn_top1_{stream}"
        if key in final and key in initial and final[key] < initial[key]:
            warnings.append(
                f"WARNING: the {stream} stream's final kNN top-1 ({final[key]:.2f} % "
                f"± {top1_se(final[key], n):.2f}) is below the randomly initialised network's "
                f"({initial[key]:.2f} %): training made its features worse; train longer or "
                "with a lower --lr")
    return warnings
