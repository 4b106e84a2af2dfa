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
