"""The per-block channel gate of Krishna et al. (BMVC 2023).

avg-pool(block input) -> 1x1 conv (C_in -> C_in/4) -> BN -> ReLU -> 1x1 conv (-> gated width)
-> Gumbel-sigmoid (temperature 2/3), hard threshold at 0.5 with a straight-through gradient in
training; in eval the hard threshold is taken on the logits (logit >= 0), with no noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwbench.nets.geometry import GATE_REDUCTION

GATE_TEMPERATURE = 2.0 / 3.0


def gumbel_sigmoid_st(logits: torch.Tensor, temperature: float = GATE_TEMPERATURE,
                      eps: float = 1e-8) -> torch.Tensor:
    """Hard {0, 1} sample of a Gumbel-sigmoid with a straight-through gradient.

    Logistic noise log(u) - log(1 - u) (the difference of two Gumbels) is added to the logits;
    the forward value is 1[sigmoid((logits + noise) / T) >= 0.5], the backward pass is the
    gradient of the soft sigmoid.
    """
    u = torch.rand_like(logits)
    noise = torch.log(u + eps) - torch.log1p(-u + eps)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft >= 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


SURROGATES = ("sigmoid", "linear")


def deterministic_st(logits: torch.Tensor, temperature: float = GATE_TEMPERATURE,
                     surrogate: str = "sigmoid") -> torch.Tensor:
    """The noise-free decision the deployed network takes, 1[logit >= 0], with a
    straight-through gradient: what a budget on the *deployed* network differentiates.

    ``sigmoid``: the soft sigmoid's gradient, which vanishes once a gate saturates (|logit| a
    few temperatures from 0), so a saturated gate can no longer be moved by the budget.
    ``linear``: the sigmoid's slope at 0, 1 / (4 T), everywhere (the plain straight-through
    estimator): a budget keeps reaching gates that the rest of training has pinned on. (A gate
    with ``surrogate = "linear"`` also stops this gradient at its input: ``ChannelGate``.)"""
    hard = (logits >= 0).to(logits.dtype)
    if surrogate == "linear":
        lin = logits / (4.0 * temperature)
        return hard + (lin - lin.detach())
    soft = torch.sigmoid(logits / temperature)
    return hard + (soft - soft.detach())


class ChannelGate(nn.Module):
    """Decides per sample which of ``gated_channels`` intermediate channels are computed.

    ``forward(x)`` takes the block input (B, C_in, H, W) and returns a mask (B, gated_channels)
    of zeros and ones (differentiable straight-through in training).
    """

    def __init__(self, in_channels: int, gated_channels: int,
                 temperature: float = GATE_TEMPERATURE):
        super().__init__()
        hidden = max(1, in_channels // GATE_REDUCTION)
        self.temperature = temperature
        self.fc1 = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        # The reference has no bias here; hwbench adds one (initialised to 0, so the network
        # starts identical) because a bias is what lets a pattern file be realised without training.
        self.fc2 = nn.Conv2d(hidden, gated_channels, kernel_size=1, bias=True)
        nn.init.zeros_(self.fc2.bias)
        self.deployed: torch.Tensor | None = None
        self.surrogate = "sigmoid"  # the deployed decisions' gradient (deterministic_st)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Gate logits (B, gated_channels) from the block input (B, C_in, H, W)."""
        z = x.mean(dim=(2, 3), keepdim=True)
        z = self.relu(self.bn(self.fc1(z)))
        return self.fc2(z).flatten(1)

    def _logits_gate_only(self, x: torch.Tensor) -> torch.Tensor:
        """The training logits again, differentiable in the gate's parameters only (the input
        detached; BatchNorm on batch statistics without touching its running averages)."""
        z = self.fc1(x.detach().mean(dim=(2, 3), keepdim=True))
        z = F.batch_norm(z, None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)
        return self.fc2(F.relu(z)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        # the last pass's noise-free decisions (straight-through in training), for budgets on
        # the deployed network (hwbench.budget); read through GatedForward.deployed_masks
        if self.training:
            if self.surrogate == "linear":
                # the budget moves the gates, not the features: its strong, non-vanishing
                # gradient stops at the gate's input (into the backbone it collapsed the SSL
                # features: kNN 92 -> 54 in 4 epochs)
                self.deployed = deterministic_st(self._logits_gate_only(x), self.temperature,
                                                 "linear")
            else:
                self.deployed = deterministic_st(logits, self.temperature)
            return gumbel_sigmoid_st(logits, self.temperature)
        self.deployed = (logits >= 0).to(logits.dtype)
        return self.deployed
