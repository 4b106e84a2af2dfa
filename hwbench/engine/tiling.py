"""Tensor-core tiles: channel counts padded up to a multiple of the tile, and the MACs that the
padding costs.

Tensor cores multiply tiles of 8 (bf16/fp16: 8 or 16) channels; a conv with 37 kept channels runs
at the speed of one with 40 or 48, or falls back to slower kernels. The engine therefore pads
each block's kept channels with zero-weight, zero-bias channels (conv1 output rows, conv2/conv3
input columns): they compute zeros that change no output, but they are computed, so
``executed_macs`` counts them (the pattern's own MACs do not).
"""

from __future__ import annotations

import torch

from hwbench.pattern.gate_pattern import GatePattern, round_to_tile
from hwbench.pattern.layer import SubsetLayers, pattern_kind


def pad_to(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``t`` with zeros appended along ``dim`` up to size ``n`` (``t`` itself if already)."""
    extra = n - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def _layer_macs(block, lp, tile: int, skips: bool, kind: SubsetLayers) -> float:
    """Expected per-sample MACs one block executes: a ``static`` executor computes the kept
    channels padded; a skipping one its always-on channels padded plus the dynamic channels that
    are on (a width executor: each width padded)."""
    if not skips:
        return float(block.gated_macs(round_to_tile(lp.always_on + lp.dynamic, tile)))
    return kind.skipping_macs(block, lp, tile)


def executed_macs(pattern: GatePattern, mode: str, tile: int = 1,
                  plan: list[str] | None = None) -> float:
    """Expected per-sample MACs the engine executes in ``mode`` (``static`` or ``dynamic``;
    ``plan``: the dynamic engine's executor per block, ``static`` ones compute every kept
    channel), padding channels included. Equal to the pattern's MACs when ``tile`` is 1 and
    every block skips."""
    g, kind = pattern.geometry(), pattern_kind(pattern.gate)
    plan = plan or ["static" if mode == "static" else "skip"] * len(pattern.layers)
    return float(g.stem_macs + sum(_layer_macs(b, lp, tile, p != "static", kind)
                                   for b, lp, p in zip(g.blocks, pattern.layers, plan)))
