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
    """The step's loss and its logged terms: detached 0-dim float64 tensors on the step's
    device, so the step never waits for the device (read them with ``host_terms``, or stack
    and sum them on the device as the training loop does)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def host_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The terms as Python floats: one device-to-host copy (a sync on a GPU)."""
    return dict(zip(terms, torch.stack(list(terms.values())).tolist()))


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
        # the gate warm-up (set per step by the training loop, with ``nets.gate.set_gates_open``):
        # the gated stream runs every channel and the sparsity, bound and latency terms are
        # logged but not in the loss
        self.gates_open = False

    def forward(self, model: SSLModel, v1: torch.Tensor, v2: torch.Tensor,
                p: float | torch.Tensor) -> StepOutput:
        """``p``: a float, or a 0-dim tensor (a compiled step: a new float would recompile)."""
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
            if self.gates_open:  # logged (the same terms every step), not trained on
                gate_loss = None
        # The embeddings leave autocast here: the loss's variances and covariances are fp32.
        z1, z2 = z1.float(), z2.float()
        if self.vicreg_gather:
            z1, z2 = gather(z1), gather(z2)
        vic = self.vicreg(z1, z2)
        loss = vic["loss"] + (gate_loss["loss"] if gate_loss is not None else 0.0)
        terms.update(vicreg=vic["loss"], invariance=vic["invariance"],
                     variance=vic["variance"], covariance=vic["covariance"], loss=loss)
        return StepOutput(loss, {k: t.detach().double() for k, t in terms.items()})


def gather(z: torch.Tensor) -> torch.Tensor:
    """(n, D) per process -> (world * n, D): VICReg's variance and covariance are statistics of
    the global batch under DDP. Gradients flow back to each process's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather  # only several processes gather

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
    trust-ratio rate (``clip=False``: ``lr`` times the trust ratio). A layer with a zero weight
    or gradient norm, and every layer where ``lr <= 0`` (clipped), takes rate 1. Parameter
    groups with ``lars=False`` (biases, norms) get neither the adaptation nor weight decay (the
    reference's ``exclude_bias_n_norm``).

    No value leaves the device: the norms and rates of a group are computed for all its
    parameters at once (``torch._foreach_norm``) and chosen with ``torch.where``, so a step on
    a GPU never waits for it (the per-parameter ``float()`` of a plain loop waited once per
    parameter). State: ``state[p]["momentum"]``, the first step's update at first."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                 eta: float = 0.02, clip: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars=True, clip=clip))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["lars"]:
                wd = group["weight_decay"]
                d = torch._foreach_add(grads, params, alpha=wd)
                torch._foreach_mul_(d, list(_trust_rates(params, grads, group).unbind(0)))
            else:
                d = grads
            self._momentum_update(params, d, group)
        return loss

    def _momentum_update(self, params: list, d: list, group: dict) -> None:
        """buf = momentum * buf + d (buf = d at a parameter's first step); p -= lr * buf."""
        old, new = [], []
        for p, u in zip(params, d):
            buf = self.state[p].get("momentum")
            if buf is None:
                self.state[p]["momentum"] = buf = u.clone()
            else:
                old.append((buf, u))
            new.append(buf)
        if old:
            bufs = [b for b, _ in old]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [u for _, u in old])
        torch._foreach_add_(params, new, alpha=-group["lr"])


def _trust_rates(params: list, grads: list, group: dict) -> torch.Tensor:
    """(n,) each parameter's LARS rate, on the device: eta * |w| / (|g| + wd * |w| + 1e-8),
    clipped to min(rate / lr, 1) (1 where lr <= 0), and 1 where |w| or |g| is 0. The division
    by lr and the clip run in float64, as a Python float would."""
    w = torch.stack(torch._foreach_norm(params))
    g = torch.stack(torch._foreach_norm(grads))
    wd, lr = group["weight_decay"], group["lr"]
    rate = group["eta"] * w / (g + wd * w + 1e-8)
    if group["clip"]:
        rate = ((rate.double() / lr).clamp(max=1.0).to(rate.dtype) if lr > 0
                else torch.ones_like(rate))
    return torch.where((w > 0) & (g > 0), rate, torch.ones_like(rate))


GATE_GROUP = 3  # lars_param_groups' index of the gates' 1-D parameters (added in issue 16)


def lars_param_groups(model: nn.Module, gate_lr_mult: float = 1.0) -> list[dict]:
    """Four groups: weights get LARS + weight decay; the gates' weights LARS without weight
    decay (as the reference); other biases and norm parameters (1-D) neither; the gates' 1-D
    parameters (fc2's bias, the gate BN) neither either. Both gate groups take
    ``gate_lr_mult`` x the rate, so the multiple reaches every gate parameter."""
    decay, gate, plain, gate_plain = [], [], [], []
    for name, p in model.named_parameters():
        is_gate = _is_gate(name)
        if p.ndim <= 1:
            (gate_plain if is_gate else plain).append(p)
        else:
            (gate if is_gate else decay).append(p)
    return [{"params": decay, "lr_mult": 1.0},
            {"params": gate, "weight_decay": 0.0, "lr_mult": gate_lr_mult},
            {"params": plain, "lars": False, "weight_decay": 0.0, "lr_mult": 1.0},
            {"params": gate_plain, "lars": False, "weight_decay": 0.0, "lr_mult": gate_lr_mult}]


def _is_gate(name: str) -> bool:
    return ".gate." in f".{name}"


def upgrade_lars_state(state: dict, model: nn.Module) -> dict:
    """An optimiser state dict saved with lars_param_groups' three groups (before issue 16:
    the gates' 1-D parameters sat in the plain group at rate multiple 1), regrouped as today's
    four for ``model``: the plain group's gate parameters move, with their momentum, to the
    gate 1-D group, which takes the old gate group's ``lr_mult``. Other state dicts are
    returned unchanged."""
    groups = state["param_groups"]
    if len(groups) != 3:
        return state
    ones = [_is_gate(n) for n, p in model.named_parameters() if p.ndim <= 1]
    plain = groups[2]
    if len(ones) != len(plain["params"]):
        return state  # not this model's: load_state_dict says why
    keep = [i for i, g in zip(plain["params"], ones) if not g]
    moved = [i for i, g in zip(plain["params"], ones) if g]
    return {"state": state["state"],
            "param_groups": [*groups[:2], {**plain, "params": keep},
                             {**plain, "params": moved, "lr_mult": groups[1]["lr_mult"]}]}
