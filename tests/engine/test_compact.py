"""Every execution mode computes what the paper's masked execution computes (fp32, rel <= 1e-4)."""

import pytest
import torch

from hwbench.engine import MODES, build_engine, channel_groups, mkldnn_available, realise
from hwbench.engine.realise import pattern_inputs
from hwbench.errors import UsageError
from hwbench.nets import create_net, list_nets
from hwbench.pattern.gate_pattern import LayerPattern, mixed_pattern, synthesise

BACKENDS = ["aten"] + (["mkldnn"] if mkldnn_available() else [])
TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def edge_pattern(arch, stem, size):
    """Layer 0: all channels off; layer 1: all on; layer 2: a single channel on;
    layer 3: a single dynamic channel; the rest mixed."""
    p = mixed_pattern(arch, stem, size, 0.4, seed=3)
    c = [lp.channels for lp in p.layers]
    p.layers[0] = LayerPattern(p.layers[0].name, c[0], 0, c[0], 0)
    p.layers[1] = LayerPattern(p.layers[1].name, c[1], c[1], 0, 0)
    p.layers[2] = LayerPattern(p.layers[2].name, c[2], 1, c[2] - 1, 0)
    p.layers[3] = LayerPattern(p.layers[3].name, c[3], 0, c[3] - 1, 1, 0.5)
    return p


def check_modes(pattern, backend, batch=3, policies=("gather-conv", "gather-gemm", "static"),
                shared_downsample_bn=True):
    net = realise(pattern, seed=1, shared_downsample_bn=shared_downsample_bn)
    x = pattern_inputs(batch, pattern.input_size, seed=11)
    masked = build_engine(net, "masked", pattern, backend=backend)(x)
    eager = net(x, stream="gated")
    assert rel_err(masked, eager) <= TOL  # BN folding changes rounding only
    for mode in ("static", "dynamic"):
        for policy in (policies if mode == "dynamic" else ("auto",)):
            engine = build_engine(net, mode, pattern, backend=backend, dynamic_policy=policy)
            assert rel_err(engine(x), masked) <= TOL, (mode, policy)
            for i in range(batch):  # batch 1: the per-sample path
                assert rel_err(engine(x[i:i + 1]), masked[i:i + 1]) <= TOL, (mode, policy, i)
    dense = build_engine(net, "dense", backend=backend)(x)
    assert rel_err(dense, net(x, stream="dense")) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 64)])
def test_modes_equal_masked_on_mixed_patterns(backend, name, stem, size):
    check_modes(mixed_pattern(name, stem, size, 0.3, seed=2), backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list_nets())
def test_modes_equal_masked_on_edge_cases(backend, name):
    check_modes(edge_pattern(name, "cifar", 32), backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list_nets())
def test_modes_equal_masked_with_a_downsample_bn_per_stream(backend, name):
    # the architecture of checkpoints written before issue 15 (--separate-downsample-bn)
    pattern = mixed_pattern(name, "cifar", 32, 0.3, seed=4)
    net = realise(pattern, seed=1, shared_downsample_bn=False)
    assert not net.shared_downsample_bn
    check_modes(pattern, backend, shared_downsample_bn=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_modes_equal_masked_without_dynamic_channels(backend):
    check_modes(synthesise("resnet18", "imagenet", 64, 0.5), backend, batch=2)


@pytest.mark.slow
def test_auto_policy_records_a_plan_and_stays_exact():
    p = mixed_pattern("resnet18", "cifar", 32, 0.3, seed=2)
    net = realise(p)
    engine = build_engine(net, "dynamic", p)
    assert len(engine.plan) == 8
    assert set(engine.plan) <= {"static", "gather-conv", "gather-gemm"}
    x = pattern_inputs(2, 32, seed=5)
    assert rel_err(engine(x), build_engine(net, "masked", p)(x)) <= TOL


@pytest.mark.slow
def test_dynamic_mode_really_skips_off_channels():
    p = mixed_pattern("resnet18", "cifar", 32, 0.3, seed=2)
    net = realise(p)
    engine = build_engine(net, "dynamic", p, dynamic_policy="gather-conv")
    x = pattern_inputs(8, 32, seed=5)
    engine.count_executed(True)
    for i in range(8):
        engine(x[i:i + 1])
    executed = engine.count_executed(False)
    masks = net.eval().forward_gated(x).masks
    for lp, g, m, n in zip(p.layers, channel_groups(p), masks, executed):
        assert n == int(m[:, g.dyn].sum())  # exactly the dynamic channels that were on
        assert n < 8 * lp.dynamic


@pytest.mark.slow
def test_static_engine_drops_always_off_weights():
    p = synthesise("resnet18", "cifar", 32, 0.3)
    engine = build_engine(realise(p), "static", p, backend="aten")
    for blk, lp in zip(engine.blocks, p.layers):
        assert blk.conv1.weight.shape[0] == lp.always_on
        assert blk.conv2.weight.shape[1] == lp.always_on


def test_engine_errors():
    p = synthesise("resnet18", "cifar", 32, 0.3)
    net = create_net("resnet18")
    with pytest.raises(UsageError, match="unknown mode"):
        build_engine(net, "sparse", p)
    with pytest.raises(UsageError, match="needs a gate pattern"):
        build_engine(net, "static")
    with pytest.raises(UsageError, match="pattern is for"):
        build_engine(create_net("resnet34"), "static", p)
    with pytest.raises(UsageError, match="backend"):
        build_engine(net, "dense", backend="tpu")
    with pytest.raises(UsageError, match="dynamic policy"):
        build_engine(net, "dynamic", p, dynamic_policy="fast")


def test_modes_constant():
    assert MODES == ("dense", "masked", "static", "dynamic")
