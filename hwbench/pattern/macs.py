"""Exact MACs (multiply-accumulates) of dense and gated networks and of gate patterns.

Conventions are in ``hwbench.nets.geometry``: convs only (stem, blocks, downsample), gates counted
in the gated network, BN/ReLU/pooling/head not counted. 1 MAC = 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hwbench.nets.geometry import net_geometry
from hwbench.pattern.gate_pattern import GatePattern

UNIT = "MACs"


@dataclass
class LayerMacs:
    name: str
    channels: int
    expected_on: float  # channels on per sample (expected, for dynamic channels)
    dense_macs: int
    macs: float  # the dense stream's, or the gated stream's (convs + gate) with a pattern
    gate_macs: int

    @property
    def pct_of_dense(self) -> float:
        return 100.0 * self.macs / self.dense_macs


@dataclass
class MacsReport:
    arch: str
    stem: str
    input_size: int
    stem_macs: int
    dense_macs: int
    layers: list[LayerMacs]
    gated_macs: float | None = None  # expected per-sample MACs of the pattern
    t_d: float | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.gated_macs is None else self.gated_macs / self.dense_macs

    def to_dict(self) -> dict:
        d = {"unit": UNIT, "arch": self.arch, "stem": self.stem, "input_size": self.input_size,
             "stem_macs": self.stem_macs, "dense_macs": self.dense_macs}
        if self.gated_macs is not None:
            d.update(gated_macs=self.gated_macs, ratio=self.ratio, t_d=self.t_d)
        d["layers"] = [{**asdict(lm), "pct_of_dense": lm.pct_of_dense} for lm in self.layers]
        return d


def dense_report(arch: str, stem: str, input_size: int) -> MacsReport:
    """Per-layer MACs of the dense stream."""
    g = net_geometry(arch, stem, input_size)
    layers = [LayerMacs(b.name, b.width, float(b.width), b.dense_macs(), float(b.dense_macs()),
                        0) for b in g.blocks]
    return MacsReport(arch, stem, input_size, g.stem_macs, g.dense_macs(), layers)


def pattern_macs(pattern: GatePattern) -> float:
    """Expected per-sample MACs of the gated network realising ``pattern`` (gates included)."""
    return pattern_report(pattern).gated_macs


def pattern_report(pattern: GatePattern) -> MacsReport:
    """Per-layer expected MACs of a pattern: always-on channels count fully, dynamic ones at their
    on-rate (and, for a Bottleneck's on^2 term, with their Bernoulli variance)."""
    g = pattern.geometry()
    layers = [LayerMacs(b.name, b.width, lp.expected_on(), b.dense_macs(), macs, b.gate_macs())
              for b, lp, macs in zip(g.blocks, pattern.layers, pattern.layer_macs())]
    gated = g.stem_macs + sum(lm.macs for lm in layers)
    return MacsReport(pattern.arch, pattern.stem, pattern.input_size, g.stem_macs,
                      g.dense_macs(), layers, gated, pattern.t_d)


def format_macs(n: float) -> str:
    """703560448 -> '703.56M' (MACs)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"
