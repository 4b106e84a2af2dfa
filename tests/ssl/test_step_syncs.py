"""A whole training step (forward of both views, the losses, backward, LARS) reads nothing
from the device: no host sync per step on a GPU (issue 16)."""

import pytest
import torch

from hwbench.nets import create_net
from hwbench.ssl.model import LARS, CoTrainStep, Objective, SSLModel, lars_param_groups
from hwbench.train.budget import LatencyBudget, LatencyEstimate
from tests.ssl.syncs import NoHostSync, no_host_sync
from tests.ssl.test_lars import reference_step
from tests.train.test_budget import curved_profile


class PerParameterLARS(LARS):
    """LARS as it was before issue 16: the rule per parameter, its norms read to the host."""

    @torch.no_grad()
    def step(self, closure=None):
        reference_step(self.param_groups, self.__dict__.setdefault("_ref_state", {}))


def _objective(method, gate, budget):
    net = create_net("resnet18", stem="cifar", gate=gate)
    model = SSLModel(net, proj_dims=(32, 32, 16)).train()
    latency = None
    if budget == "latency":
        latency = LatencyBudget([LatencyEstimate(curved_profile(1), "p90", gate=gate),
                                 LatencyEstimate(curved_profile(2), "p50", gate=gate)],
                                [2.0, 3.0])
    return Objective(model, CoTrainStep(method, t_d=0.5, latency=latency))


def _step(objective, opt, p):
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, terms = objective(v1, v2, p)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return terms


CASES = [("dense", "channel", "flops"), ("co", "channel", "flops"),
         ("co", "channel", "latency"), ("gated", "channel", "latency"),
         ("co", "width:16", "latency"), ("gated", "width:16", "flops")]


@pytest.mark.slow
@pytest.mark.parametrize("method,gate,budget", CASES)
def test_a_training_step_reads_nothing_from_the_device(method, gate, budget):
    torch.manual_seed(0)
    objective = _objective(method, gate, budget)
    opt = LARS(lars_param_groups(objective.model, 2.0), lr=0.1)
    _step(objective, opt, 0.9)  # first step: momentum buffers created
    with no_host_sync():
        for p in (0.9, torch.full((), 0.8, dtype=torch.float64)):  # a float, a tensor
            terms = _step(objective, opt, p)
    assert all(t.dtype == torch.float64 and t.ndim == 0 for t in terms.values())
    assert ("latency_ms_1" in terms) == (budget == "latency")
    assert torch.isfinite(torch.stack(list(terms.values()))).all()


def test_the_same_step_with_the_per_parameter_lars_is_caught():
    torch.manual_seed(0)
    objective = _objective("co", "channel", "flops")
    opt = PerParameterLARS(lars_param_groups(objective.model), lr=0.1)
    with pytest.raises(NoHostSync), no_host_sync():
        _step(objective, opt, 0.9)


def test_a_tensor_p_gives_the_float_p_loss():
    torch.manual_seed(0)
    objective = _objective("co", "channel", "flops")
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    losses = []
    for p in (0.7, torch.full((), 0.7, dtype=torch.float64)):
        torch.manual_seed(1)
        losses.append(objective(v1, v2, p)[0].detach())
    assert torch.equal(losses[0], losses[1])


@pytest.mark.slow
@pytest.mark.parametrize("method,gate,budget", [("co", "width:16", "flops"),
                                                ("co", "channel", "latency")])
def test_no_host_read_inside_torch_either(method, gate, budget):
    """The guard above sees Python; this sees torch's own C++: a host read inside an op (e.g.
    cumprod's backward checking its input for zeros with ``.item()``) shows in the profiler as
    ``aten::_local_scalar_dense``. A whole step must have none."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    objective = _objective(method, gate, budget)
    opt = LARS(lars_param_groups(objective.model, 2.0), lr=0.1)
    _step(objective, opt, 0.9)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(objective, opt, 0.9)
    reads = [e.key for e in prof.key_averages() if e.key in ("aten::_local_scalar_dense",
                                                              "aten::item")]
    assert reads == []
