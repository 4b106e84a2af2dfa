"""The SSL model (backbone + projector), one training step for every configuration, LARS.

Configurations of one step (not subclasses):
- ``co`` (the paper): gated stream on view 1, dense stream on view 2, VICReg(z_gated, z_dense)
  + the gating loss;
- ``dense`` (Baseline-1, vanilla VICReg): dense on both views;
- ``gated`` (Baseline-2): gated on both views + the gating loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwbench.nets.resnet import GatedResNet
from hwbench.ssl.losses import GatingLoss, VICRegLoss

METHODS = ("co", "dense", "gated")


def projector(in_dim: int, dims: tuple[int, ...] = (2048, 2048, 2048)) -> nn.Sequential:
    """VICReg's expander: (Linear-BN-ReLU) x (len(dims) - 1), then a Linear."""
    layers, d = [], in_dim
    for h in dims[:-1]:
        layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        d = h
    layers.append(nn.Linear(d, dims[-1]))
    return nn.Sequential(*layers)


class SSLModel(nn.Module):
    def __init__(self, backbone: GatedResNet, proj_dims: tuple[int, ...] = (2048, 2048, 2048)):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(backbone.num_features, proj_dims)


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, float]


SPARSITY_ON = ("sampled", "deployed")


class CoTrainStep(nn.Module):
    """Losses of one step for ``method``; ``p`` (the bound's slack) is set per epoch."""

    def __init__(self, method: str = "co", t_d: float = 0.5, lam: float = 5.0,
                 gamma: float = 1.0, vicreg: tuple[float, float, float] = (25.0, 25.0, 1.0),
                 latency: nn.Module | None = None, sparsity_on: str = "sampled",
                 vicreg_gather: bool = False):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if sparsity_on not in SPARSITY_ON:
            raise ValueError(f"sparsity_on must be one of {SPARSITY_ON}, got {sparsity_on!r}")
        self.method = method
        # sampled: the MACs of the Gumbel-noised masks the pass ran (the paper); deployed: of
        # the noise-free decisions the deployed network takes (straight-through gradient)
        self.sparsity_on = sparsity_on
        self.vicreg = VICRegLoss(*vicreg)
        # under DDP: False (the reference's) computes VICReg on each process's own batch; True
        # on the gathered global batch
        self.vicreg_gather = vicreg_gather
        self.gating = GatingLoss(t_d, lam, gamma, latency) if method != "dense" else None

    def forward(self, model: SSLModel, v1: torch.Tensor, v2: torch.Tensor,
                p: float) -> StepOutput:
        bb, proj = model.backbone, model.projector
        terms: dict[str, torch.Tensor] = {}
        if self.method == "dense":
            z1, z2 = proj(bb(v1, stream="dense")), proj(bb(v2, stream="dense"))
            gate_loss = None
        else:
            g1 = bb.forward_gated(v1)
            z1 = proj(g1.features)
            passes = [g1]
            if self.method == "co":
                z2 = proj(bb(v2, stream="dense"))
            else:
                g2 = bb.forward_gated(v2)
                z2 = proj(g2.features)
                passes.append(g2)
            masks = [torch.cat(ms) for ms in zip(*(g.masks for g in passes))]
            deployed = [torch.cat(ms) for ms in zip(*(g.deployed_masks for g in passes))]
            ratio = torch.cat([g.macs_ratio for g in passes])
            deployed_ratio = torch.cat([g.deployed_macs_ratio for g in passes])
            gate_loss = self.gating(masks, deployed_ratio if self.sparsity_on == "deployed"
                                    else ratio, p, deployed)
            terms.update(sparsity=gate_loss["sparsity"], bound=gate_loss["bound"],
                         macs_ratio=ratio.mean(), deployed_macs_ratio=deployed_ratio.mean(),
                         **{k: v for k, v in gate_loss.items() if k.startswith("latency_ms")})
        # The embeddings leave autocast here: the loss's variances and covariances are fp32.
        z1, z2 = z1.float(), z2.float()
        if self.vicreg_gather:
            z1, z2 = gather(z1), gather(z2)
        vic = self.vicreg(z1, z2)
        loss = vic["loss"] + (gate_loss["loss"] if gate_loss is not None else 0.0)
        terms.update(vicreg=vic["loss"], invariance=vic["invariance"],
                     variance=vic["variance"], covariance=vic["covariance"], loss=loss)
        # one device-to-host copy for every logged term (one sync per step on GPUs)
        values = torch.stack([t.detach().double() for t in terms.values()]).tolist()
        return StepOutput(loss, dict(zip(terms, values)))


def gather(z: torch.Tensor) -> torch.Tensor:
    """(n, D) per process -> (world * n, D): VICReg's variance and covariance are statistics of
    the global batch under DDP. Gradients flow back to each process's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z))


class Objective(nn.Module):
    """The model and its step's losses as one module, so DDP sees a single forward call."""

    def __init__(self, model: SSLModel, step: CoTrainStep):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, p: float):
        out = self.step(self.model, v1, v2, p)
        return out.loss, out.terms


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rates (You et al. 2017), in the clipped form the
    reference trains with: a layer's step is ``lr * min(1, eta * |w| / (|g| + wd * |w|) / lr)``
    times its (weight-decayed) gradient, i.e. the smaller of the global rate and the layer's
    trust-ratio rate. Parameter groups with ``lars=False`` (biases, norms) get neither the
    adaptation nor weight decay (the reference's ``exclude_bias_n_norm``)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                 eta: float = 0.02, clip: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars=True, clip=clip))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    wd = group["weight_decay"]
                    w_norm, g_norm = p.norm(), d.norm()
                    d = d.add(p, alpha=wd)
                    if w_norm > 0 and g_norm > 0:
                        rate = float(group["eta"] * w_norm / (g_norm + wd * w_norm + 1e-8))
                        if group["clip"]:
                            rate = min(rate / lr, 1.0) if lr > 0 else 1.0
                        d = d.mul(rate)
                buf = self.state[p].get("momentum")
                if buf is None:
                    buf = self.state[p]["momentum"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-lr)
        return loss


def lars_param_groups(model: nn.Module, gate_lr_mult: float = 1.0) -> list[dict]:
    """Weights get LARS + weight decay; biases and norm parameters (1-D) get neither; the gates'
    weights get LARS without weight decay (as the reference) and ``gate_lr_mult`` x the rate."""
    decay, gate, plain = [], [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            plain.append(p)
        else:
            (gate if ".gate." in f".{name}" else decay).append(p)
    return [{"params": decay, "lr_mult": 1.0},
            {"params": gate, "weight_decay": 0.0, "lr_mult": gate_lr_mult},
            {"params": plain, "lars": False, "weight_decay": 0.0, "lr_mult": 1.0}]
