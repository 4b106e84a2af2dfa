"""One deployed network: after ``deploy``, the eager network and the compact engine compute the
same function on inputs the pattern was never summarised on."""

import copy

import pytest
import torch

from hwbench.data import balanced_indices, class_counts, sample_images
from hwbench.deploy.network import close_decided, deploy
from hwbench.engine import build_engine
from hwbench.pattern.gate_pattern import summarise
from hwbench.train.evaluation import load_run
from tests.conftest import random_gate_heads


@pytest.fixture(scope="module")
def trained_net(tiny_trained):
    net, _, _ = load_run(tiny_trained[2])
    return net


def held_out(n=48):
    images, _ = sample_images("synthetic", False, n, n_synthetic=64, seed=0)
    return images


@torch.no_grad()
def engine_vs_eager(net, pattern, x):
    eager = net.forward_gated(x).features
    worst = 0.0
    for mode in ("static", "dynamic"):
        engine = build_engine(net, mode, pattern)
        out = torch.cat([engine(xi[None]) for xi in x])
        worst = max(worst, float((out - eager).abs().max()))
    return worst


@pytest.mark.slow
def test_a_deployed_network_is_one_function_on_held_out_images(trained_net):
    calib, _ = sample_images("synthetic", True, 4, n_synthetic=64, seed=0)  # few: the pattern
    # calls channels always on/off that other images use differently
    raw = copy.deepcopy(trained_net)
    pattern_raw = summarise(raw, [calib])
    x = held_out()
    drift = summarise(raw, [x])
    differs = any(set(a.on_idx) != set(b.on_idx) or set(a.dynamic_idx) != set(b.dynamic_idx)
                  for a, b in zip(pattern_raw.layers, drift.layers))
    assert differs  # otherwise this test could not tell a deployed network from a raw one
    assert engine_vs_eager(raw, pattern_raw, x) > 1e-3  # undeployed: two different functions

    net = copy.deepcopy(trained_net)
    pattern = deploy(net, calib)
    assert pattern.to_dict()["layers"] == summarise(net, [calib]).to_dict()["layers"]
    assert engine_vs_eager(net, pattern, x) <= 1e-4
    after = summarise(net, [x])  # decided channels keep their decision on every input
    for lp, la in zip(pattern.layers, after.layers):
        assert set(lp.on_idx) <= set(la.on_idx)
        assert set(la.on_idx) | set(la.dynamic_idx) <= set(lp.on_idx) | set(lp.dynamic_idx)


def test_closing_is_idempotent_and_touches_only_the_gates(trained_net):
    net = copy.deepcopy(trained_net)
    calib, _ = sample_images("synthetic", True, 8, n_synthetic=64, seed=1)
    pattern = deploy(net, calib)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    close_decided(net, pattern)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    changed = [k for k, v in trained_net.state_dict().items()
               if not torch.equal(v, before[k])]
    assert changed and all(k.endswith("gate.fc2.bias") for k in changed)


def test_balanced_samples_see_every_class_even_from_a_sorted_split():
    labels = torch.arange(10).repeat_interleave(400)  # sorted by class, like mnist5k's split
    idx = balanced_indices(labels, 1024, seed=0)
    counts = class_counts(labels[idx])
    assert len(idx) == 1024 == len(set(idx.tolist())) and len(counts) == 10
    assert max(counts.values()) / min(counts.values()) <= 1.5
    assert balanced_indices(labels, 1024, seed=0).equal(idx)  # fixed
    few = torch.tensor([0] * 3 + [1] * 50)  # a class runs out: the rest come from the others
    assert class_counts(few[balanced_indices(few, 20)]) == {"0": 3, "1": 17}


def _spread_width_net():
    from hwbench.nets import create_net

    torch.manual_seed(2)
    net = create_net("resnet18", stem="cifar", gate="width:16").eval()
    random_gate_heads(net, spread=2.0)
    return net


def test_a_deployed_width_gated_network_keeps_its_decided_prefix_and_suffix():
    net = _spread_width_net()
    calib, _ = sample_images("synthetic", True, 2, n_synthetic=64, seed=0)  # few: a narrow range
    x = held_out(48)
    pattern = deploy(net, calib)
    assert pattern.gate.kind == "width"
    after = summarise(net, [x])
    for lp, la in zip(pattern.layers, after.layers):
        assert la.always_on >= lp.always_on  # the decided prefix is on for every input
        assert la.always_off >= lp.always_off  # the decided suffix off for every input
    raw = summarise(_spread_width_net(), [x])  # undeployed, the held-out inputs go beyond
    assert any(r.always_on < lp.always_on or r.always_off < lp.always_off
               for r, lp in zip(raw.layers, pattern.layers))


def test_width_gates_refuse_to_fix_a_middle_or_partial_group():
    from hwbench.deploy.network import OFF_BIAS, ON_BIAS, set_channels

    net = _spread_width_net()  # layer1.0: 64 channels, 4 groups of 16
    with pytest.raises(ValueError, match="whole groups"):
        set_channels(net, 0, list(range(16, 32)), OFF_BIAS)  # a middle group off
    with pytest.raises(ValueError, match="whole groups"):
        set_channels(net, 0, list(range(16, 32)), ON_BIAS)  # on, but not from the first
    with pytest.raises(ValueError, match="whole groups"):
        set_channels(net, 0, list(range(40, 64)), OFF_BIAS)  # half a group
    set_channels(net, 0, list(range(32, 64)), OFF_BIAS)
    set_channels(net, 0, list(range(16)), ON_BIAS)
    bias = [b for _, b in net.blocks()][0].gate.fc2.bias
    assert bias.tolist() == [ON_BIAS, pytest.approx(2.0 / 3.0), OFF_BIAS, OFF_BIAS]
