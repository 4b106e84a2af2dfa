"""Width-gated networks in the engine: every mode computes what the eager gated stream computes,
the dynamic one running each input at its own width; ``realise`` reproduces width histograms."""

import pytest
import torch

from hwbench.engine import (
    WIDTH_BATCH_STRATEGY,
    build_engine,
    mkldnn_available,
    pattern_inputs,
    realise,
)
from hwbench.errors import UsageError
from hwbench.nets import create_net
from hwbench.pattern.gate_pattern import mixed_pattern, summarise, synthesise
from tests.conftest import random_gate_heads

BACKENDS = ["aten"] + (["mkldnn"] if mkldnn_available() else [])
TOL = 1e-4
SIZE = 16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def digits(n: int) -> torch.Tensor:
    """Real images: sklearn's 8x8 digits, upscaled to 16 px, 3 channels, standardised."""
    datasets = pytest.importorskip("sklearn.datasets")
    x = torch.tensor(datasets.load_digits().images[:n], dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear")
    return ((x - x.mean()) / x.std()).expand(-1, 3, -1, -1).contiguous()


def kept_widths(net, x) -> list[torch.Tensor]:
    """Per block, (B,) channels each input keeps, from the eager gated stream."""
    return [m.sum(dim=1).long() for m in net.eval().forward_gated(x).masks]


def check_width_modes(net, pattern, x, backend) -> None:
    eager = net.eval().forward_features(x, "gated")
    masked = build_engine(net, "masked", pattern, backend=backend)(x)
    assert rel_err(masked, eager) <= TOL
    static = build_engine(net, "static", pattern, backend=backend)
    dynamic = build_engine(net, "dynamic", pattern, backend=backend)
    assert dynamic.plan == ["width" if lp.dynamic else "static" for lp in pattern.layers]
    assert dynamic.batch_strategy == WIDTH_BATCH_STRATEGY
    assert rel_err(static(x), masked) <= TOL
    assert rel_err(dynamic(x), masked) <= TOL  # batch > 1: grouped by width, scattered back
    for i in range(x.shape[0]):  # batch 1: each input at its own width
        assert rel_err(dynamic(x[i:i + 1]), masked[i:i + 1]) <= TOL, i


@pytest.fixture(scope="module")
def realised():
    p = mixed_pattern("resnet18", "cifar", SIZE, 0.5, seed=2, gate="width:16")
    return p, realise(p, seed=1, calibration=32)


@pytest.mark.slow
def test_realise_reproduces_width_histograms_on_its_calibration_inputs():
    p = mixed_pattern("resnet18", "cifar", SIZE, 0.4, seed=4, gate="width:16")
    n = 40
    net = realise(p, seed=0, calibration=n)
    got = summarise(net, [pattern_inputs(n, SIZE, seed=1)])  # realise's calibration inputs
    for want, have in zip(p.layers, got.layers):
        assert len(have.width_hist) == len(want.width_hist)
        assert max(abs(a - b) for a, b in zip(want.width_hist, have.width_hist)) <= 1 / n + 1e-9
    assert any(len(lp.widths()) > 2 for lp in got.layers)  # not a trivial pattern


@pytest.mark.parametrize("backend", BACKENDS)
def test_width_modes_agree_on_a_realised_net_at_batch_1_and_mixed_batches(realised, backend):
    p, net = realised
    x = pattern_inputs(6, SIZE, seed=11)
    assert max(len(w.unique()) for w in kept_widths(net, x)) >= 3  # the batch mixes widths
    check_width_modes(net, p, x, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_width_modes_agree_on_real_images(realised, backend):
    p, net = realised
    x = digits(6)
    assert max(len(w.unique()) for w in kept_widths(net, x)) >= 2
    check_width_modes(net, p, x, backend)


@pytest.mark.slow
def test_width_bottleneck_modes_agree():
    p = mixed_pattern("resnet50", "cifar", SIZE, 0.5, seed=3, gate="width:16")
    net = realise(p, seed=2, calibration=16)
    x = pattern_inputs(4, SIZE, seed=5)
    assert max(len(w.unique()) for w in kept_widths(net, x)) >= 2
    check_width_modes(net, p, x, BACKENDS[-1])


def test_width_engine_matches_a_random_width_net_summarised_on_its_inputs():
    """A trained-like case: random weights (no realise), the pattern summarised on the inputs."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        net = create_net("resnet18", stem="cifar", gate="width:16").eval()
        random_gate_heads(net, spread=2.0)
    x = digits(8)
    p = summarise(net, [x])
    assert any(lp.dynamic for lp in p.layers)
    check_width_modes(net, p, x, BACKENDS[-1])


def test_width_engine_counts_and_packs_lazily(realised):
    p, net = realised
    x = pattern_inputs(5, SIZE, seed=21)
    engine = build_engine(net, "dynamic", p)
    blk = engine.blocks[-1]
    assert set(blk.packs) == {w for w, _ in p.layers[-1].widths()}  # the support, pre-packed
    blk.packs.clear()  # any width not packed yet is packed on first use and cached
    engine.count_executed(True)
    for i in range(5):
        out = engine(x[i:i + 1])
        assert rel_err(out, build_engine(net, "masked", p)(x[i:i + 1])) <= TOL
    executed = engine.count_executed(False)
    widths = kept_widths(net, x)
    assert set(blk.packs) == set(widths[-1].tolist())
    for lp, w, n in zip(p.layers, widths, executed):
        assert n == int((w - lp.always_on).sum())  # channels run past always-on, per input
    assert sum(executed) < 5 * sum(lp.dynamic for lp in p.layers)  # some were skipped


@pytest.mark.slow
def test_width_engine_policy_static_and_gate_mismatch(realised):
    p, net = realised
    assert set(build_engine(net, "dynamic", p, dynamic_policy="static").plan) == {"static"}
    x = pattern_inputs(4, SIZE, seed=31)
    masked = build_engine(net, "masked", p)(x)
    tuned = build_engine(net, "dynamic", p, batch_size=4, tune_inputs=x)  # width or static
    assert set(tuned.plan) <= {"width", "static"} and rel_err(tuned(x), masked) <= TOL
    forced = build_engine(net, "dynamic", p, batch_size=4, dynamic_policy="width")
    assert forced.plan == ["width" if lp.dynamic else "static" for lp in p.layers]
    with pytest.raises(UsageError, match="pattern gates are"):
        build_engine(net, "static", synthesise("resnet18", "cifar", SIZE, 0.5))
