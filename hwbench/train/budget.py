"""Training against device latency: a differentiable estimate of the gated network's latency
from a device profile's per-block latency table, and the budget loss built on it.

The estimate is the predictor (``hwbench predict``) written in torch, fed by the gates' masks
instead of a pattern file:

    latency = scale * ratio[percentile] * (stem + head + sum_b table_b(k_b, gated_b))

``table_b`` is block b's measured latency at ``k`` executed channels, linearly interpolated
between grid points (with or without its gate). ``k_b`` is what the compact engine executes:
in blocks it runs dynamically, the expected number of channels on (mean over the batch of the
channels on); in blocks it runs statically, every channel that any input of the batch turns on
(the max over samples), with the gradient of the channel's mean on-rate (straight-through: the
max has no gradient for a channel two samples need, yet lowering its on-rate is what frees it).
At a hard pattern, whose masks reproduce its always-on / always-off / dynamic groups, the
value equals ``Predictor.predict``.

Width gates (``gate="width:G"``: each (B, C) mask keeps a prefix) make latency a per-input
quantity: input s pays stem + head + sum_b table_b(k_bs) at its own kept width
k_bs = masks[b][s].sum() (the gated table where the batch's widths vary in block b, the plain
one where they do not; a block the profile runs at every kept channel, at the batch's widest
width, with the mean's gradient). It is differentiable through the straight-through masks, so
data-dependent channels pay for themselves and training can keep them. The estimate is the
batch mean of the per-input latencies (``reduce="mean"``, the default) or the mean of the
slowest 10 % of the batch (``reduce="tail"``, a tail-latency surrogate), times the calibration
scale and the profile's timing-noise ratio at ``percentile``. Where every input of the batch
keeps the same widths this equals ``Predictor.predict`` on the equivalent (hard) width pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hwbench.errors import UsageError
from hwbench.nets.gate import CHANNEL, PREFIX, SUBSET, GateSpec, parse_gate, strategy
from hwbench.pattern.gate_pattern import GatePattern
from hwbench.profile.predictor import PERCENTILES, BlockTable, Predictor, interp

REDUCE = ("mean", "tail")
TAIL = 0.10  # reduce="tail": the share of the batch, slowest first, whose latency is averaged


class LatencyEstimate(nn.Module):
    """Predicted latency (ms) of the gated network on one profiled device, from its masks: the
    profile's ``Predictor`` (one implementation), fed the gates' masks, its tables held as
    buffers so they move with the model."""

    def __init__(self, profile: dict, percentile: str = "p90",
                 gate: GateSpec | str = CHANNEL, reduce: str = "mean"):
        super().__init__()
        if percentile not in PERCENTILES:
            raise UsageError(f"unknown percentile {percentile!r}; use p50, p90 or p99")
        if reduce not in REDUCE:
            raise UsageError(f"unknown reduction {reduce!r}; use {' or '.join(REDUCE)}")
        self.gate, self.reduce = parse_gate(gate), reduce
        self.kind = strategy(BUDGET, self.gate, "the latency budget")
        self.pred = Predictor(profile)
        self.arch, self.stem = self.pred.arch, self.pred.stem
        self.input_size, self.names = self.pred.input_size, self.pred.names
        self.executes, self.percentile = self.pred.executes, percentile
        self.factor = self.pred.scale * self.pred.ratios[percentile]
        for i, b in enumerate(self.pred.blocks):
            self.register_buffer(f"grid{i}", b.grid.clone())
            self.register_buffer(f"plain{i}", b.plain.clone())
            self.register_buffer(f"gated{i}", b.gated.clone())

    def tables(self) -> list[BlockTable]:
        return [BlockTable(getattr(self, f"grid{i}"), getattr(self, f"plain{i}"),
                           getattr(self, f"gated{i}")) for i in range(len(self.names))]

    def ms(self, channels: list[torch.Tensor], gated: list) -> torch.Tensor:
        """Latency (ms) for executed channel counts per block; ``gated``: per block a bool, or
        a 0-dim bool tensor (chosen on the device: no value leaves it)."""
        tables = [t if isinstance(g, bool) else
                  BlockTable(t.grid, t.plain, torch.where(g, t.gated, t.plain))
                  for t, g in zip(self.tables(), gated)]
        flags = [g if isinstance(g, bool) else True for g in gated]
        return self.factor * self.pred.table_sum(channels, flags, tables)

    def channels_from_masks(self, masks: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        """(executed channels per block, whether the block has dynamic channels: a 0-dim bool
        tensor) from a gated pass's (B, C) masks."""
        ks, gated = [], []
        for m, how in zip(masks, self.executes):
            m = m.to(torch.float64)
            rate = m.mean(dim=0)
            gated.append(((rate > 0) & (rate < 1)).any())
            if how == "expected":
                ks.append(m.sum(dim=1).mean())
            else:  # value: channels any sample turns on; gradient: lower their on-rates
                kept, mean = m.amax(dim=0), m.mean(dim=0)
                ks.append((kept.detach() + mean - mean.detach()).sum())
        return ks, gated

    def forward(self, masks: list[torch.Tensor]) -> torch.Tensor:
        if len(masks) != len(self.names):
            raise ValueError(f"{len(masks)} masks for a profile of {len(self.names)} blocks")
        return self.kind.of_masks(self, masks)

    def per_input_ms(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """(B,) latency (ms) of each input of a width-gated pass: its own kept width per
        block (the masks are prefixes), scale and timing-noise ratio included."""
        total = None
        for m, how, t in zip(masks, self.executes, self.tables()):
            k = m.to(torch.float64).sum(dim=1)
            varies = (k.detach() != k.detach()[0]).any()  # on the device: no sync
            if how != "expected":  # every input runs the batch's widest kept width
                mean = k.mean()
                k = (k.detach().max() + mean - mean.detach()).expand_as(k)
            ms = interp(k, t.grid, torch.where(varies, t.gated, t.plain))
            total = ms if total is None else total + ms
        return self.factor * (self.pred.fixed_ms + total)

    def of_pattern(self, pattern: GatePattern) -> float:
        """The same estimate for a pattern file (equals ``Predictor.predict``)."""
        return self.kind.of_pattern(self, pattern)


class SubsetBudget:
    """The budget's part of a gate kind whose decisions keep any subset (channel gates): the
    table at the batch's executed channels (``channels_from_masks``)."""

    def of_masks(self, est: LatencyEstimate, masks: list[torch.Tensor]) -> torch.Tensor:
        return est.ms(*est.channels_from_masks(masks))

    def of_pattern(self, est: LatencyEstimate, pattern: GatePattern) -> float:
        with torch.no_grad():
            return float(est.ms(*est.pred.executed(pattern)))


class PrefixBudget:
    """Prefix decisions (width gates): each input at its own width (``per_input_ms``),
    reduced over the batch by the mean or the slowest ``TAIL`` share."""

    def of_masks(self, est: LatencyEstimate, masks: list[torch.Tensor]) -> torch.Tensor:
        per_input = est.per_input_ms(masks)
        if est.reduce == "tail":
            n = max(1, math.ceil(TAIL * per_input.numel()))
            return per_input.topk(n).values.mean()
        return per_input.mean()

    def of_pattern(self, est: LatencyEstimate, pattern: GatePattern) -> float:
        return est.pred.predict(pattern, est.percentile)


BUDGET = {SUBSET: SubsetBudget(), PREFIX: PrefixBudget()}


@dataclass
class DeviceTarget:
    """One device's latency target during training."""

    device: str  # what the user named: cpu, cuda:0, or a profile file
    profile: str  # the profile file used
    target_ms: float
    percentile: str = "p90"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


BUDGET_SHAPES = ("two-sided", "one-sided")
BUDGET_COMBINE = ("max", "sum")


class LatencyBudget(nn.Module):
    """The sparsity term of ``--budget latency``: (predicted / target - 1)^2 per device
    (``one-sided``: only above the target), combined over devices by ``max`` or ``sum``.
    Returns the term and each device's predicted latency (ms)."""

    def __init__(self, estimates: list[LatencyEstimate], targets_ms: list[float],
                 shape: str = "two-sided", combine: str = "max"):
        super().__init__()
        if shape not in BUDGET_SHAPES or combine not in BUDGET_COMBINE:
            raise ValueError(f"shape in {BUDGET_SHAPES}, combine in {BUDGET_COMBINE}")
        if len(estimates) != len(targets_ms) or not estimates:
            raise ValueError("one target per latency estimate, at least one")
        self.estimates = nn.ModuleList(estimates)
        self.targets_ms = [float(t) for t in targets_ms]
        self.shape, self.combine = shape, combine

    def forward(self, masks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        preds = [e(masks) for e in self.estimates]
        terms = []
        for p, t in zip(preds, self.targets_ms):
            err = p / t - 1.0
            terms.append(torch.relu(err) ** 2 if self.shape == "one-sided" else err ** 2)
        stacked = torch.stack(terms)
        # amax: max()'s backward reads the maximum to the host on CPUs
        term = stacked.amax() if self.combine == "max" else stacked.sum()
        return term.float(), preds
