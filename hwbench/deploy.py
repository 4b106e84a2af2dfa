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

from hwbench.patterns import GatePattern, summarise

OFF_BIAS = -1.0e4  # a gate logit no input lifts above 0: the channel is off for good
ON_BIAS = 1.0e4  # ... nor pushes below 0: on for good


def set_channels(net, block: int, channels: list[int], bias: float) -> None:
    """Fix ``channels`` of block ``block``'s gate on (``ON_BIAS``) or off (``OFF_BIAS``)."""
    if not channels:
        return
    gate = [b for _, b in net.blocks()][block].gate
    with torch.no_grad():
        gate.fc2.bias[torch.as_tensor(channels, dtype=torch.long)] = bias


def close_decided(net, pattern: GatePattern) -> None:
    """Fix the pattern's always-on channels on and always-off channels off in ``net``."""
    for i, lp in enumerate(pattern.layers):
        ever = set(lp.on_idx or []) | set(lp.dynamic_idx or [])
        set_channels(net, i, list(lp.on_idx or []), ON_BIAS)
        set_channels(net, i, [c for c in range(lp.channels) if c not in ever], OFF_BIAS)


def deploy(net, calib: torch.Tensor, device: torch.device | str = "cpu",
           **extra) -> GatePattern:
    """Summarise ``net`` on ``calib`` images (N, 3, H, W) and close its decided channels in
    place; returns the deployed pattern (which the closed network reproduces on ``calib``)."""
    pattern = summarise(net, DataLoader(calib, batch_size=256), device, **extra)
    close_decided(net, pattern)
    return pattern
