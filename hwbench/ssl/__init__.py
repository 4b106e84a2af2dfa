"""Self-supervised losses: VICReg and the gating (sparsity + bound) losses."""

from hwbench.ssl.losses import (
    GatingLoss,
    VICRegLoss,
    anneal_p,
    bound,
    covariance,
    invariance,
    sparsity,
    variance,
)

__all__ = ["GatingLoss", "VICRegLoss", "anneal_p", "bound", "covariance", "invariance",
           "sparsity", "variance"]
