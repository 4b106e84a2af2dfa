"""The kNN protocols against a brute force written here with plain loops."""

import math

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.ssl.knn import KNN_PROTOCOLS, PROTOCOLS, knn_predict, knn_top1, knn_top1_all

# each protocol as its definition reads: (metric, k, vote of a neighbour at distance/similarity s)
SPEC = {"reference": ("euclidean", 1, lambda d: 1.0 / (d + 1e-5)),
        "online": ("euclidean", 20, lambda d: 1.0 / (d + 1e-5)),
        "cosine": ("cosine", 20, lambda s: math.exp(s / 0.07))}


def brute_predict(train, labels, test, name):
    """Plain loops: every training point's distance (or similarity), the k nearest (equal ones
    by lower index), votes summed per class, the lowest class among equal votes."""
    metric, k, vote = SPEC[name]
    k = min(k, len(train))
    preds = []
    for t in test.tolist():
        keyed = []
        for j, x in enumerate(train.tolist()):
            if metric == "euclidean":
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(t, x)))
                keyed.append((d, j, vote(d)))
            else:
                nt = math.sqrt(sum(a * a for a in t))
                nx = math.sqrt(sum(b * b for b in x))
                s = sum(a * b for a, b in zip(t, x)) / (nt * nx)
                keyed.append((-s, j, vote(s)))
        keyed.sort(key=lambda e: (e[0], e[1]))
        totals = {}
        for _, j, w in keyed[:k]:
            c = int(labels[j])
            totals[c] = totals.get(c, 0.0) + w
        best = max(totals.values())
        preds.append(min(c for c, w in totals.items() if w == best))
    return preds


def disagreeing_set():
    """Test point (1, 0). Class 0: one point at distance 0.05; class 1: 19 points at distance
    0.52, a little off its direction; class 2: 20 points exactly in its direction, far away.
    reference (k 1): class 0. online (k 20, 1/(d + 1e-5)): the class-0 point votes ~20, the 19
    class-1 points ~1.9 each: class 1. cosine (k 20): the 20 class-2 points have similarity 1,
    more than any other: class 2."""
    train = [[1.0, 0.05]] + [[1.5, 0.15]] * 19 + [[10.0 + i, 0.0] for i in range(20)]
    labels = [0] + [1] * 19 + [2] * 20
    return torch.tensor(train), torch.tensor(labels), torch.tensor([[1.0, 0.0]])


def test_the_protocols_disagree_where_their_definitions_say():
    train, labels, test = disagreeing_set()
    got = {n: knn_predict(train, labels, test, n).tolist() for n in KNN_PROTOCOLS}
    assert got == {"reference": [0], "online": [1], "cosine": [2]}
    for n in KNN_PROTOCOLS:
        assert got[n] == brute_predict(train, labels, test, n)
    top1 = knn_top1_all(train, labels, test, torch.tensor([1]))
    assert top1 == {"reference": 0.0, "online": 100.0, "cosine": 0.0}


def test_ties_go_to_the_lower_index_and_the_lower_class():
    # two training points at the same place, labels 2 then 1: k 1 takes the first (label 2)
    train = torch.tensor([[0.0, 1.01], [0.0, 1.01], [5.0, 5.0]])
    labels = torch.tensor([2, 1, 0])
    test = torch.tensor([[0.0, 1.0]])
    assert knn_predict(train, labels, test, "reference").tolist() == [2]
    # k 20 (capped at 3): labels 2 and 1 get equal votes, the lower class (1) wins
    assert knn_predict(train, labels, test, "online").tolist() == [1]
    assert knn_predict(train, labels, test, "cosine").tolist() == [1]
    for n in KNN_PROTOCOLS:
        assert knn_predict(train, labels, test, n).tolist() == brute_predict(train, labels,
                                                                              test, n)


def test_the_vote_weights_are_the_protocols():
    # online: a neighbour at distance 0 votes 1 / 1e-5 = 1e5, nine at 1e-4 vote 9 / 1.1e-4 =
    # 8.2e4: class 0 (with a larger epsilon the nine would win)
    train = torch.tensor([[1.0, 0.0]] + [[1.0001, 0.0]] * 9)
    labels = torch.tensor([0] + [1] * 9)
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, test, "online").tolist() == [0]
    assert brute_predict(train, labels, test, "online") == [0]
    # cosine: one neighbour at similarity 1 votes exp(1 / 0.07) = 1.6e6, three at 0.95 vote
    # 3 exp(0.95 / 0.07) = 2.4e6: class 1 (at temperature 0.01 the one would win)
    s = 0.95
    train = torch.tensor([[1.0, 0.0]] + [[s, math.sqrt(1 - s * s)]] * 3)
    labels = torch.tensor([0, 1, 1, 1])
    assert knn_predict(train, labels, test, "cosine").tolist() == [1]
    assert knn_predict(train, labels, test, "cosine", temperature=0.01).tolist() == [0]
    assert brute_predict(train, labels, test, "cosine") == [1]


def test_near_ties_keep_their_order():
    # the second point is nearer by 1e-7: it wins k 1 however the index order says otherwise
    train = torch.tensor([[1.0 + 2e-7, 0.0], [1.0 + 1e-7, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, test, "reference").tolist() == [1]
    assert brute_predict(train, labels, test, "reference") == [1]


@pytest.mark.parametrize("name", KNN_PROTOCOLS)
def test_random_sets_with_many_exact_ties_match_the_brute_force(name):
    g = torch.Generator().manual_seed(3)
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.5], [0.2, 0.3, 3.0],
                            [2.0, -1.0, 1.0], [-1.0, 0.5, 0.5]])
    train = palette[torch.randint(0, 6, (45,), generator=g)]  # repeated points: exact ties
    train[::3] += 0.01 * torch.randn(15, 3, generator=g)  # and near ones
    labels = torch.randint(0, 4, (45,), generator=g)
    test = torch.cat([palette, torch.randn(14, 3, generator=g)])
    got = knn_predict(train, labels, test, name, chunk=7)  # chunks must not change anything
    assert got.tolist() == brute_predict(train, labels, test, name)


def test_well_separated_clusters_are_classified_by_every_protocol():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 5
    ytr, yte = torch.arange(3).repeat(20), torch.arange(3).repeat(5)
    xtr = centres[ytr] + torch.randn(60, 8) * 0.1
    xte = centres[yte] + torch.randn(15, 8) * 0.1
    for n in KNN_PROTOCOLS:
        assert knn_top1(xtr, ytr, xte, yte, n) == 100.0
        assert knn_top1(xtr, ytr, xte, (yte + 1) % 3, n) == 0.0


def test_protocol_records_and_unknown_names():
    assert PROTOCOLS["reference"].record()["k"] == 1
    assert PROTOCOLS["online"].record()["metric"] == "euclidean"
    assert PROTOCOLS["cosine"].record()["temperature"] == 0.07
    assert all(PROTOCOLS[n].source for n in KNN_PROTOCOLS)
    with pytest.raises(UsageError, match="unknown kNN protocol 'l2'"):
        knn_predict(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), "l2")
