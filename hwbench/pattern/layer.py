"""One gated block of a gate pattern (``LayerPattern``), and the pattern's part of each gate
kind (``nets.gate.strategy``): how a kind's layers are read from a file, summarised from a
network's masks, and synthesised for a budget.

Subset decisions (channel gates): the counts, indices and per-channel rates are the truth.
Prefix decisions (width gates, step G): the histogram of kept widths is the truth; the counts
are derived from it (always-on: the narrowest width any input keeps; always-off: past the
widest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hwbench.nets.gate import PREFIX, SUBSET, GateSpec, kind_texts, strategy


def round_to_tile(k: int, tile: int, channels: int | None = None) -> int:
    """``k`` kept channels rounded UP to a multiple of ``tile`` (0 stays 0); capped at
    ``channels`` when given (a pattern cannot keep more channels than a block has)."""
    up = -(-k // tile) * tile
    return up if channels is None else min(up, channels)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class LayerPattern:
    """One gated block. ``dynamic_on_rate``: mean fraction of its dynamic channels on per sample."""

    name: str
    channels: int
    always_on: int
    always_off: int
    dynamic: int
    dynamic_on_rate: float = 0.0
    on_idx: list[int] | None = None
    dynamic_idx: list[int] | None = None
    dynamic_rates: list[float] | None = None
    # width gates: width_hist[k] = share of inputs keeping channels [0, k * step) (sums to 1)
    width_hist: list[float] | None = None
    step: int = 1

    @classmethod
    def from_width_hist(cls, name: str, channels: int, step: int,
                        hist: list[float]) -> LayerPattern:
        """A width-gated layer from its histogram of kept groups: channels every input keeps
        are always on, those no input keeps always off, the prefix between them dynamic."""
        total = float(sum(hist))
        hist = [float(h) / (total if abs(total - 1.0) > 1e-9 else 1.0) for h in hist]
        ks = [k for k, h in enumerate(hist) if h > 0]
        on, top = ks[0] * step, ks[-1] * step
        mean = sum(h * k * step for k, h in enumerate(hist))
        dyn = top - on
        return cls(name, channels, on, channels - top, dyn, (mean - on) / dyn if dyn else 0.0,
                   width_hist=hist, step=step)

    def widths(self) -> list[tuple[int, float]]:
        """(kept channels, share of inputs) for each width that occurs (width gates only)."""
        return [(k * self.step, h) for k, h in enumerate(self.width_hist or []) if h > 0]

    def expected_on(self) -> float:
        """E[channels on] per sample."""
        if self.width_hist is not None:
            return float(sum(w * h for w, h in self.widths()))
        if self.dynamic_rates is not None:
            return self.always_on + float(sum(self.dynamic_rates))
        return self.always_on + self.dynamic * self.dynamic_on_rate

    def expected_on_sq(self) -> float:
        """E[(channels on)^2] per sample: exact from a width histogram; else dynamic channels
        taken as independent Bernoullis."""
        if self.width_hist is not None:
            return float(sum(w * w * h for w, h in self.widths()))
        if self.dynamic_rates is not None:
            var = float(sum(r * (1.0 - r) for r in self.dynamic_rates))
        else:
            var = self.dynamic * self.dynamic_on_rate * (1.0 - self.dynamic_on_rate)
        return self.expected_on() ** 2 + var

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "channels": self.channels, "always_on": self.always_on,
            "always_off": self.always_off, "dynamic": self.dynamic,
            "dynamic_on_rate": self.dynamic_on_rate,
        }
        for key in ("on_idx", "dynamic_idx", "dynamic_rates", "width_hist"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


class SubsetLayers:
    """Channel gates: a layer is its counts (and optionally its indices and rates)."""

    def parse(self, layers: list[LayerPattern], raw: list[dict], step: int,
              fail) -> list[LayerPattern]:
        """The file's layers, checked for this kind (``fail``: the loader's one-line error)."""
        if any("width_hist" in r for r in raw):
            fail("gate", f"width_hist needs \"gate\": {{\"kind\": K, \"step\": G}} with K:G "
                         f"one of {kind_texts(PREFIX)}")
        return layers

    def check(self, layers: list[LayerPattern]) -> None:
        """A pattern's layers agree with its gate kind: no histogram of widths here (the
        strategies of every stage read a pattern by its kind, not layer by layer)."""
        if any(lp.width_hist is not None for lp in layers):
            raise ValueError("a layer with width_hist in a pattern whose gate keeps any subset")

    def width_counts(self, masks: list[torch.Tensor], step: int) -> list[torch.Tensor] | None:
        """Per block, how many inputs of a batch keep each width: none to count."""
        return None

    def summarised(self, layers: list[LayerPattern], hists, n: int,
                   step: int) -> list[LayerPattern]:
        """The summary's layers from per-channel counts (``layers``) and ``width_counts``."""
        return layers

    def padded(self, lp: LayerPattern, channels: int) -> LayerPattern:
        """A thinner network's layer as one of the full network's: the channels it lacks
        (the suffix past its width) always off, so the pattern loads, prices and predicts for
        the arch's profile like any other."""
        return LayerPattern(lp.name, channels, lp.always_on,
                            channels - lp.always_on - lp.dynamic, lp.dynamic,
                            lp.dynamic_on_rate, lp.on_idx, lp.dynamic_idx, lp.dynamic_rates)

    def skipping_macs(self, block, lp: LayerPattern, tile: int) -> float:
        """Expected per-sample MACs a skipping executor runs for ``lp`` (``block``: its
        geometry): the always-on channels padded to ``tile`` plus the dynamic ones on."""
        extra = round_to_tile(lp.always_on, tile) - lp.always_on
        on = lp.expected_on()
        return float(block.gated_macs(on + extra,
                                      lp.expected_on_sq() + 2 * extra * on + extra ** 2))

    def static(self, name: str, channels: int, k: int, step: int) -> LayerPattern:
        """A layer with ``k`` channels always on, the rest always off."""
        return LayerPattern(name, channels, k, channels - k, 0, 0.0)

    def mixed(self, name: str, channels: int, a: int, d: int, r: float,
              step: int) -> LayerPattern:
        """``a`` groups always on, ``d`` dynamic at on-rate ``r``, the rest off."""
        return LayerPattern(name, channels, a, channels - a - d, d, round(r, 4))


class PrefixLayers(SubsetLayers):
    """Width gates: a layer is its histogram of kept widths."""

    def parse(self, layers: list[LayerPattern], raw: list[dict], step: int,
              fail) -> list[LayerPattern]:
        return [_width_layer(lp, r, i, step, fail)
                for i, (lp, r) in enumerate(zip(layers, raw))]

    def check(self, layers: list[LayerPattern]) -> None:
        """Every layer holds its histogram of kept widths (the truth for a prefix kind)."""
        if any(lp.width_hist is None for lp in layers):
            raise ValueError("a layer without width_hist in a pattern whose gate keeps a prefix")

    def width_counts(self, masks: list[torch.Tensor], step: int) -> list[torch.Tensor] | None:
        return [torch.bincount((m.sum(dim=1) / step).round().long().cpu(),
                               minlength=m.shape[1] // step + 1).double() for m in masks]

    def summarised(self, layers: list[LayerPattern], hists, n: int,
                   step: int) -> list[LayerPattern]:
        return [LayerPattern.from_width_hist(lp.name, lp.channels, step, (h / n).tolist())
                for lp, h in zip(layers, hists)]

    def padded(self, lp: LayerPattern, channels: int) -> LayerPattern:
        hist = lp.width_hist + [0.0] * ((channels - lp.channels) // lp.step)
        return LayerPattern.from_width_hist(lp.name, channels, lp.step, hist)

    def skipping_macs(self, block, lp: LayerPattern, tile: int) -> float:
        """Each width padded to ``tile``, weighted by its share of inputs."""
        return float(sum(h * block.gated_macs(round_to_tile(w, tile)) for w, h in lp.widths()))

    def static(self, name: str, channels: int, k: int, step: int) -> LayerPattern:
        """Every input keeps the one width ``k``."""
        return LayerPattern.from_width_hist(
            name, channels, step, [float(j == k // step) for j in range(channels // step + 1)])

    def mixed(self, name: str, channels: int, a: int, d: int, r: float,
              step: int) -> LayerPattern:
        """An input keeps ``a`` + Binomial(``d``, ``r``) groups."""
        pmf = [math.comb(d, j) * r ** j * (1 - r) ** (d - j) for j in range(d + 1)]
        return LayerPattern.from_width_hist(name, channels, step,
                                            [0.0] * a + pmf + [0.0] * (channels // step - a - d))


PATTERN = {SUBSET: SubsetLayers(), PREFIX: PrefixLayers()}


def pattern_kind(spec: GateSpec) -> SubsetLayers:
    """The pattern's strategy for ``spec``'s gate kind."""
    return strategy(PATTERN, spec, "a gate pattern")


def _width_layer(lp: LayerPattern, raw: dict, i: int, step: int, fail) -> LayerPattern:
    """A width-gated layer: its histogram is the truth; the counts must agree with it."""
    at = f"layers[{i}]"
    hist, n = raw.get("width_hist"), lp.channels // step
    if (not isinstance(hist, list) or len(hist) != n + 1
            or not all(is_num(h) and h >= 0 for h in hist)
            or abs(sum(hist) - 1.0) > 1e-6):
        fail(f"{at}.width_hist", f"expected {n + 1} shares (inputs keeping 0, {step}, ... "
                                 f"{lp.channels} channels) summing to 1")
    want = LayerPattern.from_width_hist(lp.name, lp.channels, step, hist)
    got = (lp.always_on, lp.always_off, lp.dynamic)
    if got != (want.always_on, want.always_off, want.dynamic):
        fail(f"{at}.always_on", f"always_on/always_off/dynamic {got} disagree with width_hist "
                                f"{(want.always_on, want.always_off, want.dynamic)}")
    for key, lo in (("on_idx", 0), ("dynamic_idx", want.always_on)):
        idx = getattr(lp, key)
        if idx is not None and idx != list(range(lo, lo + len(idx))):
            fail(f"{at}.{key}", "a width gate keeps a prefix: expected consecutive indices")
    return want
