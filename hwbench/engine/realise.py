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
from hwbench.engine.kinds import engine_kind
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
    kind = engine_kind(pattern.gate)
    for (_, block), lp, g in zip(net.blocks(), pattern.layers, groups):
        gate = block.gate
        hidden = gate.relu(gate.bn(gate.fc1(out.mean(dim=(2, 3), keepdim=True))))
        kind.realise(gate.fc2, hidden, lp, g, gen)
        out, _ = block(out, "gated")
    return net

