"""LARS against a plain per-parameter reference (the rule as written, one parameter at a
time, values read to the host), and its parameter groups."""

import copy

import pytest
import torch

from hwbench.nets import create_net
from hwbench.ssl.model import LARS, SSLModel, lars_param_groups, upgrade_lars_state
from tests.ssl.syncs import NoHostSync, no_host_sync


@torch.no_grad()
def reference_step(groups: list[dict], state: dict) -> None:
    """One LARS step, per parameter: d = g + wd w; where lars, |w| > 0 and |g| > 0, rate =
    eta |w| / (|g| + wd |w| + 1e-8), clipped to min(rate / lr, 1) (1 where lr <= 0); d *= rate;
    buf = d at first, else momentum buf + d; w -= lr buf."""
    for group in groups:
        lr = group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d = p.grad.clone()
            if group["lars"]:
                wd = group["weight_decay"]
                w_norm, g_norm = p.norm(), p.grad.norm()
                d = d + wd * p
                if w_norm.item() > 0 and g_norm.item() > 0:
                    rate = float(group["eta"] * w_norm / (g_norm + wd * w_norm + 1e-8))
                    if group["clip"]:
                        rate = min(rate / lr, 1.0) if lr > 0 else 1.0
                    d = d * rate
            if id(p) not in state:
                state[id(p)] = d.clone()
            else:
                state[id(p)] = group["momentum"] * state[id(p)] + d
            p.data -= lr * state[id(p)]


def _params():
    torch.manual_seed(0)
    ps = [torch.randn(4, 3), torch.zeros(5, 2), torch.randn(6), torch.randn(2, 2, 3),
          torch.randn(3)]
    return [torch.nn.Parameter(p) for p in ps]


def _grads(params, step):
    g = torch.Generator().manual_seed(step)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    grads[2] = torch.zeros_like(grads[2])  # a zero gradient
    return grads


@pytest.mark.parametrize("clip", [True, False])
def test_lars_equals_the_per_parameter_reference(clip):
    ours, ref = _params(), _params()
    kw = dict(momentum=0.9, weight_decay=1e-2, eta=0.02, clip=clip)
    opt = LARS([{"params": ours[:3]}, {"params": ours[3:4], "weight_decay": 0.0},
                {"params": ours[4:], "lars": False, "weight_decay": 0.0}], lr=0.1, **kw)
    ref_groups = [{**opt.defaults, **g, "params": r} for g, r in
                  zip(opt.param_groups, (ref[:3], ref[3:4], ref[4:]))]
    state: dict = {}
    # lr 0.1, a tiny lr where the trust rate clips, then lr 0 (rate 1, no move)
    for step, lr in enumerate([0.1, 0.1, 1e-5, 0.0, 0.05]):
        for g in opt.param_groups + ref_groups:
            g["lr"] = lr
        for i, (p, r, gr) in enumerate(zip(ours, ref, _grads(ours, step))):
            # parameter 4 has no gradient on step 1 (it keeps its momentum buffer unused)
            p.grad = None if (i == 4 and step == 1) else gr.clone()
            r.grad = None if (i == 4 and step == 1) else gr.clone()
        with no_host_sync():
            opt.step()
        reference_step(ref_groups, state)
        for p, r in zip(ours, ref):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-6, atol=1e-7)
    assert ours[1].abs().sum() > 0  # the zero weight moved (rate 1)
    for p, r in zip(ours, ref):
        torch.testing.assert_close(opt.state[p]["momentum"], state[id(r)], rtol=1e-6, atol=1e-7)


def test_the_reference_is_not_sync_free():
    """The guard the sync-free tests rely on catches a per-parameter host read."""
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    groups = [{"params": [p], "lr": 0.1, "lars": True, "weight_decay": 0.0, "eta": 0.02,
               "clip": True, "momentum": 0.9}]
    with pytest.raises(NoHostSync), no_host_sync():
        reference_step(groups, {})


def small_model():
    return SSLModel(create_net("resnet18", stem="cifar"), proj_dims=(64, 64, 32))


def test_the_gate_lr_multiple_reaches_every_gate_parameter():
    model = small_model()
    groups = lars_param_groups(model, gate_lr_mult=10.0)
    assert len(groups) == 4
    gate_ids = {id(p) for n, p in model.named_parameters() if ".gate." in f".{n}"}
    gated = {id(p) for g in groups if g["lr_mult"] == 10.0 for p in g["params"]}
    assert gated == gate_ids
    one_d = [n for n, p in model.named_parameters() if ".gate." in f".{n}" and p.ndim == 1]
    assert any(n.endswith("fc2.bias") for n in one_d) and any(".bn." in n for n in one_d)
    assert groups[3]["lars"] is False and groups[3]["weight_decay"] == 0.0
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())


def _old_groups(model, gate_lr_mult):
    """lars_param_groups before issue 16: every 1-D parameter in the plain group."""
    decay, gate, plain = [], [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            plain.append(p)
        else:
            (gate if ".gate." in f".{name}" else decay).append(p)
    return [{"params": decay, "lr_mult": 1.0},
            {"params": gate, "weight_decay": 0.0, "lr_mult": gate_lr_mult},
            {"params": plain, "lars": False, "weight_decay": 0.0, "lr_mult": 1.0}]


def test_an_old_three_group_state_loads_into_the_four_groups():
    torch.manual_seed(0)
    model = small_model()
    old = LARS(_old_groups(model, 3.0), lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    saved = copy.deepcopy(old.state_dict())
    new = LARS(lars_param_groups(model, 3.0), lr=0.1)
    with pytest.raises(ValueError):  # as saved, it does not fit
        new.load_state_dict(copy.deepcopy(saved))
    new.load_state_dict(upgrade_lars_state(saved, model))
    for p in model.parameters():  # every momentum buffer reaches its own parameter
        assert torch.equal(new.state[p]["momentum"], old.state[p]["momentum"])
    assert [g["lr_mult"] for g in new.param_groups] == [1.0, 3.0, 1.0, 3.0]
    assert new.param_groups[3]["lars"] is False
    assert upgrade_lars_state(new.state_dict(), model)["param_groups"] == \
        new.state_dict()["param_groups"]  # today's is left as it is
