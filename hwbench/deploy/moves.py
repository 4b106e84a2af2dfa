"""The moves ``hwbench trim`` makes, and the trim's part of each gate kind
(``nets.gate.strategy``).

Switching off: channels that are ever on, ranked by on-rate over the ms a channel costs on the
device (cheapest first), fixed off for good. Restoring: always-off channels, ranked by the
trained gates' mean logit (nearest to on first), fixed on for good.

Subset decisions (channel gates) move single channels anywhere in a block. Prefix decisions
(width gates, step G) move whole groups at the top of a block's kept width: switching off caps
the width, restoring raises the cap; a middle group never moves.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from hwbench.deploy.network import OFF_BIAS, reopen, set_channels
from hwbench.nets.gate import PREFIX, SUBSET, GateSpec, strategy
from hwbench.pattern.gate_pattern import GatePattern, LayerPattern
from hwbench.profile.predictor import Predictor


@dataclass
class Candidate:
    """One channel that trimming may switch off, or (restoring) back on."""

    block: int
    channel: int  # width gates: the first channel of the group
    on_rate: float
    ms_per_channel: float
    step: int = 1  # width gates: the group's channels (switching it off caps the width)
    logit: float = 0.0  # restoring: the gate's mean logit on the calibration images

    @property
    def cost(self) -> float:  # on-rate per ms saved: lower is cheaper to switch off
        return self.on_rate / max(self.ms_per_channel, 1e-6)

    def to_dict(self) -> dict:
        return {"block": self.block, "channel": self.channel, "channels": self.step}


def _slope(predictor: Predictor | None, i: int, lp) -> float:
    """ms a channel of block ``i`` costs at its widest kept width (1 without a profile)."""
    if predictor is None:
        return 1.0
    kept, gated = lp.always_on + lp.dynamic, lp.dynamic > 0
    return predictor.block_ms(i, kept, gated) - predictor.block_ms(i, max(kept - 1, 0), gated)


class SubsetMoves:
    """Channel gates: any channel of a block moves on its own."""

    def ranking(self, pattern: GatePattern, predictor: Predictor | None) -> list[Candidate]:
        """Every ever-on channel but each block's most used one (a block keeps one)."""
        cands: list[Candidate] = []
        for i, lp in enumerate(pattern.layers):
            slope = _slope(predictor, i, lp)
            rates = [(c, 1.0) for c in (lp.on_idx or [])] + \
                list(zip(lp.dynamic_idx or [], lp.dynamic_rates or []))
            rates.sort(key=lambda cr: cr[1])
            cands += [Candidate(i, c, float(r), float(slope)) for c, r in rates[:-1]]
        return sorted(cands, key=lambda c: (c.cost, c.block, c.channel))

    def off(self, gate, channels: list[int]) -> list[int]:
        """The channels to fix off when ``channels`` are switched off: those."""
        return channels

    def reopened(self, net, block: int, gate, channels: list[int]) -> None:
        """After ``channels`` are reopened: nothing more (they are always on)."""

    def trimmed(self, lp: LayerPattern, gone: set[int]) -> LayerPattern:
        """``lp`` with the channels ``gone`` always off (the predictor's stand-in)."""
        on = [c for c in (lp.on_idx or []) if c not in gone]
        dyn = [(c, r) for c, r in zip(lp.dynamic_idx or [], lp.dynamic_rates or [])
               if c not in gone]
        lp.on_idx, lp.always_on = on, len(on)
        lp.dynamic_idx, lp.dynamic_rates = [c for c, _ in dyn], [r for _, r in dyn]
        lp.dynamic = len(dyn)
        lp.always_off = lp.channels - lp.always_on - lp.dynamic
        lp.dynamic_on_rate = sum(lp.dynamic_rates) / lp.dynamic if lp.dynamic else 0.0
        return lp

    def restorable(self, i: int, lp: LayerPattern, mu: torch.Tensor) -> list[Candidate]:
        """Block ``i``'s always-off channels, each keyed by its mean logit ``mu``."""
        ever = set(lp.on_idx or []) | set(lp.dynamic_idx or [])
        return [Candidate(i, c, 0.0, 0.0, 1, float(mu[c])) for c in range(len(mu))
                if c not in ever]

    def restored(self, lp: LayerPattern, back: set[int]) -> LayerPattern:
        """``lp`` with the channels ``back`` always on."""
        lp.on_idx = sorted(set(lp.on_idx or []) | back)
        lp.always_on = len(lp.on_idx)
        lp.always_off = lp.channels - lp.always_on - lp.dynamic
        return lp


class PrefixMoves(SubsetMoves):
    """Width gates: whole groups at the top of a block's kept width."""

    def ranking(self, pattern: GatePattern, predictor: Predictor | None) -> list[Candidate]:
        """A block's ever-kept groups but the first, each with the share of inputs keeping it
        (non-increasing with the group): cheapest first, and within a block (one slope) the
        higher group first, so any prefix of the ranking caps widths, never a middle group."""
        cands: list[Candidate] = []
        for i, lp in enumerate(pattern.layers):
            slope, hist, g = _slope(predictor, i, lp), lp.width_hist, lp.step
            top = (lp.channels - lp.always_off) // g
            cands += [Candidate(i, j * g, float(sum(hist[j + 1:])), float(slope), g)
                      for j in range(1, top)]
        return sorted(cands, key=lambda c: (c.cost, c.block, -c.channel))

    def off(self, gate, channels: list[int]) -> list[int]:
        """A cap: every group from the lowest one switched off."""
        return list(range(min(channels), gate.fc2.out_channels * gate.spec.step))

    def reopened(self, net, block: int, gate, channels: list[int]) -> None:
        """The groups above the reopened ones fixed off, so the new cap is exact (a group above
        the old cap was off through the nesting alone in an undeployed network)."""
        top = gate.fc2.out_channels * gate.spec.step
        set_channels(net, block, list(range(max(channels) + 1, top)), OFF_BIAS)

    def trimmed(self, lp: LayerPattern, gone: set[int]) -> LayerPattern:
        """Capped at the lowest group switched off."""
        cap = min(gone) // lp.step
        hist = lp.width_hist[:cap] + [sum(lp.width_hist[cap:])]
        hist += [0.0] * (len(lp.width_hist) - len(hist))
        return type(lp).from_width_hist(lp.name, lp.channels, lp.step, hist)

    def restorable(self, i: int, lp: LayerPattern, mu: torch.Tensor) -> list[Candidate]:
        """The groups above the widest kept width, lowest first, each keyed by the least of its
        own and the lower groups' logits: any prefix of the ranking raises caps, never opens
        a group above a closed one."""
        cands, key = [], math.inf
        for j in range((lp.channels - lp.always_off) // lp.step, len(mu)):
            key = min(key, float(mu[j]))
            cands.append(Candidate(i, j * lp.step, 0.0, 0.0, lp.step, key))
        return cands

    def restored(self, lp: LayerPattern, back: set[int]) -> LayerPattern:
        """The inputs that kept the widest width keep the reopened groups too."""
        cap, hist = (lp.channels - lp.always_off) // lp.step, list(lp.width_hist)
        hist[cap + len(back)], hist[cap] = hist[cap + len(back)] + hist[cap], 0.0
        return type(lp).from_width_hist(lp.name, lp.channels, lp.step, hist)


MOVES = {SUBSET: SubsetMoves(), PREFIX: PrefixMoves()}


def moves_kind(spec: GateSpec) -> SubsetMoves:
    """The trim's strategy for ``spec``'s gate kind."""
    return strategy(MOVES, spec, "trim")


def ranking(pattern: GatePattern, predictor: Predictor | None = None) -> list[Candidate]:
    """Channels (width gates: groups) that are ever on, cheapest to switch off first; each
    block keeps at least one channel (an empty block is not a network the engine or the
    profile describe)."""
    return moves_kind(pattern.gate).ranking(pattern, predictor)


def _channels_by_block(cands: list[Candidate]) -> dict[int, list[int]]:
    by_block: dict[int, list[int]] = {}
    for c in cands:
        by_block.setdefault(c.block, []).extend(range(c.channel, c.channel + c.step))
    return by_block


def switch_off(net, cands: list[Candidate]) -> None:
    """Switch the candidates' channels off in ``net`` (in place): gate bias to ``OFF_BIAS``."""
    blocks = [b for _, b in net.blocks()]
    for block, channels in _channels_by_block(cands).items():
        gate = blocks[block].gate
        set_channels(net, block, moves_kind(gate.spec).off(gate, channels), OFF_BIAS)


def _by_block(cands: list[Candidate]) -> dict[int, set[int]]:
    """Block index -> the channels (width gates: group starts) of ``cands`` in it."""
    out: dict[int, set[int]] = {}
    for c in cands:
        out.setdefault(c.block, set()).add(c.channel)
    return out


def trimmed_pattern(pattern: GatePattern, cands: list[Candidate]) -> GatePattern:
    """The pattern with ``cands`` moved to always-off, other groups unchanged: the cheap stand-in
    the predictor reads during the search (the real one is summarised)."""
    gone, kind = _by_block(cands), moves_kind(pattern.gate)
    p = copy.deepcopy(pattern)
    p.layers = [kind.trimmed(lp, gone[i]) if gone.get(i) else lp
                for i, lp in enumerate(p.layers)]
    return p


def restore_ranking(pattern: GatePattern, means: list[torch.Tensor]) -> list[Candidate]:
    """Always-off channels (width gates: groups above a block's widest kept width), the ones
    the trained gates came nearest to switching on first (the highest mean logit ``means``,
    from ``trim.logit_means``). Channels past a thinner network's width (padding in the
    pattern) are not listed."""
    kind = moves_kind(pattern.gate)
    cands = [c for i, (lp, mu) in enumerate(zip(pattern.layers, means))
             for c in kind.restorable(i, lp, mu)]
    return sorted(cands, key=lambda c: (-c.logit, c.block, c.channel))


def switch_on(net, cands: list[Candidate]) -> None:
    """Switch the candidates' always-off channels back on in ``net`` for good (in place)."""
    blocks = [b for _, b in net.blocks()]
    for block, channels in _channels_by_block(cands).items():
        reopen(net, block, channels)
        gate = blocks[block].gate
        moves_kind(gate.spec).reopened(net, block, gate, channels)


def restored_pattern(pattern: GatePattern, cands: list[Candidate]) -> GatePattern:
    """The pattern with ``cands`` moved from always-off to always-on: the stand-in the
    predictor reads while restoring."""
    back, kind = _by_block(cands), moves_kind(pattern.gate)
    p = copy.deepcopy(pattern)
    p.layers = [kind.restored(lp, back[i]) if back.get(i) else lp
                for i, lp in enumerate(p.layers)]
    return p
