"""Gated ResNets: a registry of entry points over one builder (``create_net``, ``list_nets``)."""

from __future__ import annotations

from collections.abc import Callable

from hwbench.errors import UsageError
from hwbench.nets.gate import GATE_TEMPERATURE, ChannelGate, gumbel_sigmoid_st
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
    physically slimmed copy), ``gate_temperature``.
    """
    if name not in _REGISTRY:
        raise UsageError(f"unknown network {name!r}; registered: {', '.join(list_nets())}")
    return _REGISTRY[name](**kwargs)


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
    "NetGeometry", "create_net", "gumbel_sigmoid_st", "list_nets", "net_geometry", "register_net",
]
