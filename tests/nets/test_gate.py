import pytest
import torch

from hwbench.nets.gate import GATE_TEMPERATURE, ChannelGate, gumbel_sigmoid_st


def test_temperature_is_the_papers():
    assert abs(GATE_TEMPERATURE - 2 / 3) < 1e-12


def test_gumbel_sigmoid_is_hard_with_straight_through_gradient():
    logits = torch.randn(64, 32, requires_grad=True)
    out = gumbel_sigmoid_st(logits)
    assert set(out.detach().unique().tolist()) <= {0.0, 1.0}
    out.sum().backward()
    assert logits.grad is not None and (logits.grad > 0).all()


def test_gumbel_sigmoid_on_probability_is_sigmoid_of_logit():
    # Thresholding sigmoid((l + logistic noise) / T) at 0.5 is on iff l + noise >= 0, whose
    # probability is sigmoid(l) whatever T is.
    torch.manual_seed(1)
    for logit in (-1.0, 0.0, 1.5):
        x = torch.full((200_000,), logit)
        rate = gumbel_sigmoid_st(x, temperature=0.3).mean().item()
        assert abs(rate - torch.sigmoid(torch.tensor(logit)).item()) < 0.005


def test_eval_gate_thresholds_logits_at_zero_without_noise():
    gate = ChannelGate(32, 16).eval()
    x = torch.randn(8, 32, 5, 5)
    expected = (gate.logits(x) >= 0).float()
    for _ in range(3):
        assert torch.equal(gate(x), expected)


def test_gate_shapes_and_hidden_width():
    gate = ChannelGate(64, 128)
    assert gate.fc1.out_channels == 16
    assert gate(torch.randn(4, 64, 7, 7)).shape == (4, 128)


@pytest.mark.parametrize("surrogate", ["sigmoid", "linear"])
def test_deployed_decisions_are_the_threshold_whatever_their_gradient(surrogate):
    from hwbench.nets.gate import deterministic_st

    logits = torch.tensor([-9.0, -0.1, 0.0, 0.1, 9.0], requires_grad=True)
    m = deterministic_st(logits, 2 / 3, surrogate)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    m.sum().backward()
    g = logits.grad
    assert g[2] == pytest.approx(1 / (4 * 2 / 3))  # both: the sigmoid's slope at 0
    if surrogate == "sigmoid":  # saturated gates get (almost) nothing
        assert g[0] < 1e-5 and g[4] < 1e-5
    else:  # the linear surrogate reaches them as strongly as gates at the threshold
        assert torch.allclose(g, torch.full_like(g, 0.375))


def test_a_gate_passes_its_surrogate_to_the_deployed_decisions():
    gate = ChannelGate(8, 4).train()
    with torch.no_grad():
        gate.fc2.bias.fill_(20.0)  # saturated on
    x = torch.randn(3, 8, 4, 4)
    for surrogate, alive in (("sigmoid", False), ("linear", True)):
        gate.surrogate = surrogate
        gate.zero_grad()
        gate(x)
        gate.deployed.sum().backward()
        assert (gate.fc2.bias.grad.abs().min() > 1e-3) == alive


def test_the_linear_surrogate_moves_the_gate_and_leaves_the_features_alone():
    torch.manual_seed(0)
    lin, ref = ChannelGate(8, 4).train(), ChannelGate(8, 4).train()
    ref.load_state_dict(lin.state_dict())
    lin.surrogate = "linear"
    x = torch.randn(5, 8, 4, 4, requires_grad=True)
    lin(x)
    ref(x.detach())
    assert torch.equal(lin.deployed.detach(), ref.deployed.detach())  # same decisions
    # one running-average update per forward, as with the sigmoid surrogate
    assert torch.allclose(lin.bn.running_mean, ref.bn.running_mean)
    lin.deployed.sum().backward()
    assert x.grad is None  # nothing reaches the features
    assert lin.fc2.weight.grad.abs().sum() > 0 and lin.fc1.weight.grad.abs().sum() > 0
