import pytest
import torch
from ptflops import get_model_complexity_info
from torch import nn

from hwbench.nets import create_net, list_nets
from hwbench.nets.gate import parse_gate
from hwbench.nets.geometry import net_geometry
from hwbench.pattern.gate_pattern import synthesise
from hwbench.pattern.macs import dense_report, format_macs, pattern_macs, pattern_report


class _Stream(nn.Module):
    def __init__(self, net, stream):
        super().__init__()
        self.net, self.stream = net, stream

    def forward(self, x):
        return self.net(x, stream=self.stream)


def ptflops_macs(net, size, stream="dense") -> int:
    macs, _ = get_model_complexity_info(
        _Stream(net.eval(), stream), (3, size, size), as_strings=False, backend="aten",
        print_per_layer_stat=False, verbose=False)
    return int(macs)


@pytest.mark.parametrize("stem,size,exact,paper", [
    ("cifar", 32, 703_560_448, 7.03e8),
    ("imagenet", 96, 333_103_104, 3.33e8),
    ("imagenet", 224, 1_813_561_344, 1.81e9),
])
def test_dense_resnet18_macs_are_exact_and_match_the_papers_table(stem, size, exact, paper):
    macs = dense_report("resnet18", stem, size).dense_macs
    assert macs == exact
    # Table 1 prints three significant digits, truncated (703.56M appears as 7.03E8).
    scale = 10 ** (len(str(macs)) - 3)
    assert (macs // scale) * scale == paper


def test_cifar_stem_is_the_references_padding_2():
    g = net_geometry("resnet18", "cifar", 32)
    assert g.stem_macs == 9 * 3 * 64 * 34 * 34
    assert [b.out_hw for b in g.blocks[::2]] == [(34, 34), (17, 17), (9, 9), (5, 5)]


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 96)])
def test_dense_macs_agree_with_ptflops(name, stem, size):
    ours = net_geometry(name, stem, size).dense_macs()
    theirs = ptflops_macs(create_net(name, stem=stem), size)
    assert abs(theirs - ours) / ours < 0.01


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("t_d", [0.3, 0.5])
def test_pattern_macs_agree_with_ptflops_on_the_slimmed_network(name, t_d):
    pattern = synthesise(name, "cifar", 32, t_d)
    slim = create_net(name, stem="cifar", widths=pattern.kept_channels())
    theirs = ptflops_macs(slim, 32, stream="gated")  # convs at slim widths + the gates
    ours = pattern_macs(pattern)
    assert abs(theirs - ours) / ours < 0.01


def test_gated_forward_macs_agree_with_ptflops_on_the_per_sample_slimmed_network():
    torch.manual_seed(4)
    net = create_net("resnet18", stem="cifar").eval()  # random gates: about half on
    x = torch.randn(2, 3, 32, 32)
    out = net.forward_gated(x)
    for i in range(2):
        widths = [int(m[i].sum()) for m in out.masks]
        assert all(0 < w < m.shape[1] for w, m in zip(widths, out.masks))
        theirs = ptflops_macs(create_net("resnet18", stem="cifar", widths=widths), 32)
        gates = sum(b.gate_macs() for b in net.geometry((32, 32)).blocks)
        assert abs(theirs + gates - out.macs[i].item()) / out.macs[i].item() < 0.01


def test_pattern_expected_macs_count_dynamic_channels_at_their_rate():
    pattern = synthesise("resnet18", "cifar", 32, 0.5)
    g = pattern.geometry()
    for lp in pattern.layers:
        lp.always_on, lp.dynamic, lp.always_off = 10, 20, lp.channels - 30
        lp.dynamic_on_rate = 0.25
    expected = g.stem_macs + sum(b.gated_macs(15) for b in g.blocks)
    assert pattern_macs(pattern) == expected


def test_bottleneck_expectation_includes_the_variance_of_the_3x3_term():
    pattern = synthesise("resnet50", "cifar", 32, 0.5)
    g = pattern.geometry()
    for lp in pattern.layers:
        lp.always_on, lp.dynamic, lp.always_off = 4, 8, lp.channels - 12
        lp.dynamic_on_rate = 0.5
    # on = 4 + Binomial(8, 0.5): E[on] = 8, E[on^2] = 64 + 2 = 66.
    expected = g.stem_macs + sum(b.gated_macs(8, 66) for b in g.blocks)
    assert pattern_macs(pattern) == pytest.approx(expected, rel=1e-12)


def test_report_layers_and_ratio():
    report = pattern_report(synthesise("resnet18", "cifar", 32, 0.3))
    assert [lm.name for lm in report.layers][:2] == ["layer1.0", "layer1.1"]
    assert report.ratio == pytest.approx(report.gated_macs / report.dense_macs)
    d = report.to_dict()
    assert d["unit"] == "MACs" and {"dense_macs", "gated_macs", "ratio", "layers"} <= set(d)


def test_format_macs():
    assert format_macs(703_560_448) == "703.56M"
    assert format_macs(1_813_561_344) == "1.81G"
    assert format_macs(2048) == "2.05K"


def _slim_macs(name: str, widths: list[int], step: int) -> int:
    """ptflops' MACs of the dense stream slimmed to ``widths``, plus the width gates' own MACs
    (in_ch * hidden + hidden * groups; the gated stream masks at full width, so ptflops cannot
    see the skipping there)."""
    g = net_geometry(name, "cifar", 32, gate_step=step)
    gates = sum(b.in_channels * b.gate_hidden + b.gate_hidden * (b.width // step)
                for b in g.blocks)
    return ptflops_macs(create_net(name, stem="cifar", widths=widths), 32) + gates


def test_width_pattern_macs_are_exact_at_every_width_and_for_a_mixture():
    from hwbench.pattern.gate_pattern import GatePattern, LayerPattern

    geom = net_geometry("resnet18", "cifar", 32)

    def pattern(hists):
        layers = [LayerPattern.from_width_hist(b.name, b.width, 16, h)
                  for b, h in zip(geom.blocks, hists)]
        return GatePattern("resnet18", "cifar", 32, layers, gate=parse_gate("width:16"))

    def one_hot(n, k):
        return [float(j == k) for j in range(n + 1)]

    ns = [b.width // 16 for b in geom.blocks]
    lo = [max(1, n // 4) for n in ns]  # two widths per block, different per block
    hi = [n - 1 for n in ns]
    macs_lo = _slim_macs("resnet18", [16 * k for k in lo], 16)
    macs_hi = _slim_macs("resnet18", [16 * k for k in hi], 16)
    assert pattern_macs(pattern([one_hot(n, k) for n, k in zip(ns, lo)])) == macs_lo
    assert pattern_macs(pattern([one_hot(n, k) for n, k in zip(ns, hi)])) == macs_hi
    mix = pattern([[0.3 * (j == a) + 0.7 * (j == b) for j in range(n + 1)]
                   for n, a, b in zip(ns, lo, hi)])
    assert pattern_macs(mix) == pytest.approx(0.3 * macs_lo + 0.7 * macs_hi, rel=1e-12)


def test_width_gated_forward_macs_count_the_smaller_gate():
    torch.manual_seed(5)
    net = create_net("resnet18", stem="cifar", gate="width:16").eval()
    with torch.no_grad():
        for _, block in net.blocks():  # random biases: widths vary; the first group on
            block.gate.fc2.bias.normal_()
            block.gate.fc2.bias[0] = 1e3
    out = net.forward_gated(torch.randn(2, 3, 32, 32))
    for i in range(2):
        widths = [int(m[i].sum()) for m in out.masks]
        assert any(w < m.shape[1] for w, m in zip(widths, out.masks))
        assert out.macs[i].item() == _slim_macs("resnet18", widths, 16)
