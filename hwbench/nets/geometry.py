"""Shapes and exact MAC counts of the gated ResNets, as pure arithmetic (no weights needed).

Counting convention (the paper's, and its reference implementation's): one MAC is one
multiply-accumulate of a convolution. Counted: the stem conv, every block conv, the downsample
1x1 convs and, in the gated network only, the gate modules' two 1x1 convs. Not counted: BatchNorm,
ReLU, pooling, the element-wise residual add and any head. FLOPs ~= 2 x MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hwbench.errors import UsageError

BlockKind = Literal["basic", "bottleneck"]
STEMS = ("cifar", "imagenet")
GATE_REDUCTION = 4  # gate hidden width = C_in // 4, as in the paper


@dataclass(frozen=True)
class ArchSpec:
    """A ResNet family member: block type and blocks per stage."""

    name: str
    block: BlockKind
    layers: tuple[int, int, int, int]
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def num_features(self) -> int:
        return self.planes[-1] * self.expansion


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("resnet18", "basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec("resnet34", "basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec("resnet50", "bottleneck", (3, 4, 6, 3)),
}


def arch_spec(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise UsageError(f"unknown arch {name!r}; known: {', '.join(sorted(ARCHS))}") from None


def check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise UsageError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    return stem


def conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (n + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class BlockGeometry:
    """One residual block at one input size. ``width`` is the gated (intermediate) channel count.

    BasicBlock:  conv3x3(in->w, stride) . [gate] . conv3x3(w->out)
    Bottleneck:  conv1x1(in->w) . [gate] . conv3x3(w->w, stride) . [gate] . conv1x1(w->out)
    The Bottleneck's one gate masks both inner tensors, so its 3x3 conv scales with on^2.
    """

    name: str
    kind: BlockKind
    in_channels: int
    width: int
    out_channels: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    has_downsample: bool
    gate_step: int = 1  # a width gate decides per group of gate_step channels

    @property
    def gate_hidden(self) -> int:
        return max(1, self.in_channels // GATE_REDUCTION)

    @property
    def downsample_macs(self) -> int:
        if not self.has_downsample:
            return 0
        return self.in_channels * self.out_channels * self.out_hw[0] * self.out_hw[1]

    def gate_macs(self) -> int:
        """MACs of the gate's two 1x1 convs on the pooled (1x1) input (a width gate's second conv
        has one output per group)."""
        outputs = self.width // self.gate_step
        return self.in_channels * self.gate_hidden + self.gate_hidden * outputs

    def conv_macs(self, on, on_sq=None):
        """MACs of the block's convs (downsample included) with ``on`` gated channels on.

        ``on`` may be an int, a float (an expectation) or a tensor of per-sample counts.
        ``on_sq`` is E[on^2], needed only by the Bottleneck when ``on`` is an expectation;
        it defaults to on * on (exact for a single sample).
        """
        ho, wo = self.out_hw
        out_px = ho * wo
        if self.kind == "basic":
            macs = 9 * self.in_channels * on * out_px + 9 * on * self.out_channels * out_px
        else:
            on_sq = on * on if on_sq is None else on_sq
            hi, wi = self.in_hw
            macs = (
                self.in_channels * on * hi * wi
                + 9 * on_sq * out_px
                + on * self.out_channels * out_px
            )
        return macs + self.downsample_macs

    def dense_macs(self) -> int:
        """The dense stream: every channel on, no gate."""
        return int(self.conv_macs(self.width))

    def gated_macs(self, on, on_sq=None):
        """The gated stream: convs at ``on`` channels plus the gate, which always runs."""
        return self.conv_macs(on, on_sq) + self.gate_macs()


@dataclass(frozen=True)
class NetGeometry:
    arch: str
    stem: str
    input_hw: tuple[int, int]
    stem_macs: int
    blocks: tuple[BlockGeometry, ...]
    num_features: int

    def dense_macs(self) -> int:
        return self.stem_macs + sum(b.dense_macs() for b in self.blocks)

    def block(self, name: str) -> BlockGeometry:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)


def _as_hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        hw = (input_size, input_size)
    else:
        hw = (int(input_size[0]), int(input_size[1]))
    if min(hw) < 1:
        raise UsageError(f"input size must be positive, got {input_size}")
    return hw


def stem_geometry(stem: str, hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """MACs of the stem conv and the spatial size after the stem (and its max-pool)."""
    check_stem(stem)
    if stem == "cifar":
        # The reference's CIFAR stem: 3x3, stride 1, padding 2 (so 32 px -> 34 px), no max-pool.
        out = tuple(conv_out(n, 3, 1, 2) for n in hw)
        macs = 9 * 3 * 64 * out[0] * out[1]
        return macs, out
    conv = tuple(conv_out(n, 7, 2, 3) for n in hw)
    macs = 49 * 3 * 64 * conv[0] * conv[1]
    pooled = tuple(conv_out(n, 3, 2, 1) for n in conv)
    return macs, pooled


def net_geometry(
    arch: str,
    stem: str,
    input_size: int | tuple[int, int],
    widths: list[int] | tuple[int, ...] | None = None,
    gate_step: int = 1,
) -> NetGeometry:
    """Every block's shapes for ``arch`` at ``input_size`` px; ``widths`` overrides gated widths;
    ``gate_step``: a width gate's group size (its MACs), 1 for channel gates."""
    spec = arch_spec(arch)
    hw = _as_hw(input_size)
    stem_macs, cur = stem_geometry(stem, hw)
    if min(cur) < 1:
        raise UsageError(f"input size {input_size} is too small for the {stem} stem")
    blocks: list[BlockGeometry] = []
    in_ch = 64
    for stage, (planes, n_blocks) in enumerate(zip(spec.planes, spec.layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (stage > 1 and i == 0) else 1
            out_ch = planes * spec.expansion
            out_hw = (conv_out(cur[0], 3, stride, 1), conv_out(cur[1], 3, stride, 1))
            blocks.append(
                BlockGeometry(
                    name=f"layer{stage}.{i}",
                    kind=spec.block,
                    in_channels=in_ch,
                    width=planes,
                    out_channels=out_ch,
                    stride=stride,
                    in_hw=cur,
                    out_hw=out_hw,
                    has_downsample=(stride != 1 or in_ch != out_ch),
                    gate_step=gate_step,
                )
            )
            in_ch, cur = out_ch, out_hw
    if widths is not None:
        if len(widths) != len(blocks):
            raise UsageError(f"{arch} has {len(blocks)} gated blocks, got {len(widths)} widths")
        blocks = [
            BlockGeometry(**{**b.__dict__, "width": int(w)}) for b, w in zip(blocks, widths)
        ]
    return NetGeometry(
        arch=arch,
        stem=stem,
        input_hw=hw,
        stem_macs=stem_macs,
        blocks=tuple(blocks),
        num_features=spec.num_features,
    )
