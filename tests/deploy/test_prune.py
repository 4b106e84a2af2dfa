"""Structured pruning with Torch-Pruning: DepGraph's groups, the global threshold's candidates,
and a pruned network that computes exactly what the full one does without those channels."""

import pytest
import torch

from hwbench.deploy.prune import candidates, channel_scores, prune
from hwbench.errors import UsageError
from hwbench.nets import create_net


@pytest.fixture(scope="module")
def trained_like():
    """A resnet18 whose inner channels differ in size (as a trained one's do), eval mode."""
    torch.manual_seed(0)
    net = create_net("resnet18", stem="cifar")
    for _, block in net.blocks():
        with torch.no_grad():
            scale = torch.rand(block.conv1.out_channels) ** 3 + 0.01
            block.conv1.weight.mul_(scale[:, None, None, None])
            block.bn1.dense.running_var.uniform_(0.5, 2.0)
            block.bn1.dense.running_mean.uniform_(-0.2, 0.2)
    return net.eval()


def test_scores_cover_every_inner_channel_and_rank_dead_ones_last(trained_like):
    import copy

    net = copy.deepcopy(trained_like)
    dead = [3, 9, 40, 41]  # every weight of their group is 0: nothing to keep
    block = net.blocks()[0][1]
    with torch.no_grad():
        block.conv1.weight[dead] = 0
        block.bn1.dense.weight[dead] = 0
        block.bn1.dense.bias[dead] = 0
        block.conv2.weight[:, dead] = 0
    scores = channel_scores(net, 32)
    assert [len(s) for s in scores] == [b.conv1.out_channels for _, b in net.blocks()]
    assert sorted(torch.argsort(scores[0])[:4].tolist()) == dead
    assert float(scores[0][dead].max()) < float(scores[0].median())


def test_candidates_are_distinct_multiples_of_16_narrowest_first(trained_like):
    scores = channel_scores(trained_like, 32)
    cands = candidates(scores)
    full = tuple(len(s) for s in scores)
    assert cands[-1][1] == full
    assert all(w % 16 == 0 and 16 <= w <= f for _, ws in cands for w, f in zip(ws, full))
    assert len({ws for _, ws in cands}) == len(cands)
    assert [sum(ws) for _, ws in cands] == sorted(sum(ws) for _, ws in cands)
    # uneven importances: a global threshold keeps different shares in different blocks
    mid = cands[len(cands) // 2][1]
    assert len({w / f for w, f in zip(mid, full)}) > 1


def test_the_pruned_network_is_the_full_one_without_the_dropped_channels(trained_like):
    scores = channel_scores(trained_like, 32)
    widths = candidates(scores)[len(candidates(scores)) // 3][1]
    pruned = prune(trained_like, scores, widths, 32)
    assert pruned.widths == list(widths)
    # the same function: the full network with the dropped channels' next-conv inputs zeroed
    import copy

    ref = copy.deepcopy(trained_like)
    for (_, block), s, k in zip(ref.blocks(), scores, widths):
        drop = torch.argsort(s, descending=True)[k:]
        with torch.no_grad():
            block.conv2.weight[:, drop] = 0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x), ref(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(pruned(x), trained_like(x), atol=1e-3)
    # the source network is not modified
    assert [b.conv1.out_channels for _, b in trained_like.blocks()] == [
        len(s) for s in scores]


def test_bottleneck_networks_are_refused_in_one_line():
    with pytest.raises(UsageError, match="bottleneck"):
        channel_scores(create_net("resnet50", stem="cifar"), 32)
