"""The engine's part of each gate kind (``nets.gate.strategy``), chosen once per network.

Subset decisions (channel gates) keep any channels per input: the engine gathers them, or runs
the static executor. Prefix decisions (width gates, step G) keep channels ``[0, k*G)``: the
width executor runs each input at its own width with pre-packed weights, a deployed graph
nests the group decisions, and a runtime network is cut at the blocks whose width varies.
"""

from __future__ import annotations

import torch

from hwbench.nets.gate import PREFIX, SUBSET, GateSpec, strategy

BY_WIDTH = "width"  # the width executor's policy name (an executor, not a gate kind)
BATCH_STRATEGY = "union of the batch's on-channels, then a per-sample mask"
WIDTH_BATCH_STRATEGY = "grouped by width, scattered back"


class SubsetEngine:
    """Channel gates: gathered or static executors; the gate computes only its rows."""

    batch_strategy = BATCH_STRATEGY

    def graphable(self, batch_size: int) -> bool:
        """True when the kind's own executor can be captured in a graph at this batch."""
        return False

    def mask_step(self, spec: GateSpec) -> int | None:
        """The channels one decision of a nested gate covers; None: one decision a channel,
        any subset on."""
        return None

    def executors(self, makers: dict, width_maker, policy: str, batch_size: int) -> dict:
        """The block's executor makers under ``policy`` (``auto``: all of them)."""
        if policy == "auto":
            return makers
        pick = policy if policy in makers else "gather-conv"
        return {pick: makers[pick]}

    def deploy_gate(self, w2: torch.Tensor, b2: torch.Tensor, rows: torch.Tensor, step: int):
        """(fc2 weight, fc2 bias, nest) of a deployed gate deciding ``rows``: their rows only,
        no nesting (None)."""
        return w2[rows], b2[rows], None

    def cut_blocks(self, pattern) -> list[int]:
        """The blocks a runtime network is cut at: none (one graph, masked)."""
        return []

    @torch.no_grad()
    def realise(self, fc2, hidden: torch.Tensor, lp, groups, gen: torch.Generator) -> None:
        """Gate weights whose eval decisions realise layer ``lp``: always-on rows a positive
        bias, always-off a negative one, each dynamic row its threshold at the (1 - rate)
        quantile of its calibration pre-activations."""
        pre = torch.nn.functional.conv2d(hidden, fc2.weight).flatten(1)  # (N, C) before bias
        bias = torch.full_like(fc2.bias, -1.0)
        bias[groups.on] = 1.0
        rates = lp.dynamic_rates or [lp.dynamic_on_rate] * lp.dynamic
        for c, r in zip(groups.dyn.tolist(), rates):
            z = pre[:, c]
            if r >= 1.0:
                bias[c] = 1.0 - z.min() if z.numel() else 1.0
            elif r <= 0.0:
                bias[c] = -1.0 - z.max()
            else:  # on iff z + bias >= 0
                bias[c] = -torch.quantile(z, 1.0 - r)
        keep = torch.zeros(fc2.weight.shape[0], dtype=torch.bool)
        keep[groups.dyn] = True
        fc2.weight[~keep] = 0.0
        fc2.bias.copy_(bias)


class PrefixEngine(SubsetEngine):
    """Width gates: the width executor (each input at its own width); nested group decisions."""

    batch_strategy = WIDTH_BATCH_STRATEGY

    def graphable(self, batch_size: int) -> bool:
        return batch_size == 1  # one width per graph replay: batch 1 only

    def mask_step(self, spec: GateSpec) -> int | None:
        return spec.step

    def executors(self, makers: dict, width_maker, policy: str, batch_size: int) -> dict:
        """Adds the width executor. ``auto``: batch 1 always the width executor; batch > 1
        tuned against static per block (grouping splits the batch into smaller, less
        efficient convs)."""
        makers = {**makers, BY_WIDTH: width_maker}
        if policy == "auto":
            keep = (BY_WIDTH,) if batch_size == 1 else (BY_WIDTH, "static")
            return {k: makers[k] for k in keep}
        return super().executors(makers, width_maker, policy, batch_size)

    def deploy_gate(self, w2: torch.Tensor, b2: torch.Tensor, rows: torch.Tensor, step: int):
        """Every group logit, and ``nest[j, i] = 1[j <= rows[i] // G]``: row i is on when no
        group up to its own is off (the engine's ``rows < k * G``)."""
        groups = torch.arange(w2.shape[0])[:, None]
        return w2, b2, (groups <= (rows // step)[None, :]).float()

    def cut_blocks(self, pattern) -> list[int]:
        """The blocks with dynamic channels (their width varies per input)."""
        return [] if pattern is None else \
            [i for i, lp in enumerate(pattern.layers) if lp.dynamic > 0]

    @torch.no_grad()
    def realise(self, fc2, hidden: torch.Tensor, lp, groups, gen: torch.Generator) -> None:
        """One shared random projection row (seeded; a width gate's own weights start at
        zero) for the dynamic groups; group j on iff score >= t_j with t_j halfway between the
        sorted scores so that exactly round(n * P(kept >= j+1)) of the n calibration inputs
        keep group j (nested, since t_j increases with j)."""
        row = torch.randn(fc2.weight[0].shape, generator=gen) / fc2.weight[0].numel() ** 0.5
        score = torch.nn.functional.conv2d(hidden, row[None]).flatten()  # (N,)
        srt, n = score.sort().values, score.numel()
        hist = lp.width_hist
        first, last = lp.always_on // lp.step, (lp.always_on + lp.dynamic) // lp.step
        bias = torch.full_like(fc2.bias, -1.0)
        bias[:first] = 1.0
        fc2.weight.zero_()
        for j in range(first, last):
            m = round(n * float(sum(hist[j + 1:])))  # inputs that keep group j
            if m >= n:
                t = srt[0] - 1.0
            elif m <= 0:
                t = srt[-1] + 1.0
            else:
                t = (srt[n - m - 1] + srt[n - m]) / 2
            fc2.weight[j] = row
            bias[j] = -t
        fc2.bias.copy_(bias)


ENGINE = {SUBSET: SubsetEngine(), PREFIX: PrefixEngine()}


def engine_kind(spec: GateSpec) -> SubsetEngine:
    """The engine's strategy for ``spec``'s gate kind."""
    return strategy(ENGINE, spec, "the engine")
