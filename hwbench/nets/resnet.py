"""Gated ResNets with two streams over one set of conv weights.

``stream="dense"`` runs every channel and no gate; ``stream="gated"`` runs each block's gate and
masks the block's intermediate channels. Each stream has its own BatchNorms after the block's
convs (the reference's ``--separate_bn``: solo/methods/ResCg/resnet_gating.py:65-84 of
KrishnaTarun/Unification f0fe435). The stem's BN and, by default, each downsample shortcut's BN
are shared by both streams, as in the reference (resnet_gating.py:216, 249 and 322-325: one
BN each, whatever ``separate_bn``); ``shared_downsample_bn=False`` gives the downsample a BN per
stream too (hwbench before issue 15, and every checkpoint written then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hwbench.nets.gate import CHANNEL, GATE_TEMPERATURE, ChannelGate, GateSpec, parse_gate
from hwbench.nets.geometry import ArchSpec, BlockGeometry, NetGeometry, check_stem, net_geometry

Stream = Literal["dense", "gated"]
STREAMS: tuple[str, ...] = ("dense", "gated")


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")


class DualBatchNorm2d(nn.Module):
    """Two BatchNorms over the same channels: one per stream."""

    def __init__(self, channels: int):
        super().__init__()
        self.dense = nn.BatchNorm2d(channels)
        self.gated = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        return self.dense(x) if stream == "dense" else self.gated(x)


class _Downsample(nn.Module):
    """The 1x1 conv + BN shortcut; one BN for both streams (``shared``) or one per stream."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shared: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_ch) if shared else DualBatchNorm2d(out_ch)

    @property
    def shared(self) -> bool:
        return isinstance(self.bn, nn.BatchNorm2d)

    def bn_for(self, stream: Stream) -> nn.BatchNorm2d:
        """The BatchNorm ``stream`` runs (what the engine folds into the conv)."""
        if self.shared:
            return self.bn
        return self.bn.dense if stream == "dense" else self.bn.gated

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        return self.bn_for(stream)(self.conv(x))


class GatedBasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> [mask] -> conv3x3 -> BN -> (+ shortcut) -> ReLU."""

    def __init__(self, geom: BlockGeometry, temperature: float, spec: GateSpec = CHANNEL,
                 shared_downsample_bn: bool = True):
        super().__init__()
        c_in, w, c_out, s = geom.in_channels, geom.width, geom.out_channels, geom.stride
        self.conv1 = nn.Conv2d(c_in, w, 3, stride=s, padding=1, bias=False)
        self.bn1 = DualBatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, c_out, 3, padding=1, bias=False)
        self.bn2 = DualBatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (_Downsample(c_in, c_out, s, shared_downsample_bn)
                           if geom.has_downsample else None)
        self.gate = ChannelGate(c_in, w, temperature, spec)

    def forward(self, x: torch.Tensor, stream: Stream) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self.gate(x) if stream == "gated" else None
        out = self.relu(self.bn1(self.conv1(x), stream))
        if mask is not None:
            out = out * mask[:, :, None, None]
        out = self.bn2(self.conv2(out), stream)
        shortcut = x if self.downsample is None else self.downsample(x, stream)
        return self.relu(out + shortcut), mask


class GatedBottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> [mask] -> 3x3 -> BN -> ReLU -> [mask] -> 1x1 -> BN -> (+) -> ReLU.

    One gate of the inner width masks both inner tensors, so a channel that is off is skipped by
    all three convs (as an output of the first two and an input of the last two).
    """

    def __init__(self, geom: BlockGeometry, temperature: float, spec: GateSpec = CHANNEL,
                 shared_downsample_bn: bool = True):
        super().__init__()
        c_in, w, c_out, s = geom.in_channels, geom.width, geom.out_channels, geom.stride
        self.conv1 = nn.Conv2d(c_in, w, 1, bias=False)
        self.bn1 = DualBatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, stride=s, padding=1, bias=False)
        self.bn2 = DualBatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, c_out, 1, bias=False)
        self.bn3 = DualBatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (_Downsample(c_in, c_out, s, shared_downsample_bn)
                           if geom.has_downsample else None)
        self.gate = ChannelGate(c_in, w, temperature, spec)

    def forward(self, x: torch.Tensor, stream: Stream) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self.gate(x) if stream == "gated" else None
        m = None if mask is None else mask[:, :, None, None]
        out = self.relu(self.bn1(self.conv1(x), stream))
        if m is not None:
            out = out * m
        out = self.relu(self.bn2(self.conv2(out), stream))
        if m is not None:
            out = out * m
        out = self.bn3(self.conv3(out), stream)
        shortcut = x if self.downsample is None else self.downsample(x, stream)
        return self.relu(out + shortcut), mask


@dataclass
class GatedForward:
    """What a gated pass produced.

    features: (B, num_features) pooled backbone features.
    masks: one (B, C_l) 0/1 tensor per gated block, in forward order (straight-through in
        training, so they carry gradients to the gates).
    macs: (B,) per-sample MACs of the gated network, gate modules included (differentiable
        through ``masks``).
    dense_macs: MACs of the dense stream at this input size (a constant).
    """

    features: torch.Tensor
    masks: list[torch.Tensor]
    macs: torch.Tensor
    dense_macs: int
    # the noise-free decisions of the same pass (equal to ``masks`` in eval mode; in training,
    # 1[logit >= 0] with a straight-through gradient): what the deployed network would run
    deployed_masks: list[torch.Tensor] | None = None

    deployed_macs: torch.Tensor | None = None  # (B,) MACs of ``deployed_masks``

    @property
    def macs_ratio(self) -> torch.Tensor:
        """(B,) gated MACs / dense MACs per sample."""
        return self.macs / self.dense_macs

    @property
    def deployed_macs_ratio(self) -> torch.Tensor:
        """(B,) MACs ratio of the noise-free decisions (equal to ``macs_ratio`` in eval mode)."""
        return self.deployed_macs / self.dense_macs


class GatedResNet(nn.Module):
    """A ResNet backbone (no classifier head) with a channel gate in every residual block."""

    def __init__(self, spec: ArchSpec, stem: str = "cifar", widths: list[int] | None = None,
                 gate_temperature: float = GATE_TEMPERATURE, gate: GateSpec | str = CHANNEL,
                 shared_downsample_bn: bool = True):
        super().__init__()
        self.shared_downsample_bn = bool(shared_downsample_bn)
        self.gate_spec = parse_gate(gate)
        self.spec, self.stem = spec, check_stem(stem)
        self.widths = None if widths is None else [int(w) for w in widths]
        self.num_features = spec.num_features
        # Module shapes do not depend on the input size; any reference size works here.
        ref = net_geometry(spec.name, stem, 64, self.widths)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        block_cls = GatedBasicBlock if spec.block == "basic" else GatedBottleneck
        self.block_names: list[str] = [b.name for b in ref.blocks]
        for stage in range(1, 5):
            blocks = [block_cls(b, gate_temperature, self.gate_spec, self.shared_downsample_bn)
                      for b in ref.blocks if b.name.startswith(f"layer{stage}.")]
            self.add_module(f"layer{stage}", nn.ModuleList(blocks))
        self._geometry_cache: dict[tuple[int, int], NetGeometry] = {}
        self._macs_cache: dict[tuple, tuple] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for _, block in self.blocks():
            block.gate.init_bias()

    @property
    def arch(self) -> str:
        return self.spec.name

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The gated blocks in forward order, with their pattern names (``layer1.0`` ...)."""
        mods = [blk for stage in range(1, 5) for blk in getattr(self, f"layer{stage}")]
        return list(zip(self.block_names, mods))

    def geometry(self, input_hw: tuple[int, int]) -> NetGeometry:
        """Shapes and MAC counts of this network at an input of ``input_hw`` pixels."""
        hw = (int(input_hw[0]), int(input_hw[1]))
        if hw not in self._geometry_cache:
            self._geometry_cache[hw] = net_geometry(self.arch, self.stem, hw, self.widths,
                                                    self.gate_spec.step)
        return self._geometry_cache[hw]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _run(self, x: torch.Tensor, stream: Stream) -> tuple[torch.Tensor, list[torch.Tensor]]:
        _check_stream(stream)
        out = self._stem(x)
        masks = []
        for _, block in self.blocks():
            out, mask = block(out, stream)
            if mask is not None:
                masks.append(mask)
        return torch.flatten(out.mean(dim=(2, 3), keepdim=True), 1), masks

    def forward_features(self, x: torch.Tensor, stream: Stream = "dense") -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features) pooled features of the chosen stream."""
        return self._run(x, stream)[0]

    def forward(self, x: torch.Tensor, stream: Stream = "dense") -> torch.Tensor:
        return self.forward_features(x, stream)

    def forward_gated(self, x: torch.Tensor) -> GatedForward:
        """A gated pass that also returns each block's mask and the per-sample MACs."""
        features, masks = self._run(x, "gated")
        geom = self.geometry(x.shape[-2:])
        deployed = [block.gate.deployed for _, block in self.blocks()]
        const, c1, c2 = self._macs_polynomial(geom, x.device)

        def total(ms):
            # channels on per sample and block, counted in float64 (a bf16 sum rounds counts
            # above 256; MAC counts near 1e9 lose their last digits in float32); the sums of
            # these integer products are exact, so the order of summation does not matter
            on = torch.stack([m.sum(dim=1, dtype=torch.float64) for m in ms], dim=1)
            return const + on @ c1 + (on * on) @ c2

        macs = total(masks)
        return GatedForward(features, masks, macs, geom.dense_macs(), deployed,
                            total(deployed) if self.training else macs)

    def _macs_polynomial(self, geom: NetGeometry, device: torch.device):
        """A gated pass's MACs as const + sum_b (c1_b on_b + c2_b on_b^2) in each block's
        channels on (``BlockGeometry.gated_macs``: linear for basic blocks, quadratic for
        bottlenecks), as (float, (L,) float64, (L,) float64) on ``device``: a handful of
        kernels per pass instead of several per block. Cached in eager mode (the copy to the
        device happens once); a compiled graph holds them as constants."""
        key = (geom.input_hw, str(device))
        if key in self._macs_cache:
            return self._macs_cache[key]
        const, c1, c2 = float(geom.stem_macs), [], []
        for g in geom.blocks:
            f0, f1, f2 = (int(g.gated_macs(k)) for k in (0, 1, 2))
            quad = (f2 - 2 * f1 + f0) // 2
            const += f0
            c1.append(f1 - f0 - quad)
            c2.append(quad)
        out = (const, *(torch.tensor(c, dtype=torch.float64, device=device) for c in (c1, c2)))
        if not torch.compiler.is_compiling():
            self._macs_cache[key] = out
        return out
