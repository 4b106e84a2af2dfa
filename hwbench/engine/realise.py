"""Realise a gate-pattern file on an untrained network, so it can be timed before training.

The network is randomly initialised (seeded), its BatchNorm statistics are calibrated on
``pattern_inputs`` so activations have a sane scale, and then, block by block in forward order,
each gate's last 1x1 conv is set so that on those inputs:

- always-on channels: weight row 0, bias +1 -> logit 1, always on;
- always-off channels: weight row 0, bias -1 -> always off;
- dynamic channel i with rate r_i: the random weight row is kept (so decisions vary from sample
  to sample) and the bias is set to the (1 - r_i) quantile of the row's pre-bias logits, so the
  channel is on for a fraction r_i of the calibration samples.

Width-gated patterns (``gate: width:G``; one logit per group, decisions nested): every dynamic
group's logit is the same random projection of the gate's hidden features (one scalar score per
input) plus its own bias, the bias of group j placed at the quantile of the score that keeps
P(kept >= j+1 groups) = sum_{k > j} width_hist[k]. The thresholds increase with j, so the
decisions nest by themselves; always-on / always-off groups get weight 0 and bias +1 / -1.

Same pattern + same seed -> the same network -> the same decisions for the same input.
"""

from __future__ import annotations

import torch

from hwbench.engine.compact import channel_groups
from hwbench.engine.inputs import pattern_inputs
from hwbench.nets import create_net
from hwbench.nets.resnet import GatedResNet
from hwbench.pattern.gate_pattern import GatePattern


@torch.no_grad()
def _calibrate_bn(net: GatedResNet, x: torch.Tensor, seed: int) -> None:
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration passes
    net.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the training-mode gates draw Gumbel noise
        for stream in ("dense", "gated"):
            net(x, stream=stream)
    for bn in bns:
        bn.momentum = 0.1
    net.eval()


@torch.no_grad()
def realise(pattern: GatePattern, seed: int = 0, calibration: int = 64,
            shared_downsample_bn: bool = True) -> GatedResNet:
    """A network of ``pattern``'s arch/stem whose eval-mode gates realise the pattern."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = create_net(pattern.arch, stem=pattern.stem, gate=pattern.gate,
                         shared_downsample_bn=shared_downsample_bn)
    x = pattern_inputs(calibration, pattern.input_size, seed=seed + 1)
    _calibrate_bn(net, x, seed)
    groups = channel_groups(pattern)
    out = net._stem(x)
    gen = torch.Generator().manual_seed(seed + 7)
    for (_, block), lp, g in zip(net.blocks(), pattern.layers, groups):
        gate = block.gate
        hidden = gate.relu(gate.bn(gate.fc1(out.mean(dim=(2, 3), keepdim=True))))
        if pattern.gate.nested:
            _set_width_gate(gate.fc2, hidden, lp, gen)
        else:
            _set_channel_gate(gate.fc2, hidden, lp, g)
        out, _ = block(out, "gated")
    return net


def _set_channel_gate(fc2, hidden: torch.Tensor, lp, g) -> None:
    pre = torch.nn.functional.conv2d(hidden, fc2.weight).flatten(1)  # (N, C) before bias
    bias = torch.full_like(fc2.bias, -1.0)
    bias[g.on] = 1.0
    rates = lp.dynamic_rates or [lp.dynamic_on_rate] * lp.dynamic
    for c, r in zip(g.dyn.tolist(), rates):
        z = pre[:, c]
        if r >= 1.0:
            bias[c] = 1.0 - z.min() if z.numel() else 1.0
        elif r <= 0.0:
            bias[c] = -1.0 - z.max()
        else:
            # on iff z + bias >= 0: put the threshold at the (1 - r) quantile of z
            bias[c] = -torch.quantile(z, 1.0 - r)
    keep = torch.zeros(fc2.weight.shape[0], dtype=torch.bool)
    keep[g.dyn] = True
    fc2.weight[~keep] = 0.0
    fc2.bias.copy_(bias)


def _set_width_gate(fc2, hidden: torch.Tensor, lp, gen: torch.Generator) -> None:
    """One shared random projection row (seeded; a width gate's own weights start at zero) for
    the dynamic groups; group j on iff score >= t_j with t_j halfway between the sorted scores
    so that exactly round(n * P(kept >= j+1)) of the n calibration inputs keep group j (nested,
    since t_j increases with j)."""
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
