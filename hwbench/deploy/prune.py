"""Structured pruning of a trained dense network to a latency target: the static method people
use, with Torch-Pruning (``torch_pruning``, DepGraph), then the gated network's recovery
fine-tuning (issue 23's ``pruned`` row of ``hwbench compare``).

DepGraph traces the dense stream and groups, for every block, its first convolution's output
channels with everything that must shrink with them (that convolution, its BatchNorm, the next
convolution's inputs). Block outputs are not pruned: they meet the residual sums, and the gated
and thin networks keep them too, so every method is measured on the same skeleton. Each
channel's importance is its group's L2 magnitude, normalised by the group's mean
(``GroupMagnitudeImportance``), so one global threshold ranks channels across blocks. A
threshold gives per-block widths (rounded up to 16 channels, at least 16): the candidates.
The widest whose table-predicted latency meets the target is checked by measuring
(``baseline.land``), DepGraph removes the other channels, and the weights move into hwbench's
network of those widths, so the engine, verify and the kNN evaluation run it as they run a
thin network. Basic-block networks only (resnet18, resnet34): a bottleneck's two inner widths
are one width in hwbench's networks.
"""

from __future__ import annotations

import copy
import math

import torch

from hwbench.errors import UsageError
from hwbench.nets import create_net
from hwbench.nets.resnet import GatedResNet

STEP = 16
GRID = 64  # kept shares k/64 of all channels, k = 8..64


def _require(net: GatedResNet) -> None:
    if net.spec.block != "basic":
        raise UsageError(f"pruned: {net.arch} has bottleneck blocks; pruning supports basic-block "
                         "networks (resnet18, resnet34)")


def _graph(net: GatedResNet, input_size: int):
    import torch_pruning as tp  # the optional "prune" extra

    return tp.DependencyGraph().build_dependency(
        net, example_inputs=torch.zeros(1, 3, input_size, input_size), verbose=False)


def channel_scores(net: GatedResNet, input_size: int) -> list[torch.Tensor]:
    """Per block, each inner channel's importance (its DepGraph group's L2 magnitude, over the
    group's mean) in the dense stream of ``net`` (not modified)."""
    import torch_pruning as tp  # the optional "prune" extra

    _require(net)
    dg = _graph(net, input_size)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    out = []
    for _, block in net.blocks():
        group = dg.get_pruning_group(block.conv1, tp.prune_conv_out_channels,
                                     idxs=list(range(block.conv1.out_channels)))
        out.append(imp(group).detach().float())
    return out


def candidates(scores: list[torch.Tensor], step: int = STEP
               ) -> list[tuple[float, tuple[int, ...]]]:
    """(kept share, per-block widths) for a global threshold keeping k/64 of all channels,
    k = 8..64; each block's count rounded up to a multiple of ``step`` (at least one step, at
    most its width). Distinct width vectors, narrowest first."""
    flat = torch.sort(torch.cat(scores), descending=True).values
    seen: dict[tuple[int, ...], float] = {}
    for k in range(8, GRID + 1):
        n = max(1, round(len(flat) * k / GRID))
        thr = float(flat[n - 1])
        widths = tuple(min(len(s), max(step, math.ceil(int((s >= thr).sum()) / step) * step))
                       for s in scores)
        seen.setdefault(widths, k / GRID)
    return sorted(((share, w) for w, share in seen.items()), key=lambda c: (sum(c[1]), c[0]))


def prune(net: GatedResNet, scores: list[torch.Tensor], widths: tuple[int, ...],
          input_size: int) -> GatedResNet:
    """A copy of ``net`` keeping, in block i, its ``widths[i]`` most important inner channels
    (removed by DepGraph), as hwbench's network of those widths: the dense stream's weights;
    the gated stream's BatchNorms copied from the dense ones (a dense network: its gates are
    never run)."""
    import torch_pruning as tp  # the optional "prune" extra

    work = copy.deepcopy(net).eval()
    dg = _graph(work, input_size)
    for (_, block), s, k in zip(work.blocks(), scores, widths):
        drop = torch.argsort(s, descending=True)[k:].tolist()
        if drop:
            dg.get_pruning_group(block.conv1, tp.prune_conv_out_channels, idxs=drop).prune()
    out = create_net(net.arch, stem=net.stem, widths=list(widths),
                     shared_downsample_bn=net.shared_downsample_bn)
    state = work.state_dict()
    mine = out.state_dict()
    for key, value in mine.items():
        src = key.replace(".bn1.gated.", ".bn1.dense.")
        if src in state and state[src].shape == value.shape:
            mine[key] = state[src].clone()
    out.load_state_dict(mine)
    return out.eval()
