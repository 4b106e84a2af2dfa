import pytest
import torch

from hwbench.nets import create_net
from hwbench.ssl.model import (
    LARS,
    METHODS,
    CoTrainStep,
    SSLModel,
    host_terms,
    lars_param_groups,
)


def small_model():
    return SSLModel(create_net("resnet18", stem="cifar"), proj_dims=(64, 64, 32))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_lower_the_loss(method):
    torch.manual_seed(0)
    model = small_model().train()
    step = CoTrainStep(method, t_d=0.5)
    opt = LARS(lars_param_groups(model), lr=0.05)
    x = torch.randn(16, 3, 16, 16)
    v1, v2 = x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same gate noise every step: a fair comparison
        out = step(model, v1, v2, p=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(host_terms(out.terms)["loss"])
    assert losses[-1] < losses[0]
    terms = host_terms(out.terms)
    if method != "dense":
        assert 0 < terms["macs_ratio"] <= 1.01 and "bound" in terms


def test_co_step_uses_gated_view1_and_dense_view2():
    model = small_model().train()
    step = CoTrainStep("co", t_d=0.3)
    out = step(model, torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), p=1.0)
    out.loss.backward()
    bn = model.backbone.layer1[0].bn1
    assert bn.dense.num_batches_tracked == 1 and bn.gated.num_batches_tracked == 1
    assert model.backbone.layer1[0].gate.fc2.weight.grad.abs().sum() > 0


def test_lars_excludes_biases_and_norms():
    groups = lars_param_groups(small_model())
    assert all(p.ndim > 1 for p in groups[0]["params"])
    assert all(p.ndim <= 1 for p in groups[2]["params"] + groups[3]["params"])
    decay, gate, plain, _ = lars_param_groups(small_model(), gate_lr_mult=10.0)
    assert plain["lars"] is False and plain["weight_decay"] == 0.0
    assert gate["weight_decay"] == 0.0 and gate["lr_mult"] == 10.0 and decay["lr_mult"] == 1.0
    model = small_model()
    gate_ids = {id(p) for n, p in model.named_parameters() if ".gate." in f".{n}" and p.ndim > 1}
    assert {id(p) for p in lars_param_groups(model)[1]["params"]} == gate_ids != set()


def test_lars_trust_ratio_scales_the_step():
    w = torch.nn.Parameter(torch.ones(4, 4))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.02)
    w.grad = torch.full((4, 4), 10.0)
    opt.step()
    # trust = eta * ||w|| / ||g|| = 0.02 * 4 / 40 = 0.002 -> step = 0.002 * 10 = 0.02
    assert torch.allclose(w.detach(), torch.full((4, 4), 0.98))


@pytest.mark.parametrize("lr,step", [(0.01, 0.02), (0.001, 0.01), (10.0, 0.02)])
def test_lars_step_is_the_smaller_of_the_global_and_the_trust_ratio_rate(lr, step):
    # trust-ratio rate eta * |w| / |g| = 0.002 per unit gradient; the gradient is 10 everywhere
    w = torch.nn.Parameter(torch.ones(4, 4))
    opt = LARS([w], lr=lr, momentum=0.0, weight_decay=0.0, eta=0.02)
    w.grad = torch.full((4, 4), 10.0)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((4, 4), 1.0 - min(lr, 0.002) * 10))
    assert 1.0 - w.detach()[0, 0].item() == pytest.approx(step)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        CoTrainStep("both")


@pytest.mark.parametrize("method", ["co", "gated"])
def test_sparsity_on_deployed_pulls_the_noise_free_macs_to_t_d(method):
    torch.manual_seed(0)
    model = small_model().train()
    v1, v2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    terms = {}
    for on in ("sampled", "deployed"):
        torch.manual_seed(1)  # the same gate noise for both
        terms[on] = host_terms(CoTrainStep(method, t_d=0.3, sparsity_on=on)(model, v1, v2,
                                                                            p=0.0).terms)
    # the same pass: both logs agree; only the sparsity term reads a different ratio
    assert terms["sampled"]["deployed_macs_ratio"] == terms["deployed"]["deployed_macs_ratio"]
    assert terms["sampled"]["macs_ratio"] == terms["deployed"]["macs_ratio"]
    assert terms["sampled"]["macs_ratio"] != terms["sampled"]["deployed_macs_ratio"]
    for on, ratio in (("sampled", "macs_ratio"), ("deployed", "deployed_macs_ratio")):
        assert terms[on]["sparsity"] == pytest.approx((terms[on][ratio] - 0.3) ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="sparsity_on"):
        CoTrainStep("co", sparsity_on="noisy")


def test_deployed_macs_of_an_eval_pass_are_its_macs():
    net = create_net("resnet18", stem="cifar").eval()
    with torch.no_grad():
        out = net.forward_gated(torch.randn(4, 3, 32, 32))
    assert torch.equal(out.deployed_macs, out.macs)


def test_gated_macs_count_exactly_under_bf16_autocast():
    """Masks come out of a bf16 autocast pass in bf16, whose sums round counts above 256 (301
    channels on -> 300 or 302): the MACs count them in float64."""
    net = create_net("resnet18", stem="cifar").eval()
    on = {}
    with torch.no_grad():
        for i, (name, block) in enumerate(net.blocks()):
            width = block.gate.fc2.out_channels
            on[name] = min(width, 49 + 36 * i)  # 301 in layer4.1 (512 channels)
            block.gate.fc2.weight.zero_()
            block.gate.fc2.bias.fill_(-1.0)
            block.gate.fc2.bias[:on[name]] = 1.0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.forward_gated(torch.randn(2, 3, 32, 32))
    assert out.masks[-1].dtype == torch.bfloat16 and on["layer4.1"] == 301
    geom = net.geometry((32, 32))
    expected = geom.stem_macs + sum(g.gated_macs(on[g.name]) for g in geom.blocks)
    assert out.macs.tolist() == [float(expected)] * 2


def _gate_grads(model):
    return [p.grad for n, p in model.named_parameters() if ".gate." in f".{n}"]


def test_open_gates_run_every_channel_and_train_nothing_of_the_gates_until_closed():
    from hwbench.nets.gate import set_gates_open

    torch.manual_seed(0)
    model, step = small_model().train(), CoTrainStep("co", t_d=0.3)
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    set_gates_open(model, True)
    step.gates_open = True
    out = step(model, x1, x2, p=1.0)
    terms = host_terms(out.terms)
    # every channel computed: the dense MACs plus the gates' own (0.1 %)
    assert 1.0 <= terms["macs_ratio"] == terms["deployed_macs_ratio"] < 1.01
    assert terms["loss"] == pytest.approx(terms["vicreg"])  # the gate terms: logged, not trained
    assert terms["sparsity"] > 0  # (MACs 1 is far from t_d 0.3)
    out.loss.backward()
    assert all(g is None for g in _gate_grads(model))
    assert model.backbone.layer1[0].bn1.gated.num_batches_tracked == 1  # the gated stream's BNs
    closed = CoTrainStep("co", t_d=0.3)
    set_gates_open(model, False)
    model.zero_grad(set_to_none=True)
    out = closed(model, x1, x2, p=1.0)
    terms = host_terms(out.terms)
    assert terms["macs_ratio"] < 0.9 and terms["loss"] > terms["vicreg"]
    assert set(terms) == set(host_terms(step(model, x1, x2, p=1.0).terms))  # the same keys
    out.loss.backward()
    assert all(g is not None for g in _gate_grads(model))


def test_a_frozen_gate_bias_stays_zero_while_the_gate_learns():
    from hwbench.nets.gate import ChannelGate, freeze_gate_bias

    torch.manual_seed(0)
    model = small_model().train()
    gates = [m for m in model.modules() if isinstance(m, ChannelGate)]
    with torch.no_grad():
        for g in gates:
            g.fc2.bias.fill_(0.5)  # as if realised or trained before
    freeze_gate_bias(model)
    before = [g.fc2.weight.clone() for g in gates]
    opt, step = LARS(lars_param_groups(model), lr=0.05), CoTrainStep("co", t_d=0.3)
    for _ in range(2):
        out = step(model, torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), p=1.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert all(float(g.fc2.bias.abs().max()) == 0.0 and not g.fc2.bias.requires_grad
               for g in gates)
    assert any(not torch.equal(b, g.fc2.weight) for b, g in zip(before, gates))
