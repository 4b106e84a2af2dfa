"""Gate patterns: which channels of each gated block are always on, always off, or data-dependent.

The file format (``hwbench/gate-pattern@1``) is fixed; every command that measures or trains
reads it. ``summarise`` turns a trained network into a pattern, ``synthesise`` makes the prior
pattern for a budget ``t_d`` before any training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwbench.errors import HwbenchError, PatternError, UsageError
from hwbench.io import atomic_write_json
from hwbench.nets.gate import CHANNEL, GATE_KINDS, GateSpec, kind_texts, parse_gate
from hwbench.nets.geometry import ARCHS, STEMS, NetGeometry, net_geometry
from hwbench.pattern.layer import LayerPattern, is_int, is_num, pattern_kind, round_to_tile

SCHEMA = "hwbench/gate-pattern@1"
_LAYER_INTS = ("channels", "always_on", "always_off", "dynamic")
_KNOWN_TOP = {"schema", "arch", "stem", "input_size", "t_d", "layers", "gate", "tile"}


def check_tile(tile: Any, where: str = "--tile") -> int:
    """The tensor-core tile: a positive integer (1 = no rounding); a one-line error otherwise."""
    if not is_int(tile) or tile < 1:
        raise UsageError(f"{where} must be a positive integer, got {tile!r}")
    return tile


@dataclass
class GatePattern:
    arch: str
    stem: str
    input_size: int
    layers: list[LayerPattern]
    t_d: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys: source, dataset
    gate: GateSpec = CHANNEL
    # tensor-core tile: engines round each block's kept channel count up to a multiple of it
    # (zero-weight padding); 1 = none (the CPU default), 8 suits bf16 tensor cores, 16 also fp16
    tile: int = 1

    def __post_init__(self) -> None:
        check_tile(self.tile, "tile")
        pattern_kind(self.gate).check(self.layers)

    def geometry(self) -> NetGeometry:
        return net_geometry(self.arch, self.stem, self.input_size, gate_step=self.gate.step)

    def layer_macs(self) -> list[float]:
        """Expected per-sample MACs of each gated block (convs + gate): always-on channels
        count fully, dynamic ones at their on-rate (a Bottleneck's on^2 term with its variance).
        ``hwbench.pattern.macs`` reports them; this is where they are computed."""
        return [float(b.gated_macs(lp.expected_on(), lp.expected_on_sq()))
                for b, lp in zip(self.geometry().blocks, self.layers)]

    def macs_ratio(self) -> float:
        """Expected gated MACs (stem and gates included) / dense MACs."""
        g = self.geometry()
        return (g.stem_macs + sum(self.layer_macs())) / g.dense_macs()

    def kept_channels(self, tile: int = 1) -> list[int]:
        """Per layer, the channels a static engine keeps (always-on + dynamic); with ``tile``
        the channels it computes (rounded up to a multiple of ``tile``: padding included)."""
        return [round_to_tile(lp.always_on + lp.dynamic, tile) for lp in self.layers]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "arch": self.arch, "stem": self.stem,
                             "input_size": self.input_size}
        if self.t_d is not None:
            d["t_d"] = self.t_d
        if self.gate != CHANNEL:  # the default gate is not written
            d["gate"] = self.gate.to_dict()
        if self.tile != 1:
            d["tile"] = self.tile
        d.update(self.extra)
        d["layers"] = [lp.to_dict() for lp in self.layers]
        return d

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file + rename)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> GatePattern:
        return load_pattern(path)

    @classmethod
    def from_dict(cls, obj: Any, source: str = "<pattern>") -> GatePattern:
        return _parse(obj, source)


def load_pattern(path: str | Path) -> GatePattern:
    """Read and validate a pattern file; every problem is a one-line ``PatternError``."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PatternError(src, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PatternError(src, None, f"cannot read: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PatternError(src, None, f"not valid JSON ({exc.msg} at line {exc.lineno}, "
                                      f"column {exc.colno})") from None
    return _parse(obj, src)


def _parse(obj: Any, src: str) -> GatePattern:
    def fail(fld: str | None, msg: str):
        raise PatternError(src, fld, msg)

    if not isinstance(obj, dict):
        fail(None, "expected a JSON object at the top level")
    if obj.get("schema") != SCHEMA:
        fail("schema", f"expected {SCHEMA!r}, got {obj.get('schema')!r}")
    arch, stem, size = obj.get("arch"), obj.get("stem"), obj.get("input_size")
    if arch not in ARCHS:
        fail("arch", f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
    if stem not in STEMS:
        fail("stem", f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    if not is_int(size) or size < 1:
        fail("input_size", f"expected a positive integer, got {size!r}")
    t_d = obj.get("t_d")
    if t_d is not None and (not is_num(t_d) or not 0 < t_d <= 1):
        fail("t_d", f"expected a number in (0, 1], got {t_d!r}")
    try:
        geom = net_geometry(arch, stem, size)
    except HwbenchError as exc:
        fail("input_size", str(exc))
    layers_raw = obj.get("layers")
    if not isinstance(layers_raw, list):
        fail("layers", "expected a list with one entry per gated block")
    if len(layers_raw) != len(geom.blocks):
        fail("layers", f"{arch} has {len(geom.blocks)} gated blocks, the file lists "
                       f"{len(layers_raw)}")
    gate = _parse_gate_field(obj.get("gate"), geom, fail)
    layers = [_parse_layer(raw, i, b.name, b.width, fail)
              for i, (raw, b) in enumerate(zip(layers_raw, geom.blocks))]
    layers = pattern_kind(gate).parse(layers, layers_raw, gate.step, fail)
    tile = obj.get("tile", 1)
    if not is_int(tile) or tile < 1:
        fail("tile", f"expected a positive integer, got {tile!r}")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_TOP}
    return GatePattern(arch, stem, size, layers, None if t_d is None else float(t_d), extra,
                       gate, tile)


def _parse_gate_field(raw: Any, geom: NetGeometry, fail) -> GateSpec:
    if raw is None:
        return CHANNEL
    if not isinstance(raw, dict) or raw.get("kind") not in GATE_KINDS or not (
            is_int(raw.get("step")) and raw["step"] >= 1):
        fail("gate", f"expected {{\"kind\": K, \"step\": G}} (K:G one of {kind_texts()}), "
                     f"got {raw!r}")
    try:
        return parse_gate(raw).check_widths([b.width for b in geom.blocks])
    except HwbenchError as exc:
        fail("gate.step", str(exc))


def _parse_layer(raw: Any, i: int, name: str, width: int, fail) -> LayerPattern:
    at = f"layers[{i}]"
    if not isinstance(raw, dict):
        fail(at, "expected an object")
    if raw.get("name") != name:
        fail(f"{at}.name", f"expected {name!r} (forward order), got {raw.get('name')!r}")
    for key in _LAYER_INTS:
        if not is_int(raw.get(key)) or raw[key] < 0:
            fail(f"{at}.{key}", f"expected a non-negative integer, got {raw.get(key)!r}")
    if raw["channels"] != width:
        fail(f"{at}.channels", f"{name} of this arch has {width} gated channels, "
                               f"got {raw['channels']}")
    total = raw["always_on"] + raw["always_off"] + raw["dynamic"]
    if total != raw["channels"]:
        fail(f"{at}.always_on", f"always_on + always_off + dynamic = {raw['always_on']} + "
                                f"{raw['always_off']} + {raw['dynamic']} = {total}, "
                                f"expected channels = {raw['channels']}")
    rate = raw.get("dynamic_on_rate", 0.0)
    if not is_num(rate) or not 0 <= rate <= 1:
        fail(f"{at}.dynamic_on_rate", f"expected a number in [0, 1], got {rate!r}")
    on_idx = _index_list(raw, "on_idx", raw["always_on"], width, at, fail)
    dyn_idx = _index_list(raw, "dynamic_idx", raw["dynamic"], width, at, fail)
    if on_idx is not None and dyn_idx is not None and set(on_idx) & set(dyn_idx):
        fail(f"{at}.dynamic_idx", "shares channels with on_idx")
    rates = raw.get("dynamic_rates")
    if rates is not None:
        if (not isinstance(rates, list) or len(rates) != raw["dynamic"]
                or not all(is_num(r) and 0 <= r <= 1 for r in rates)):
            fail(f"{at}.dynamic_rates", f"expected {raw['dynamic']} numbers in [0, 1]")
        rates = [float(r) for r in rates]
    return LayerPattern(name, raw["channels"], raw["always_on"], raw["always_off"],
                        raw["dynamic"], float(rate), on_idx, dyn_idx, rates)


def _index_list(raw, key, count, width, at, fail) -> list[int] | None:
    idx = raw.get(key)
    if idx is None:
        return None
    if (not isinstance(idx, list) or len(idx) != count
            or not all(is_int(j) and 0 <= j < width for j in idx) or len(set(idx)) != count):
        fail(f"{at}.{key}", f"expected {count} distinct channel indices in [0, {width})")
    return idx


def _input_batches(loader: Iterable) -> Iterable[torch.Tensor]:
    for batch in loader:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def summarise(net, loader: Iterable, device: str | torch.device | None = None,
              max_batches: int | None = None, **extra: Any) -> GatePattern:
    """Run the gated stream (eval mode: hard, noise-free gates) over ``loader`` and group channels.

    A channel on for every sample is always-on, off for every sample always-off, otherwise
    dynamic; ``dynamic_rates`` are the per-channel on-frequencies of the dynamic ones. A
    width-gated network's layers also get ``width_hist``, the share of samples keeping each
    width. ``loader`` yields image tensors (B, 3, H, W) or tuples whose first item is one.
    """
    was_training = net.training
    net.eval()
    device = device or next(net.parameters()).device
    gate = getattr(net, "gate_spec", CHANNEL)
    kind = pattern_kind(gate)
    counts: list[torch.Tensor] | None = None
    hists: list[torch.Tensor] | None = None
    n, size = 0, None
    try:
        for b, x in enumerate(_input_batches(loader)):
            if max_batches is not None and b >= max_batches:
                break
            if x.shape[-1] != x.shape[-2]:
                raise PatternError("summarise", "input_size",
                                   f"patterns describe square inputs, got {tuple(x.shape[-2:])}")
            size = int(x.shape[-1])
            out = net.forward_gated(x.to(device))
            sums = [m.sum(dim=0).double().cpu() for m in out.masks]
            counts = sums if counts is None else [c + s for c, s in zip(counts, sums)]
            hs = kind.width_counts(out.masks, gate.step)
            hists = hs if hists is None else [h + g for h, g in zip(hists, hs)]
            n += x.shape[0]
    finally:
        net.train(was_training)
    if counts is None:
        raise PatternError("summarise", None, "the data loader yielded no samples")
    layers = [_summary_layer(name, c, n) for name, c in zip(net.block_names, counts)]
    layers = kind.summarised(layers, hists, n, gate.step)
    if getattr(net, "widths", None) is not None:  # a thinner network (--width-mult)
        full = [b.width for b in net_geometry(net.arch, net.stem, size).blocks]
        layers = [kind.padded(lp, c) for lp, c in zip(layers, full)]
        extra.setdefault("widths", list(net.widths))
    extra.setdefault("source", "summarise")
    extra.setdefault("samples", n)
    return GatePattern(net.arch, net.stem, size, layers, extra=extra, gate=gate)


def _summary_layer(name: str, c: torch.Tensor, n: int) -> LayerPattern:
    rates = c / n
    on = (c == n).nonzero().flatten().tolist()
    dyn = ((c > 0) & (c < n)).nonzero().flatten().tolist()
    dyn_rates = [float(rates[j]) for j in dyn]
    return LayerPattern(
        name=name, channels=len(c), always_on=len(on), always_off=len(c) - len(on) - len(dyn),
        dynamic=len(dyn), dynamic_on_rate=(sum(dyn_rates) / len(dyn)) if dyn else 0.0,
        on_idx=on, dynamic_idx=dyn, dynamic_rates=dyn_rates)


def synthesise(arch: str, stem: str, input_size: int, t_d: float,
               gate: GateSpec | str = CHANNEL, tile: int = 1) -> GatePattern:
    """The prior pattern for budget ``t_d``: one always-on fraction f in every gated layer, the
    rest always-off, no dynamic channels, f chosen so that the gated MACs ratio (gates included)
    is as close to ``t_d`` as integer channel counts allow. With width gates the counts are
    multiples of the step and each layer's histogram is the one width. With ``tile`` every
    count is also a multiple of the tile (the pattern records it).
    """
    if not is_num(t_d) or not 0 < t_d <= 1:
        raise PatternError("synthesise", "t_d", f"expected a number in (0, 1], got {t_d!r}")
    gate = parse_gate(gate)
    check_tile(tile, "tile")
    geom = net_geometry(arch, stem, input_size, gate_step=gate.step)
    gate.check_widths([b.width for b in geom.blocks])
    dense, g = geom.dense_macs(), math.lcm(gate.step, tile)

    def counts(f: float) -> list[int]:
        return [g * min(b.width // g, math.floor(f * b.width / g + 0.5)) for b in geom.blocks]

    def ratio(ons: list[int]) -> float:
        return (geom.stem_macs + sum(b.gated_macs(k) for b, k in zip(geom.blocks, ons))) / dense

    floor_ratio = ratio([0] * len(geom.blocks))
    if t_d < floor_ratio:
        raise PatternError("synthesise", "t_d", f"{t_d} is below {floor_ratio:.4f}, the smallest "
                           f"gated MACs ratio of {arch}/{stem}/{input_size}px (stem, downsample "
                           "and gate MACs always run)")
    # Every distinct count vector arises at some f = k / groups; try them all (a few hundred).
    fractions = sorted({k * g / b.width for b in geom.blocks for k in range(b.width // g + 1)})
    best = min(fractions, key=lambda f: (abs(ratio(counts(f)) - t_d), -f))
    layers = [pattern_kind(gate).static(b.name, b.width, k, gate.step)
              for b, k in zip(geom.blocks, counts(best))]
    return GatePattern(arch, stem, input_size, layers, float(t_d),
                       extra={"source": "synthesise", "always_on_fraction": best}, gate=gate,
                       tile=tile)


def mixed_pattern(arch: str, stem: str, input_size: int, t_d: float, seed: int = 0,
                  dynamic: tuple[float, float] = (0.2, 0.4),
                  rate: tuple[float, float] = (0.3, 0.7),
                  gate: GateSpec | str = CHANNEL, tile: int = 1) -> GatePattern:
    """A pattern of the kind the paper learns: per layer, a random share of dynamic channels
    (``dynamic`` range, as a fraction of the layer) with a random on-rate (``rate`` range), the
    rest split between always-on and always-off so that the expected MACs ratio is ``t_d`` (one
    always-on fraction for all layers, solved by bisection). Seeded: same arguments, same pattern.
    With width gates the dynamic span is in groups and an input keeps always-on + Binomial(span,
    rate) groups: a histogram whose mean on-rate is ``rate``. With ``tile`` each layer's kept
    channels (always-on + dynamic) are rounded up to a multiple of it where the layer allows.
    """
    if not is_num(t_d) or not 0 < t_d <= 1:
        raise PatternError("mixed_pattern", "t_d", f"expected a number in (0, 1], got {t_d!r}")
    gate = parse_gate(gate)
    check_tile(tile, "tile")
    geom = net_geometry(arch, stem, input_size, gate_step=gate.step)
    gate.check_widths([b.width for b in geom.blocks])
    g = gate.step
    gen = torch.Generator().manual_seed(seed)

    def uniform(lo_hi: tuple[float, float]) -> float:
        lo, hi = lo_hi
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    shape = [(uniform(dynamic), uniform(rate)) for _ in geom.blocks]

    def layer(b, dfrac: float, r: float, f: float) -> LayerPattern:
        n = b.width // g
        d = min(n, round(dfrac * n))
        a = min(n - d, round(f * n))
        while (a + d) * g % tile and a + d < n:  # kept channels: a multiple of the tile
            a += 1
        return pattern_kind(gate).mixed(b.name, b.width, a, d, r, g)

    def build(f: float) -> GatePattern:
        return GatePattern(arch, stem, input_size,
                           [layer(b, dfrac, r, f) for b, (dfrac, r) in zip(geom.blocks, shape)],
                           float(t_d), extra={"source": f"mixed_pattern(seed={seed})"},
                           gate=gate, tile=tile)

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if build(mid).macs_ratio() < t_d:
            lo = mid
        else:
            hi = mid
    return min((build(lo), build(hi)), key=lambda p: abs(p.macs_ratio() - t_d))
