"""Losses of the co-training (Krishna et al., BMVC 2023): VICReg between the gated and the dense
embedding, a sparsity term pulling the gated MACs ratio to the budget t_d, and a bound term with an
annealed slack keeping every gated layer's on-ratio inside [p*sqrt(t_d), 1 - p + p*sqrt(t_d)].

Coefficients live in the constructors; the terms are pure functions with shapes in docstrings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VAR_EPS = 1e-4


def invariance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (N, D) embeddings of the two views."""
    return F.mse_loss(z1, z2)


def variance(z: torch.Tensor, eps: float = VAR_EPS) -> torch.Tensor:
    """Hinge on each dimension's standard deviation over the batch: mean_d relu(1 - std_d).
    z: (N, D)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances over the batch, divided by D. z: (N, D)."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


class VICRegLoss(nn.Module):
    """VICReg: sim * invariance + var * (variance(z1) + variance(z2)) + cov * (covariance(z1)
    + covariance(z2)); the paper's weights 25 / 25 / 1. Returns the total and its terms."""

    def __init__(self, sim: float = 25.0, var: float = 25.0, cov: float = 1.0):
        super().__init__()
        self.sim, self.var, self.cov = sim, var, cov

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        inv = invariance(z1, z2)
        var = variance(z1) + variance(z2)
        cov = covariance(z1) + covariance(z2)
        return {"loss": self.sim * inv + self.var * var + self.cov * cov,
                "invariance": inv, "variance": var, "covariance": cov}


def sparsity(macs_ratio: torch.Tensor, t_d: float) -> torch.Tensor:
    """(mean_b gated MACs_b / dense MACs - t_d)^2; macs_ratio: (B,) per-sample ratios with the
    gates' own MACs included."""
    return (macs_ratio.mean() - t_d) ** 2


def bound(on_ratios: torch.Tensor, t_d: float, p: float | torch.Tensor) -> torch.Tensor:
    """mean_l [relu(p sqrt(t_d) - d_l)^2 + relu(d_l - 1 + p - p sqrt(t_d))^2].
    on_ratios: (L,) each gated layer's mean fraction of channels on over the batch; p: a float
    or a 0-dim (float64) tensor."""
    lo = p * math.sqrt(t_d)
    hi = 1.0 - p + p * math.sqrt(t_d)
    return (F.relu(lo - on_ratios) ** 2 + F.relu(on_ratios - hi) ** 2).mean()


def anneal_p(epoch: int, alpha: float = 0.02) -> float:
    """The bound's slack schedule p = exp(-alpha * epoch): tight bounds early, loose later."""
    return math.exp(-alpha * epoch)


class GatingLoss(nn.Module):
    """lam * sparsity + gamma * bound, from a gated pass's masks and per-sample MACs ratios
    (the paper's lambda = 5, gamma = 1). ``t_d`` is set per run; ``p`` per epoch."""

    def __init__(self, t_d: float, lam: float = 5.0, gamma: float = 1.0,
                 latency: nn.Module | None = None):
        super().__init__()
        if not 0 < t_d <= 1:
            raise ValueError(f"t_d must be in (0, 1], got {t_d}")
        self.t_d, self.lam, self.gamma = t_d, lam, gamma
        # --budget latency: the sparsity term is the device-latency term (hwbench.train.budget);
        # the bound keeps t_d (the MACs budget the target's profile suggests)
        self.latency = latency

    def forward(self, masks: list[torch.Tensor], macs_ratio: torch.Tensor,
                p: float | torch.Tensor,
                deployed: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``deployed``: the pass's noise-free masks; the latency term is taken on them (the
        network that will be measured), else on ``masks``."""
        on = torch.stack([m.float().mean() for m in masks])  # (L,) mean over batch and channels
        out = {}
        if self.latency is None:
            s = sparsity(macs_ratio.float(), self.t_d)
        else:
            s, preds = self.latency(deployed if deployed is not None else masks)
            out.update({f"latency_ms_{i}": v.detach() for i, v in enumerate(preds)})
        b = bound(on, self.t_d, p)
        return {"loss": self.lam * s + self.gamma * b, "sparsity": s, "bound": b, **out}
