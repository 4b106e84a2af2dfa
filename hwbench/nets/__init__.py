"""Gated ResNets: a registry of entry points over one builder (``create_net``, ``list_nets``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from hwbench.errors import UsageError
from hwbench.nets.gate import CHANNEL, GATE_TEMPERATURE, ChannelGate, gumbel_sigmoid_st
from hwbench.nets.geometry import ARCHS, STEMS, NetGeometry, net_geometry
from hwbench.nets.resnet import STREAMS, GatedForward, GatedResNet

_REGISTRY: dict[str, Callable[..., GatedResNet]] = {}


def register_net(fn: Callable[..., GatedResNet]) -> Callable[..., GatedResNet]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_nets() -> list[str]:
    return sorted(_REGISTRY)


def create_net(name: str, **kwargs) -> GatedResNet:
    """Build a registered gated network, e.g. ``create_net("resnet18", stem="cifar")``.

    Keyword arguments: ``stem`` ("cifar" | "imagenet"), ``widths`` (per-block gated widths, for a
    physically slimmed copy), ``gate_temperature``, ``gate`` ("channel" | "width:G" | GateSpec),
    ``shared_downsample_bn`` (default True: one downsample BN for both streams, the reference's).
    """
    if name not in _REGISTRY:
        raise UsageError(f"unknown network {name!r}; registered: {', '.join(list_nets())}")
    return _REGISTRY[name](**kwargs)


def width_mult_widths(arch: str, mult: float, step: int = 16) -> list[int]:
    """Every block's intermediate width times ``mult``, rounded to a multiple of ``step`` (at
    least one step): the thinner dense network of ``--width-mult``."""
    if not (isinstance(mult, (int, float)) and math.isfinite(mult) and 0 < mult <= 1):
        raise UsageError(f"--width-mult {mult!r}: expected a number in (0, 1]")
    return [max(step, int(round(b.width * mult / step)) * step)
            for b in net_geometry(arch, "cifar", 32).blocks]


def net_from_config(cfg: dict, stem: str) -> GatedResNet:
    """The network a run's config describes: its arch, gate kind, (``--width-mult``) widths and
    downsample BNs. A config without ``shared_downsample_bn`` was written before the key existed,
    when every downsample had a BN per stream: it gets that architecture back."""
    return create_net(cfg["arch"], stem=stem, widths=cfg.get("widths") or None,
                      gate=cfg.get("gate") or CHANNEL.text,
                      shared_downsample_bn=bool(cfg.get("shared_downsample_bn", False)))


@register_net
def resnet18(**kwargs) -> GatedResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2) with a gate per block."""
    return GatedResNet(ARCHS["resnet18"], **kwargs)


@register_net
def resnet34(**kwargs) -> GatedResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3) with a gate per block."""
    return GatedResNet(ARCHS["resnet34"], **kwargs)


@register_net
def resnet50(**kwargs) -> GatedResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); the gate masks the bottleneck's inner channels."""
    return GatedResNet(ARCHS["resnet50"], **kwargs)


__all__ = [
    "GATE_TEMPERATURE", "STEMS", "STREAMS", "ChannelGate", "GatedForward", "GatedResNet",
    "NetGeometry", "create_net", "gumbel_sigmoid_st", "list_nets", "net_from_config",
    "net_geometry", "register_net", "width_mult_widths",
]
