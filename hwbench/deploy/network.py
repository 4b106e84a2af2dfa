"""One deployed network: the checkpoint, the engine and the evaluation compute the same function.

A trained gate is summarised on calibration images into a pattern (always on / always off /
data-dependent). The compact engine removes always-off channels and runs always-on ones without
a gate; the eager network would still let an always-off channel's gate open on some input the
calibration never showed. ``close_decided`` makes the checkpoint itself agree: the gate logits of
always-off channels get a bias no input can lift above 0, those of always-on channels one no
input can push below 0. After that, on *every* input, the eager network, the masked reference
and the compact engine make the same decisions, so the accuracy measured on the eager network or
the engine is that of the network that was timed.

Calibration images come from the training split, class-balanced (``data.sample_images``): the
test split stays held out for the accuracy.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from hwbench.nets.gate import PREFIX, SUBSET, strategy
from hwbench.pattern.gate_pattern import GatePattern, LayerPattern, summarise

OFF_BIAS = -1.0e4  # a gate logit no input lifts above 0: the channel is off for good
ON_BIAS = 1.0e4  # ... nor pushes below 0: on for good


def set_channels(net, block: int, channels: list[int], bias: float) -> None:
    """Fix ``channels`` of block ``block``'s gate on (``ON_BIAS``) or off (``OFF_BIAS``).
    A width gate decides per group of G channels, nested: ``channels`` must then be whole
    groups, a prefix of the block when fixed on, a suffix when fixed off (a middle group off
    would not cap the width: the nesting already switches off every group after it, so it is
    refused as a mistake); the group's bias is set. Channels past a thinner network's width
    (``--width-mult``) do not exist there and are skipped."""
    _set_bias(net, block, channels, bias, edge=True)


def reopen(net, block: int, channels: list[int]) -> None:
    """Switch always-off ``channels`` of block ``block`` back on for good (``ON_BIAS``). A
    channel gate's channels are then always on. A width gate's ``channels`` must be whole,
    contiguous groups (anywhere in the block): each reopened group follows the group before it
    (the decisions are nested), so reopening the groups just above a block's widest kept width
    raises that width for the inputs that kept it, and leaves the others as they were."""
    _set_bias(net, block, channels, ON_BIAS, edge=False)


def _set_bias(net, block: int, channels: list[int], bias: float, edge: bool) -> None:
    if not channels:
        return
    gate = [b for _, b in net.blocks()][block].gate
    spec, outputs = gate.spec, gate.fc2.out_channels
    idx = sorted(set(int(c) for c in channels))
    idx = strategy(BIAS, spec, "a deployed gate").rows(idx, outputs, spec.step, bias > 0,
                                                       block, edge)
    idx = [c for c in idx if c < outputs]
    if idx:
        with torch.no_grad():
            gate.fc2.bias[torch.as_tensor(idx, dtype=torch.long)] = bias


def _width_groups(channels: list[int], width: int, step: int, on: bool,
                  block: int, edge: bool = True) -> list[int]:
    """The width-gate groups of ``channels`` (sorted): whole, contiguous groups and, with
    ``edge``, a prefix (``on``) or a suffix of the block's ``width`` channels; else a
    ValueError."""
    groups = sorted({c // step for c in channels})
    whole = set(channels) == {c for g in groups for c in range(g * step, (g + 1) * step)}
    n = max(width // step, groups[-1] + 1)
    contiguous = groups == list(range(groups[0], groups[-1] + 1))
    at_edge = not edge or (groups[0] == 0 if on else groups[-1] == n - 1)
    if not (whole and contiguous and at_edge):
        where = "" if not edge else " on from the first channel" if on else \
            " off up to the last channel"
        raise ValueError(f"block {block}: a width gate (step {step}) can only fix whole "
                         f"groups{where}, contiguous, got channels "
                         f"{channels[0]}..{channels[-1]} ({len(channels)})")
    return groups


class SubsetBias:
    """The deployed gate's part of a gate kind whose decisions keep any subset (channel
    gates): one bias a channel."""

    def rows(self, idx: list[int], outputs: int, step: int, on: bool, block: int,
             edge: bool) -> list[int]:
        """The gate outputs whose bias fixes channels ``idx``: their own."""
        return idx

    def decided(self, lp: LayerPattern) -> tuple[list[int], list[int]]:
        """(always-on, always-off) channels of ``lp``."""
        ever = set(lp.on_idx or []) | set(lp.dynamic_idx or [])
        return list(lp.on_idx or []), [c for c in range(lp.channels) if c not in ever]


class PrefixBias(SubsetBias):
    """Prefix decisions (width gates): one bias a group; whole groups at the edges only."""

    def rows(self, idx: list[int], outputs: int, step: int, on: bool, block: int,
             edge: bool) -> list[int]:
        return _width_groups(idx, outputs * step, step, on, block, edge)

    def decided(self, lp: LayerPattern) -> tuple[list[int], list[int]]:
        """The always-on prefix and the always-off suffix."""
        return list(range(lp.always_on)), list(range(lp.channels - lp.always_off, lp.channels))


BIAS = {SUBSET: SubsetBias(), PREFIX: PrefixBias()}


def close_decided(net, pattern: GatePattern) -> None:
    """Fix the pattern's always-on channels on and always-off channels off in ``net``. A width
    pattern's decided channels are its always-on prefix and always-off suffix: the gate then
    keeps a width in [always_on, channels - always_off] on every input."""
    kind = strategy(BIAS, pattern.gate, "a deployed gate")
    for i, lp in enumerate(pattern.layers):
        on, off = kind.decided(lp)
        set_channels(net, i, on, ON_BIAS)
        set_channels(net, i, off, OFF_BIAS)


def deploy(net, calib: torch.Tensor, device: torch.device | str = "cpu",
           **extra) -> GatePattern:
    """Summarise ``net`` on ``calib`` images (N, 3, H, W) and close its decided channels in
    place; returns the deployed pattern (which the closed network reproduces on ``calib``)."""
    pattern = summarise(net, DataLoader(calib, batch_size=256), device, **extra)
    close_decided(net, pattern)
    return pattern
