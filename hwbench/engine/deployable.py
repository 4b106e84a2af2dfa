"""The deployable network: a plain-torch module of what the compact engine computes, for
exporters and inference runtimes (ONNX Runtime, OpenVINO: ``hwbench.engine.runtimes``).

``deployable(net, pattern)`` computes what the compact engine's ``static`` mode computes (fp32):
BatchNorm folded into the convs, a pattern's always-off channels removed, its always-on channels
run without a gate, its dynamic channels computed and multiplied by their gate's decision
1[logit >= 0] (the gate's BN folded too: two small matmuls). Without a pattern it is the dense
stream. Width-gated networks are one graph with the nested mask (a channel is on when its group
and every group before it are: 1[sum of the earlier groups' "off" decisions == 0], one matmul
with a triangular 0/1 matrix: ONNX has no cumprod here). ``runtimes`` also cuts it into pieces
(stem, blocks, head; a width block at one width) to time them or to run one graph per width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwbench.engine.compact import channel_groups
from hwbench.engine.fold import fold_bn
from hwbench.engine.kinds import engine_kind
from hwbench.errors import UsageError
from hwbench.nets.resnet import GatedBasicBlock, GatedResNet
from hwbench.pattern.gate_pattern import GatePattern


def _frozen_conv(w: torch.Tensor, b: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with weight ``w`` and bias ``b``, ``like``'s stride and padding."""
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=like.stride,
                     padding=like.padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    return conv


class DeployGate(nn.Module):
    """A block's gate, BN folded, for the channel ``rows`` it decides (the block's dynamic ones).

    Channel gates: (B, C_in, H, W) -> (B, len(rows)) 1[logit >= 0], only the rows' logits
    computed. Width gates (step G): all group logits; row i is on when no group up to
    rows[i] // G is off (``nest[j, i] = 1[j <= rows[i] // G]``): the engine's ``rows < k * G``.
    """
    def __init__(self, gate, rows: torch.Tensor):
        super().__init__()
        w1, b1 = fold_bn(gate.fc1.weight.flatten(1), gate.bn)
        w2, b2 = gate.fc2.weight.detach().flatten(1), gate.fc2.bias.detach()
        w2, b2, nest = engine_kind(gate.spec).deploy_gate(w2, b2, rows, gate.spec.step)
        self.width = nest is not None  # nested decisions (a graph-time choice, not traced)
        nest = torch.zeros(0, 0) if nest is None else nest
        self.fc1, self.fc2 = nn.Linear(w1.shape[1], w1.shape[0]), nn.Linear(w2.shape[1],
                                                                            w2.shape[0])
        with torch.no_grad():
            for fc, w, b in ((self.fc1, w1, b1), (self.fc2, w2, b2)):
                fc.weight.copy_(w)
                fc.bias.copy_(b)
        self.register_buffer("nest", nest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        if self.width:
            off = (z < 0).to(x.dtype)
            return (torch.matmul(off, self.nest) < 0.5).to(x.dtype)
        return (z >= 0).to(x.dtype)


class DeployBlock(nn.Module):
    """One residual block (BasicBlock or Bottleneck), folded, over its ``kept`` inner channels
    (always-on first, ``n_on`` of them, then the dynamic ones): the inner convs keep those
    output channels, the following convs those input channels; the dynamic channels are
    multiplied by the gate's decision after each inner conv. No kept channel: shortcut + the
    last conv's bias + ReLU."""
    def __init__(self, block, kept: torch.Tensor, n_on: int, stream: str):
        super().__init__()
        basic = isinstance(block, GatedBasicBlock)
        convs = [block.conv1, block.conv2] if basic else [block.conv1, block.conv2, block.conv3]
        bns = [block.bn1, block.bn2] if basic else [block.bn1, block.bn2, block.bn3]
        folded = [fold_bn(c.weight, bn.dense if stream == "dense" else bn.gated)
                  for c, bn in zip(convs, bns)]
        self.n_on, self.empty = n_on, len(kept) == 0
        mods = []
        for i, (conv, (w, b)) in enumerate(zip(convs, folded)):
            if i > 0:
                w = w[:, kept]
            if i < len(convs) - 1:
                w, b = w[kept], b[kept]
            mods.append(None if self.empty else _frozen_conv(w, b, conv))
        self.inner = nn.ModuleList([] if self.empty else mods[:-1])
        self.last = mods[-1]
        self.register_buffer("bias_out", folded[-1][1].view(1, -1, 1, 1).clone())
        ds = block.downsample
        self.ds = None if ds is None else _frozen_conv(*fold_bn(ds.conv.weight, ds.bn_for(stream)),
                                                       ds.conv)
        dyn = kept[n_on:]
        self.gate = DeployGate(block.gate, dyn) if len(dyn) and stream == "gated" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = x if self.ds is None else self.ds(x)
        if self.last is None:
            return F.relu(sc + self.bias_out)
        mask: torch.Tensor | None = None
        if self.gate is not None:  # always-on channels: a decision of 1
            mask = F.pad(self.gate(x), (self.n_on, 0), value=1.0)[:, :, None, None]
        h = x
        for conv in self.inner:
            h = F.relu(conv(h))
            if mask is not None:
                h = h * mask
        return F.relu(self.last(h) + sc)


class Deployable(nn.Module):
    """(B, 3, S, S) normalised images -> (B, num_features) features, as the engine returns."""
    def __init__(self, net: GatedResNet, pattern: GatePattern | None):
        super().__init__()

        self.stem = _frozen_conv(*fold_bn(net.conv1.weight, net.bn1), net.conv1)
        self.maxpool = net.stem == "imagenet"
        groups = channel_groups(pattern) if pattern is not None else None
        blocks = []
        for i, (_, block) in enumerate(net.blocks()):
            if groups is None:
                width = block.conv1.out_channels
                blocks.append(DeployBlock(block, torch.arange(width), width, "dense"))
            else:
                g = groups[i]
                blocks.append(DeployBlock(block, g.kept, len(g.on), "gated"))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        if self.maxpool:
            x = F.max_pool2d(x, 3, 2, 1)
        return self.blocks(x).mean(dim=(2, 3))


def check_pattern(net: GatedResNet, pattern: GatePattern | None, where: str = "pattern") -> None:
    """A one-line UsageError when ``pattern`` is not of ``net``'s arch, stem and gate kind."""
    if pattern is None:
        return
    if (pattern.arch, pattern.stem) != (net.arch, net.stem):
        raise UsageError(f"{where} is for {pattern.arch}/{pattern.stem}, the network is "
                         f"{net.arch}/{net.stem}")
    if pattern.gate != net.gate_spec:
        raise UsageError(f"{where}'s gates are {pattern.gate.text}, the network's "
                         f"{net.gate_spec.text}")


def deployable(net: GatedResNet, pattern: GatePattern | None = None) -> nn.Module:
    """The exportable module of ``net`` run as the compact engine's ``static`` mode runs it
    with ``pattern`` (its ``dense`` mode without one), fp32, eval mode, no gradients. Tile
    padding is not reproduced (zero channels: the same function)."""
    check_pattern(net, pattern)
    net = net.eval()
    with torch.no_grad():
        mod = Deployable(net, pattern).eval()
    for p in mod.parameters():
        p.requires_grad_(False)
    return mod
