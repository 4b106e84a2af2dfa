import pytest
import torch

from hwbench.engine import channel_groups, pattern_inputs, realise
from hwbench.pattern.gate_pattern import mixed_pattern, summarise


@pytest.mark.slow
def test_realised_gates_follow_the_pattern():
    p = mixed_pattern("resnet18", "cifar", 32, 0.4, seed=4)
    net = realise(p, seed=0)
    x = pattern_inputs(256, 32, seed=99)  # fresh inputs, not the calibration ones
    learned = summarise(net, x.split(128))
    for want, got, g in zip(p.layers, learned.layers, channel_groups(p)):
        assert set(got.on_idx) >= set(g.on.tolist())  # always-on stay on
        assert not (set(got.on_idx) | set(got.dynamic_idx)) - set(g.kept.tolist())  # off stay off
        assert want.dynamic == 0 or got.dynamic > 0  # dynamic ones vary from sample to sample
    for lp, m, g in zip(p.layers, net.forward_gated(x).masks, channel_groups(p)):
        if lp.dynamic:  # ... at about the pattern's rate
            assert m[:, g.dyn].mean().item() == pytest.approx(lp.dynamic_on_rate, abs=0.1)


@pytest.mark.slow
def test_same_seed_same_decisions_other_seed_other_net():
    p = mixed_pattern("resnet18", "cifar", 32, 0.3, seed=1)
    x = pattern_inputs(16, 32, seed=3)
    a = realise(p, seed=5).forward_gated(x).masks
    b = realise(p, seed=5).forward_gated(x).masks
    c = realise(p, seed=6).forward_gated(x).masks
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.slow
def test_realise_leaves_global_rng_alone():
    p = mixed_pattern("resnet18", "cifar", 32, 0.3, seed=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    realise(p, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_pattern_inputs_are_seeded_and_vary_per_sample():
    a, b = pattern_inputs(4, 16, seed=1), pattern_inputs(4, 16, seed=1)
    assert torch.equal(a, b)
    means = a.mean(dim=(2, 3))
    assert means.std(dim=0).min() > 0.1
