"""Convolution kernels for the engine: one small interface, two backends.

A kernel runs ``act(conv(x, W) + b [+ add])`` in one call where it can (post-op fusion):

- ``mkldnn`` (CPU, fp32): oneDNN convolutions with weights reordered once into the blocked
  layout the CPU's vector units want (``pack``), ReLU and the residual add fused as post-ops,
  activations in channels-last. Per-call weights (the dynamic engine's gathered channels) are
  passed in plain layout and reordered by oneDNN on the fly: their cost grows only with the
  channels gathered.
- ``aten`` (CUDA, or any CPU build without oneDNN): ``F.conv2d`` then in-place add and ReLU.
  On CUDA the weights are stored channels-last (``channels_last_weights``), as the activations
  are: cuDNN then runs NHWC kernels (tensor cores in bf16/fp16) with no layout transposes.

Every mode of the engine, ``dense`` included, uses the same kernel, so speed-ups compare skipping
with skipping, not one library with another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hwbench.errors import UsageError

BACKENDS = ("mkldnn", "aten")


def mkldnn_available() -> bool:
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto`` -> ``mkldnn`` for fp32 on a CPU with oneDNN, else ``aten``."""
    if backend == "auto":
        cpu_fast = device.type == "cpu" and dtype == torch.float32 and mkldnn_available()
        return "mkldnn" if cpu_fast else "aten"
    if backend not in BACKENDS:
        raise UsageError(f"unknown engine backend {backend!r}; known: auto, {', '.join(BACKENDS)}")
    if backend == "mkldnn" and (device.type != "cpu" or dtype != torch.float32
                                or not mkldnn_available()):
        raise UsageError("the mkldnn backend needs fp32 on a CPU build of torch with oneDNN")
    return backend


def channels_last_weights(backend: str, device: torch.device) -> bool:
    """Whether the engine stores 4-D conv weights channels-last: aten on CUDA (what cuDNN wants
    for NHWC activations). Elsewhere plain layout (oneDNN packs its own)."""
    return backend == "aten" and device.type == "cuda"


@dataclass
class Conv:
    """A convolution with BatchNorm folded in, ready to run on one backend.

    weight: (C_out, C_in, kh, kw) plain layout (kept for gathering and for the aten backend);
    packed: the backend's pre-arranged copy (the mkldnn blocked layout, or ``weight`` itself).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    padding: int
    backend: str
    packed: torch.Tensor | None = None
    packed_for: tuple[int, ...] | None = None  # the input shape the packing was chosen for

    @classmethod
    def make(cls, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
             backend: str, input_shape: tuple[int, ...] | None = None,
             channels_last: bool = False) -> Conv:
        """``channels_last``: the aten backend runs on a channels-last copy of the weight."""
        packed = weight.contiguous(memory_format=torch.channels_last) if (
            channels_last and backend == "aten" and weight.dim() == 4) else weight.contiguous()
        conv = cls(weight.contiguous(), bias, stride, padding, backend, packed)
        if input_shape is not None:
            conv.pack(tuple(input_shape))
        return conv

    def pack(self, input_shape: tuple[int, ...]) -> None:
        """oneDNN picks the weight layout for one input shape; a layout chosen for another
        shape can be many times slower (seen: 40x for a 1x1 stride-2 conv), so the packing is
        redone whenever the input shape changes."""
        self.packed_for = input_shape
        w = self.weight
        if self.backend == "mkldnn" and w.shape[0] > 0 and w.shape[1] > 0:
            self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.to_mkldnn(), [self.padding] * 2, [self.stride] * 2, [1, 1], 1,
                list(input_shape))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor, relu: bool = False, add: torch.Tensor | None = None,
                 bias: torch.Tensor | None | bool = True) -> torch.Tensor:
        b = self.bias if bias is True else (None if bias is False else bias)
        if self.backend == "mkldnn" and x.shape != self.packed_for:
            self.pack(tuple(x.shape))
        return run_conv(self.backend, x, self.packed, b, self.stride, self.padding, relu, add)


def run_conv(backend: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             stride: int, padding: int, relu: bool = False,
             add: torch.Tensor | None = None) -> torch.Tensor:
    """``relu?(conv(x, weight) + bias + add?)``; ``weight`` may be packed (mkldnn) or plain."""
    if backend == "mkldnn":
        pad, st, dil = [padding, padding], [stride, stride], [1, 1]
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, pad, st, dil, 1, "relu" if relu else "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, add, weight, bias, pad, st, dil, 1, "add", None, "relu" if relu else None, [], "")
    y = F.conv2d(x, weight, bias, stride, padding)
    if add is not None:
        y = y.add_(add)
    return y.relu_() if relu else y
