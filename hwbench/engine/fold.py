"""Fold an eval-mode BatchNorm into the conv before it: y = s * (W x) + t  ->  (s W) x + t."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, bn) -> (W', b') with conv(x, W') + b' == bn(conv(x, W)) in eval mode.

    ``weight`` is (C_out, C_in, kh, kw) or (C_out, C_in) for a 1x1 conv on pooled input.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w = weight * scale.reshape(shape)
    b = bn.bias - bn.running_mean * scale
    return w.detach().clone(), b.detach().clone()
