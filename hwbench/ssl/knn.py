"""Weighted kNN classification of frozen features: the three protocols hwbench reports.

Each protocol is a metric, a neighbour count k and a vote weight; its top-1 is a pure function of
(train features, train labels, test features, test labels):

- ``reference``: the numbers the paper reports (``main_knn.py`` run by
  ``bash_files/knn/<dataset>/knn.sh``): Euclidean distance, k 1, backbone features of
  un-augmented images (the classification pipeline's ``T_val``);
- ``online``: the reference's monitor during pre-training (``--knn_eval``): Euclidean, k 20, each
  neighbour votes 1 / (d + 1e-5). The reference fills its training bank with the features of the
  augmented training views as they pass (train mode); hwbench uses the un-augmented training
  split in eval mode, like the other protocols: same metric, not the same bank;
- ``cosine``: hwbench's monitor until issue 15: cosine similarity, k 20, each neighbour votes
  exp(sim / 0.07).

Ties are broken deterministically, so that a brute-force reference can be exact: among
neighbours at the same distance the lower training index is taken first, and among classes with
the same vote the lower class wins. Euclidean distances are computed in float64 (near-ties keep
their order); cosine similarities in float32, as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hwbench.errors import UsageError


@dataclass(frozen=True)
class KnnProtocol:
    """A kNN protocol: ``metric`` (euclidean | cosine), ``k`` neighbours, and the vote of a
    neighbour: 1 / (d + eps) for euclidean, exp(sim / temperature) for cosine."""

    name: str
    metric: str
    k: int
    temperature: float | None = None
    eps: float | None = None
    source: str = ""

    def record(self) -> dict:
        """What a result file says of the protocol (every number of it, and where it is from)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


# The reference's values, from KrishnaTarun/Unification at commit f0fe435 (facts, cited).
PROTOCOLS = {
    "reference": KnnProtocol(
        "reference", "euclidean", k=1, eps=1e-5,
        source="bash_files/knn/{cifar10,cifar100,stl10,imagenet100}/knn.sh: --feature_type "
               "backbone, --distance_function euclidean, --k 1 (cifar100/knn.sh:20,24-25); "
               "main_knn.py:259-263 (both splits through the un-augmented T_val); "
               "solo/utils/knn.py:137 (vote 1 / (d + epsilon)), :34 (epsilon 0.00001)"),
    "online": KnnProtocol(
        "online", "euclidean", k=20, eps=1e-5,
        source="solo/methods/base_gating.py:357,360 (WeightedKNNClassifier(k=knn_k, "
               "distance_fx='euclidean')), :448 (--knn_k default 20; no script sets it), "
               "bash_files/pretrain/cifar100/vicreg_gating.sh:55 (--knn_eval); "
               "solo/utils/knn.py:137 (vote 1 / (d + 1e-5)). The reference's training bank: "
               "augmented training views in train mode (base_gating.py:689-702); hwbench's: "
               "the un-augmented training split in eval mode"),
    "cosine": KnnProtocol(
        "cosine", "cosine", k=20, temperature=0.07,
        source="hwbench's monitor before issue 15 (the weighted kNN of Wu et al. 2018; also "
               "solo/utils/knn.py:30-31's defaults, which the reference's scripts do not use)"),
}
KNN_PROTOCOLS = tuple(PROTOCOLS)


def protocol(name: str) -> KnnProtocol:
    if name not in PROTOCOLS:
        raise UsageError(f"unknown kNN protocol {name!r}; known: {', '.join(KNN_PROTOCOLS)}")
    return PROTOCOLS[name]


def _scores(test: torch.Tensor, train: torch.Tensor, metric: str) -> torch.Tensor:
    """(n_test, n_train) scores, higher = nearer: -distance (euclidean) or similarity."""
    if metric == "cosine":
        return test @ train.T
    sq = (test * test).sum(1, keepdim=True) + (train * train).sum(1) - 2.0 * test @ train.T
    return -sq.clamp_min(0).sqrt()


def _nearest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n_train) bool: each row's k highest scores, equal scores taken by lower index."""
    kth = scores.topk(k, dim=1).values[:, -1:]
    better = scores > kth
    tied = scores == kth
    room = k - better.sum(1, keepdim=True)
    return better | (tied & (tied.cumsum(1) <= room))


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor,
                test_feats: torch.Tensor, name: str = "cosine", k: int | None = None,
                temperature: float | None = None, n_classes: int | None = None,
                chunk: int = 256) -> torch.Tensor:
    """(N_test,) predicted labels of (N_test, D) ``test_feats`` by protocol ``name`` from
    (N_train, D) ``train_feats`` with (N_train,) integer ``train_labels`` (>= 0). ``k`` and
    ``temperature`` override the protocol's (k is capped at N_train)."""
    p = protocol(name)
    k = min(p.k if k is None else k, len(train_feats))
    if p.metric == "cosine":
        train = F.normalize(train_feats.float(), dim=1)
        test = F.normalize(test_feats.float(), dim=1)
    else:
        train, test = train_feats.double(), test_feats.double()
    temperature = p.temperature if temperature is None else temperature
    n_classes = n_classes or int(train_labels.max()) + 1
    labels = train_labels.long().to(train.device)
    out = []
    for i in range(0, len(test), chunk):
        scores = _scores(test[i:i + chunk], train, p.metric)
        chosen = _nearest(scores, k)
        vote = (scores / temperature).exp() if p.metric == "cosine" else 1.0 / (-scores + p.eps)
        votes = torch.zeros(len(scores), n_classes, dtype=vote.dtype, device=vote.device)
        votes.scatter_add_(1, labels.expand(len(scores), -1), vote * chosen)
        out.append(votes.argmax(1))  # the first (lowest) class among equal votes
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_top1(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
             test_labels: torch.Tensor, name: str = "cosine", k: int | None = None,
             temperature: float | None = None) -> float:
    """Top-1 (%) of protocol ``name`` on the test split (see ``knn_predict``)."""
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, name, k, temperature, n_classes)
    return 100.0 * (pred.cpu() == test_labels.cpu()).double().mean().item()


def knn_top1_all(train_feats: torch.Tensor, train_labels: torch.Tensor,
                 test_feats: torch.Tensor, test_labels: torch.Tensor,
                 names: tuple[str, ...] = KNN_PROTOCOLS) -> dict[str, float]:
    """Top-1 (%) of each protocol in ``names``, by name."""
    return {n: knn_top1(train_feats, train_labels, test_feats, test_labels, n) for n in names}
