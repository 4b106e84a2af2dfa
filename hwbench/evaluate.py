"""``hwbench eval``: evaluate a trained run's frozen features, dense and gated.

- kNN top-1 (cosine, k 20, temperature 0.07), as during training;
- linear probe (``linear=True``): a linear classifier on frozen, standardised features of the
  un-augmented training split, trained full-batch with L-BFGS on cross-entropy + L2 (a convex
  problem: deterministic, no learning rate to tune), scored on the test split;
- the gated network's measured MACs ratio on the test split and each gated layer's on-ratio.

Protocol choice: the reference trains its linear head for 100 epochs on augmented crops; a
frozen-feature probe on un-augmented images is cheaper and is what the small embedded data sets
need. The two are not interchangeable: the probe's numbers are labelled ``linear_top1``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hwbench.data import auto_workers, eval_batches, info, load_split
from hwbench.errors import UsageError
from hwbench.io import atomic_write_json
from hwbench.nets import net_from_config
from hwbench.patterns import summarise
from hwbench.ssl.model import knn_top1
from hwbench.train import eval_macs_ratio, features, streams_of


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
             k: int = 20, temperature: float = 0.07, workers: int | None = None) -> dict:
    """Evaluate both streams of a run on its data set's labelled train and test splits; writes
    ``eval.json`` next to the checkpoint (or ``out``). ``workers``: DataLoader processes for
    sets read from disk (None: ``data.auto_workers``)."""
    if not (linear or knn):
        raise UsageError("nothing to evaluate: ask for --linear and/or --knn")
    net, cfg, epoch = load_run(checkpoint)
    dev = torch.device(device)
    net = net.to(dev)
    dataset = cfg["dataset"]
    train, test, workers = eval_splits(cfg, data_dir, workers)
    res: dict = {"checkpoint": str(checkpoint), "dataset": dataset, "arch": cfg["arch"],
                 "method": cfg["method"], "t_d": cfg["t_d"], "epoch": epoch,
                 "protocol": {"knn": {"k": k, "temperature": temperature, "metric": "cosine"},
                              "linear": "frozen standardised features, multinomial logistic "
                                        "regression, L-BFGS, L2 1e-4, un-augmented images"}}
    for stream in streams_of(cfg["method"]):
        ftr = features(net, train, dataset, stream, dev, workers=workers)
        fte = features(net, test, dataset, stream, dev, workers=workers)
        if knn:
            res[f"knn_top1_{stream}"] = knn_top1(ftr, train.labels, fte, test.labels, k,
                                                 temperature)
        if linear:
            res[f"linear_top1_{stream}"] = linear_probe(ftr, train.labels, fte, test.labels)
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
               k: int = 20, temperature: float = 0.07) -> dict:
    """kNN top-1 of a deployed network: the gated stream's features (train and test split)
    from the compact engine in ``dynamic`` mode at batch 1, the function ``verify`` times; the
    dense stream's from the eager network. Also the largest gap between the engine's and the
    eager gated network's features on the test images (the two should be one function)."""
    from hwbench.engine import build_engine
    from hwbench.patterns import load_pattern

    net, cfg, epoch = load_run(checkpoint)
    dev = torch.device(device)
    net = net.to(dev)
    dataset = cfg["dataset"]
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
           "knn_top1_gated": knn_top1(g_tr, train.labels, g_te, test.labels, k, temperature),
           "gated_source": "compact engine, dynamic mode, batch 1 (the timed network)",
           "engine_vs_eager_max_abs_diff": float((g_te - eager).abs().max()),
           "protocol": {"knn": {"k": k, "temperature": temperature, "metric": "cosine"}}}
    if "dense" in streams_of(cfg["method"]):
        d_tr = features(net, train, dataset, "dense", dev, workers=workers)
        d_te = features(net, test, dataset, "dense", dev, workers=workers)
        res["knn_top1_dense"] = knn_top1(d_tr, train.labels, d_te, test.labels, k, temperature)
    return res
