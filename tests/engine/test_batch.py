"""Large-batch execution (issue 16): tensor-core tile padding is exact and counted, weights are
channels-last where cuDNN wants them, width blocks run samples sorted by width."""

import pytest
import torch

from hwbench.engine import (
    build_engine,
    compact,
    executors,
    mkldnn_available,
    pattern_inputs,
    realise,
    width,
)
from hwbench.engine.tiling import executed_macs
from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import mixed_pattern, round_to_tile
from hwbench.pattern.macs import pattern_report
from hwbench.profile.speedup import mode_macs

SIZE = 16
TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def untiled(arch: str, seed: int, gate: str = "channel"):
    """A mixed pattern whose kept counts are not multiples of 8 (so a tile of 8 pads)."""
    p = mixed_pattern(arch, "cifar", SIZE, 0.4, seed=seed, gate=gate)
    assert any(k % 8 for k in p.kept_channels()) or gate != "channel"
    return p, realise(p, seed=1, calibration=16)


@pytest.mark.parametrize("arch,backend", [("resnet18", "aten"), ("resnet50", "aten")] + (
    [("resnet18", "mkldnn")] if mkldnn_available() else []))
def test_tile_padding_is_exact_and_recorded(arch, backend):
    p, net = untiled(arch, seed=2)
    x = pattern_inputs(3, SIZE, seed=4)
    plain = build_engine(net, "static", p, backend=backend)
    tiled = build_engine(net, "static", p, backend=backend, tile=8)
    assert plain.tile == 1 and tiled.tile == 8
    assert plain.computed == plain.kept == p.kept_channels()
    assert tiled.computed == [round_to_tile(k, 8) for k in p.kept_channels()]
    assert tiled.computed != tiled.kept  # some block really was padded
    assert rel_err(tiled(x), plain(x)) <= TOL
    # the always-on part of the gather executors, padded the same way
    gather = build_engine(net, "dynamic", p, backend=backend, tile=8,
                          dynamic_policy="gather-conv")
    assert rel_err(gather(x), plain(x)) <= TOL


def test_pattern_tile_is_the_default_and_an_argument_overrides_it():
    p, net = untiled("resnet18", seed=2)
    p.tile = 16
    assert build_engine(net, "static", p, backend="aten").tile == 16
    assert build_engine(net, "static", p, backend="aten", tile=1).tile == 1
    with pytest.raises(UsageError, match="tile must be a positive integer"):
        build_engine(net, "static", p, tile=0)


def test_width_packs_are_padded_exactly():
    p, net = untiled("resnet18", seed=3, gate="width:16")
    x = pattern_inputs(5, SIZE, seed=6)
    ref = build_engine(net, "dynamic", p, backend="aten", dynamic_policy="width")(x)
    eng = build_engine(net, "dynamic", p, backend="aten", dynamic_policy="width", tile=32)
    odd = [(blk, w) for blk in eng.blocks if isinstance(blk, width.WidthBlock)
           for w in blk.packs if w % 32]
    assert odd  # some width is not a multiple of the tile ...
    for blk, w in odd:  # ... and runs padded
        assert blk.packs[w][0].weight.shape[0] == round_to_tile(w, 32)
    assert rel_err(eng(x), ref) <= TOL
    for i in range(2):
        assert rel_err(eng(x[i:i + 1]), ref[i:i + 1]) <= TOL


def test_executed_macs_count_the_padding():
    p, _ = untiled("resnet18", seed=2)
    assert executed_macs(p, "static") == pytest.approx(mode_macs(p)["static"])
    assert executed_macs(p, "dynamic") == pytest.approx(pattern_report(p).gated_macs)
    padded = executed_macs(p, "static", tile=8)
    assert padded > mode_macs(p)["static"]
    g = p.geometry()
    assert padded == pytest.approx(g.stem_macs + sum(
        b.gated_macs(k) for b, k in zip(g.blocks, p.kept_channels(tile=8))))
    # a dynamic engine whose plan keeps every block static executes what static does
    assert executed_macs(p, "dynamic", 8, ["static"] * 8) == pytest.approx(padded)


def test_aten_weights_channels_last_on_cuda_only(monkeypatch):
    p, net = untiled("resnet18", seed=2)
    x = pattern_inputs(2, SIZE, seed=8)
    plain = build_engine(net, "static", p, backend="aten")
    assert not plain.channels_last_weights  # CPU: plain layout
    monkeypatch.setattr(executors, "channels_last_weights", lambda backend, device: True)
    for mode in ("dense", "static"):
        eng = build_engine(net, mode, p, backend="aten", tile=8)
        assert eng.channels_last_weights
        conv = eng.blocks[1].conv1
        assert conv.packed.is_contiguous(memory_format=torch.channels_last)
        assert not conv.packed.is_contiguous()  # really NHWC, not a plain tensor
        h = eng._stem(x)
        for blk in eng.blocks:
            h = blk(h)
            assert h.is_contiguous(memory_format=torch.channels_last)  # activations stay NHWC
    assert rel_err(eng(x), plain(x)) <= TOL


@pytest.fixture(scope="module")
def width_net():
    p = mixed_pattern("resnet18", "cifar", SIZE, 0.5, seed=2, gate="width:16")
    return p, realise(p, seed=1, calibration=32)


def test_width_batches_sorted_by_width_equal_the_per_sample_engine(width_net, monkeypatch):
    p, net = width_net
    x = pattern_inputs(7, SIZE, seed=11)
    widths = [m.sum(dim=1).long() for m in net.eval().forward_gated(x).masks]
    assert max(len(w.unique()) for w in widths) >= 3  # samples of one batch differ in width
    eng = build_engine(net, "dynamic", p, backend="aten", dynamic_policy="width")
    one = torch.cat([eng(x[i:i + 1]) for i in range(7)])  # the per-sample reference
    assert rel_err(eng(x), one) <= TOL  # order composed across blocks, restored once
    perm = torch.tensor([6, 0, 5, 1, 4, 2, 3])
    assert rel_err(eng(x[perm]), one[perm]) <= TOL
    # forward_sorted: output i is sample order[i]'s, sorted by width
    blk = next(b for b in eng.blocks if isinstance(b, width.WidthBlock))
    i = eng.blocks.index(blk)
    h = eng._stem(x)
    for b in eng.blocks[:i]:
        h = b(h)
    y, order = blk.forward_sorted(h)
    assert order is not None and rel_err(y, blk(h)[order]) <= TOL
    w = widths[i][order]
    assert bool((w[1:] >= w[:-1]).all())
    monkeypatch.setattr(compact.CompactEngine, "unpermute_per_block", True)
    assert rel_err(eng(x), one) <= TOL


def test_width_batch_counts_from_one_host_read(width_net):
    p, net = width_net
    x = pattern_inputs(7, SIZE, seed=11)
    eng = build_engine(net, "dynamic", p, backend="aten", dynamic_policy="width")
    eng.count_executed(True)
    eng(x)
    counts = eng.count_executed(False)
    widths = [m.sum(dim=1).long() for m in net.eval().forward_gated(x).masks]
    want = [int((w - lp.always_on).sum()) for w, lp in zip(widths, p.layers) if lp.dynamic]
    assert counts == want
