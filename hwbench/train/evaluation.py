"""What a run is worth: features of each stream, kNN top-1 with its standard error, the MACs the
deployed function runs on the test split, warnings when training made features worse, the
metrics CSV (what training reports as it goes); and ``hwbench eval``, which evaluates a trained
run's frozen features, dense and gated:

- kNN top-1 by each protocol of ``hwbench.ssl.knn`` (``knn_<protocol>_top1_<stream>``:
  ``reference``, the paper's Euclidean k 1; ``online``, the reference's training monitor;
  ``cosine``, k 20, T 0.07); ``knn_top1_<stream>`` repeats the one of the run's own ``--knn``
  protocol (cosine for runs from before it existed), named in ``protocol.knn.knn_top1``;
- linear probe (``linear=True``): a linear classifier on frozen, standardised features of the
  un-augmented training split, trained full-batch with L-BFGS on cross-entropy + L2 (a convex
  problem: deterministic, no learning rate to tune), scored on the test split;
- the reference's linear evaluation (``linear_sgd_epochs`` > 0; ``linear_sgd_top1_<stream>``):
  an SGD-trained linear head on the frozen backbone (eval mode) fed augmented training crops
  (``LINEAR_SGD`` lists every setting and its source);
- the gated network's measured MACs ratio on the test split and each gated layer's on-ratio.

Protocol choice: the reference trains its linear head with SGD on augmented crops; a
frozen-feature probe on un-augmented images is cheaper and is what the small embedded data sets
need. The two are not interchangeable: the probe's numbers are labelled ``linear_top1``, the
SGD head's ``linear_sgd_top1``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from hwbench.data import (
    Split,
    auto_workers,
    eval_batches,
    info,
    linear_train_transform,
    load_split,
)
from hwbench.engine import build_engine
from hwbench.errors import UsageError
from hwbench.io import atomic_write_json, atomic_write_text
from hwbench.nets import net_from_config
from hwbench.pattern.gate_pattern import load_pattern, summarise
from hwbench.ssl.knn import KNN_PROTOCOLS, PROTOCOLS, knn_top1, knn_top1_all, protocol
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


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, l2: float = 1e-4, max_iter: int = 200) -> float:
    """Top-1 (%) of a multinomial logistic regression on (N, D) features (standardised with the
    training split's mean and std)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(xtr.shape[1], n_cls, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_cls, dtype=torch.float64, requires_grad=True)
    xtr64, xte64 = xtr.double(), xte.double()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr64 @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xte64 @ w + b).argmax(1)
    return 100.0 * (pred == test_y).double().mean().item()


# The reference's linear evaluation (KrishnaTarun/Unification f0fe435; the repository has no
# linear-evaluation script, so these are main_linear.py's and solo/methods/linear.py's defaults).
LINEAR_SGD = {
    "optimizer": "SGD, momentum 0.9", "lr": 0.3, "weight_decay": 1e-4, "batch_size": 128,
    "init": "weight ~ U(0, 1), bias PyTorch's default",
    "schedule": "cosine to 0 over the epochs, per epoch (hwbench's choice: the reference's "
                "default, ReduceLROnPlateau, names no metric to monitor)",
    "backbone": "frozen, eval mode (running BN statistics, hard gates), pooled features",
    "train_images": "random resized crop (scale 0.08-1, bilinear) + horizontal flip (not for "
                    "digits), hwbench's eval normalisation (data.linear_train_transform)",
    "test_images": "un-augmented test split",
    "source": "solo/methods/linear.py:144 (batch 128), :145 (lr 0.3), :147 (weight decay "
              "1e-4), :102 (uniform init), :121-122 (backbone frozen), :311 (backbone.eval()), "
              ":241-246 (optimiser on the classifier only); solo/args/utils.py:270-271 "
              "(momentum 0.9); solo/utils/classification_dataloader.py:71-72 (train crops)"}


def linear_sgd(backbone, train: Split, test: Split, dataset: str, stream: str,
               device: torch.device, epochs: int, seed: int = 0, batch_size: int = 128,
               lr: float = 0.3, weight_decay: float = 1e-4, momentum: float = 0.9,
               workers: int = 0) -> float:
    """Top-1 (%) on the test split of a linear head trained with SGD for ``epochs`` epochs on
    augmented crops (``linear_train_transform``) of the uint8 images of the ``train`` split,
    through ``backbone``'s ``stream`` kept frozen in eval mode (its weights and BatchNorm
    statistics do not change). Seeded by ``seed`` (data order, crops, initialisation); the
    caller's random state is left as it was."""
    if epochs < 1:
        raise UsageError(f"--linear-sgd-epochs must be >= 1 to train, got {epochs}")
    was = backbone.training
    backbone.eval()
    y = train.labels
    aug = linear_train_transform(dataset)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        head = torch.nn.Linear(backbone.num_features, info(dataset).num_classes).to(device)
        torch.nn.init.uniform_(head.weight)
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        for _ in range(epochs):
            for idx in torch.randperm(len(y)).split(batch_size):
                crops = torch.stack([aug(train[i][0]) for i in idx.tolist()]).to(device)
                with torch.no_grad():
                    feats = backbone(crops, stream=stream).float()
                loss = F.cross_entropy(head(feats), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        test_feats = features(backbone, test, dataset, stream, device,  # draws a seed
                              workers=workers)
    backbone.train(was)
    with torch.no_grad():
        pred = head(test_feats.to(device)).argmax(1).cpu()
    return 100.0 * (pred == test.labels).double().mean().item()


def load_run(checkpoint: str | Path):
    """(backbone in eval mode, config dict, last finished epoch) of a training checkpoint."""
    try:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UsageError(f"{checkpoint}: no such checkpoint") from None
    except Exception as exc:
        raise UsageError(f"{checkpoint}: not a readable checkpoint ({exc})") from None
    if not isinstance(ck, dict) or "config" not in ck or "model" not in ck:
        raise UsageError(f"{checkpoint}: not an hwbench training checkpoint")
    cfg = ck["config"]
    net = net_from_config(cfg, info(cfg["dataset"]).stem)
    net.load_state_dict({k[len("backbone."):]: v for k, v in ck["model"].items()
                         if k.startswith("backbone.")})
    return net.eval(), cfg, ck.get("epoch")


def knn_results(train_feats: torch.Tensor, train_labels: torch.Tensor,
                test_feats: torch.Tensor, test_labels: torch.Tensor, stream: str,
                protocols: tuple[str, ...], run_protocol: str) -> dict:
    """``knn_<protocol>_top1_<stream>`` for each of ``protocols`` (and the run's own), and
    ``knn_top1_<stream>``: the run's protocol's, the key the earlier readers know."""
    names = tuple(dict.fromkeys((*protocols, run_protocol)))
    top1 = knn_top1_all(train_feats, train_labels, test_feats, test_labels, names)
    res = {f"knn_{n}_top1_{stream}": top1[n] for n in names if n in protocols}
    res[f"knn_top1_{stream}"] = top1[run_protocol]
    return res


def _protocol_record(knn_protocols: tuple[str, ...], run_protocol: str, linear: bool,
                     linear_sgd_epochs: int) -> dict:
    rec: dict = {}
    if knn_protocols:
        rec["knn"] = {"knn_top1": run_protocol, "features": "backbone (pooled), un-augmented "
                      "train and test splits, eval mode (hard gates, running BN statistics)",
                      "protocols": {n: PROTOCOLS[n].record()
                                    for n in dict.fromkeys((*knn_protocols, run_protocol))}}
    if linear:
        rec["linear"] = ("frozen standardised features, multinomial logistic regression, L-BFGS, "
                         "L2 1e-4, un-augmented images")
    if linear_sgd_epochs:
        rec["linear_sgd"] = {**LINEAR_SGD, "epochs": linear_sgd_epochs}
    return rec


def eval_splits(cfg: dict, data_dir: str | None = None, workers: int | None = None):
    """(labelled train split, test split, DataLoader workers) of a run's data set (``cfg``: its
    config); ``data_dir`` and ``workers`` (None: ``auto_workers``) override the run's."""
    kw = dict(data_dir=data_dir or cfg.get("data_dir"), n_synthetic=cfg.get("n_synthetic", 512),
              seed=cfg.get("seed", 0))
    train, test = load_split(cfg["dataset"], "train", **kw), load_split(cfg["dataset"], "test",
                                                                        **kw)
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    return train, test, auto_workers(train.lazy) if workers is None else workers


def run_eval(checkpoint: str | Path, linear: bool = True, knn: bool = True,
             device: str = "cpu", data_dir: str | None = None, out: str | Path | None = None,
             knn_protocols: tuple[str, ...] = KNN_PROTOCOLS, linear_sgd_epochs: int = 0,
             seed: int = 0, workers: int | None = None) -> dict:
    """Evaluate both streams of a run on its data set's labelled train and test splits; writes
    ``eval.json`` next to the checkpoint (or ``out``). ``knn_protocols``: the kNN protocols to
    report (``hwbench.ssl.knn``); ``linear_sgd_epochs`` > 0: also the reference's SGD linear
    evaluation (``linear_sgd``) for that many epochs; ``workers``: DataLoader processes for sets
    read from disk (None: ``data.auto_workers``)."""
    knn_protocols = tuple(dict.fromkeys(knn_protocols)) if knn else ()
    for name in knn_protocols:
        protocol(name)
    if linear_sgd_epochs < 0:
        raise UsageError(f"--linear-sgd-epochs must be >= 0, got {linear_sgd_epochs}")
    if not (linear or knn_protocols or linear_sgd_epochs):
        raise UsageError("nothing to evaluate: ask for --linear, --knn and/or "
                         "--linear-sgd-epochs N")
    net, cfg, epoch = load_run(checkpoint)
    dev = torch.device(device)
    net = net.to(dev)
    dataset = cfg["dataset"]
    run_protocol = cfg.get("knn", "cosine")  # checkpoints from before --knn: cosine
    train, test, workers = eval_splits(cfg, data_dir, workers)
    res: dict = {"checkpoint": str(checkpoint), "dataset": dataset, "arch": cfg["arch"],
                 "method": cfg["method"], "t_d": cfg["t_d"], "epoch": epoch,
                 "protocol": _protocol_record(knn_protocols, run_protocol, linear,
                                              linear_sgd_epochs)}
    for stream in streams_of(cfg["method"]):
        if knn_protocols or linear:
            ftr = features(net, train, dataset, stream, dev, workers=workers)
            fte = features(net, test, dataset, stream, dev, workers=workers)
        if knn_protocols:
            res.update(knn_results(ftr, train.labels, fte, test.labels, stream, knn_protocols,
                                   run_protocol))
        if linear:
            res[f"linear_top1_{stream}"] = linear_probe(ftr, train.labels, fte, test.labels)
        if linear_sgd_epochs:
            res[f"linear_sgd_top1_{stream}"] = linear_sgd(net, train, test, dataset, stream, dev,
                                                          linear_sgd_epochs, seed,
                                                          workers=workers)
    if knn_protocols:
        res["knn_test_n"] = len(test)
    if cfg["method"] != "dense":
        res["eval_macs_ratio"] = eval_macs_ratio(net, test, dataset, dev, workers=workers)
        pattern = summarise(net, eval_batches(test, dataset, 256, workers), dev)
        res["on_ratios"] = {lp.name: lp.expected_on() / lp.channels for lp in pattern.layers}
    path = Path(out) if out else Path(checkpoint).with_name("eval.json")
    atomic_write_json(path, res)
    res["written"] = str(path)
    return res


@torch.inference_mode()
def engine_features(engine, images: torch.Tensor) -> torch.Tensor:
    """(N, num_features) features of normalised ``images`` from a compact engine, one image per
    call: the batch-1 function that was timed."""
    return torch.cat([engine(x[None]).float().cpu() for x in images])


def engine_knn(checkpoint: str | Path, pattern_path: str | Path, device: str = "cpu",
               knn: str | None = None) -> dict:
    """kNN top-1 (protocol ``knn``; default: the run's ``--knn``, cosine for runs from before
    it) of a deployed network: the gated stream's features (train and test split)
    from the compact engine in ``dynamic`` mode at batch 1, the function ``verify`` times; the
    dense stream's from the eager network. Also the largest gap between the engine's and the
    eager gated network's features on the test images (the two should be one function)."""
    net, cfg, epoch = load_run(checkpoint)
    dev = torch.device(device)
    net = net.to(dev)
    dataset = cfg["dataset"]
    knn = knn or cfg.get("knn", "cosine")
    train, test, workers = eval_splits(cfg)
    first = next(eval_batches(test, dataset, 8, workers))[0]
    engine = build_engine(net, "dynamic", load_pattern(pattern_path), device=dev,
                          tune_inputs=list(first.split(1)))

    def engine_all(split):
        return torch.cat([engine_features(engine, x)
                          for x, _ in eval_batches(split, dataset, 256, workers)])

    g_tr, g_te = engine_all(train), engine_all(test)
    eager = features(net, test, dataset, "gated", dev, workers=workers)
    res = {"checkpoint": str(checkpoint), "pattern": str(pattern_path), "dataset": dataset,
           "epoch": epoch, "knn_test_n": len(test),
           "knn_top1_gated": knn_top1(g_tr, train.labels, g_te, test.labels, knn),
           "gated_source": "compact engine, dynamic mode, batch 1 (the timed network)",
           "engine_vs_eager_max_abs_diff": float((g_te - eager).abs().max()),
           "protocol": {"knn": {"knn_top1": knn, "protocols": {knn: protocol(knn).record()}}}}
    if "dense" in streams_of(cfg["method"]):
        d_tr = features(net, train, dataset, "dense", dev, workers=workers)
        d_te = features(net, test, dataset, "dense", dev, workers=workers)
        res["knn_top1_dense"] = knn_top1(d_tr, train.labels, d_te, test.labels, knn)
    return res
