"""Losses against references written independently from the papers' equations (loops, numpy)."""

import math

import numpy as np
import pytest
import torch

from hwbench.nets import create_net
from hwbench.ssl import GatingLoss, VICRegLoss, anneal_p, bound, sparsity


def ref_vicreg(z1, z2, sim=25.0, var=25.0, cov=1.0, eps=1e-4):
    a, b = z1.double().numpy(), z2.double().numpy()
    n, d = a.shape
    inv = np.mean((a - b) ** 2)

    def v(x):
        return np.mean(np.maximum(0.0, 1.0 - np.sqrt(x.var(axis=0, ddof=1) + eps)))

    def c(x):
        xc = x - x.mean(axis=0)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += (xc[:, i] @ xc[:, j] / (n - 1)) ** 2
        return total / d

    return sim * inv + var * (v(a) + v(b)) + cov * (c(a) + c(b))


def test_vicreg_matches_the_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6) * 0.5, torch.randn(16, 6) * 2
    out = VICRegLoss()(z1, z2)
    assert out["loss"].item() == pytest.approx(ref_vicreg(z1, z2), rel=1e-5)
    out = VICRegLoss(1.0, 2.0, 3.0)(z1, z2)
    assert out["loss"].item() == pytest.approx(ref_vicreg(z1, z2, 1.0, 2.0, 3.0), rel=1e-5)


def test_vicreg_is_small_for_identical_whitened_embeddings():
    z = torch.randn(64, 8)
    z = (z - z.mean(0)) / z.std(0)  # every dimension at std 1: the hinge is inactive
    out = VICRegLoss()(z, z)
    assert out["invariance"].item() == 0 and out["variance"].item() == 0
    collapsed = VICRegLoss()(torch.zeros(64, 8), torch.zeros(64, 8))
    assert collapsed["variance"].item() == pytest.approx(2 * (1 - math.sqrt(1e-4)))


def ref_bound(d, t_d, p, gamma=1.0):
    lo, hi = p * math.sqrt(t_d), 1 - p + p * math.sqrt(t_d)
    return gamma * sum(max(0.0, lo - x) ** 2 + max(0.0, x - hi) ** 2 for x in d) / len(d)


@pytest.mark.parametrize("p", [1.0, 0.5, anneal_p(10), anneal_p(100)])
def test_bound_matches_the_papers_equation(p):
    d = [0.05, 0.3, 0.55, 0.9, 1.0]
    assert bound(torch.tensor(d), 0.3, p).item() == pytest.approx(ref_bound(d, 0.3, p), rel=1e-6)


def test_bound_at_p_1_is_tight_and_at_p_0_is_free():
    # p = 1: both bounds are sqrt(t_d); p = 0: [0, 1], no layer is penalised
    assert bound(torch.tensor([0.5]), 0.25, 1.0).item() == 0
    assert bound(torch.tensor([0.6]), 0.25, 1.0).item() == pytest.approx(0.01)
    assert bound(torch.tensor([0.0, 1.0]), 0.25, 0.0).item() == 0


def test_sparsity_and_annealing():
    assert sparsity(torch.tensor([0.2, 0.4]), 0.5).item() == pytest.approx(0.04)
    assert anneal_p(0) == 1.0 and anneal_p(50, 0.02) == pytest.approx(math.exp(-1))


@pytest.mark.slow
def test_gating_loss_on_a_real_gated_pass_has_gate_gradients():
    net = create_net("resnet18").train()
    out = net.forward_gated(torch.randn(4, 3, 32, 32))
    loss = GatingLoss(t_d=0.3)(out.masks, out.macs_ratio, p=anneal_p(0))
    on = torch.stack([m.mean() for m in out.masks]).detach().tolist()
    expected = 5 * (out.macs_ratio.mean().item() - 0.3) ** 2 + ref_bound(on, 0.3, 1.0)
    assert loss["loss"].item() == pytest.approx(expected, rel=1e-5)
    loss["loss"].backward()
    for name, block in net.blocks():
        assert block.gate.fc2.weight.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="t_d"):
        GatingLoss(t_d=1.5)
