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


# ---- width gates (--gate width:G) ----

from hwbench.errors import UsageError  # noqa: E402
from hwbench.nets.gate import GateSpec, kept_groups, nested_st, parse_gate  # noqa: E402


def _is_prefix(mask: torch.Tensor) -> bool:
    """Every row non-increasing along the channels: a prefix of ones, then zeros."""
    return bool((mask.diff(dim=1) <= 0).all())


@pytest.mark.parametrize("training", [False, True])
def test_width_gate_decisions_are_nested_prefixes_of_whole_groups(training):
    torch.manual_seed(0)
    gate = ChannelGate(32, 64, spec=GateSpec("width", 16)).train(training)
    with torch.no_grad():
        torch.nn.init.normal_(gate.fc2.weight, std=20.0)
        gate.fc2.bias.copy_(torch.tensor([1.0, -0.2, 0.5, -1.0]))  # a middle group could be on
    x = torch.randn(256, 32, 4, 4) + 3.0 * torch.randn(256, 32, 1, 1)
    mask = gate(x).detach()
    assert mask.shape == (256, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert _is_prefix(mask)
    groups = mask.view(256, 4, 16)
    assert bool((groups == groups[:, :, :1]).all())  # whole groups
    kept = mask.sum(dim=1) / 16
    assert len(kept.unique()) >= 3  # the decisions vary per input
    if not training:
        assert torch.equal(kept.long(), kept_groups(gate.logits(x)).long())


def test_nested_gradient_reaches_every_group_even_past_the_first_off_one():
    logits = torch.tensor([[-3.0, 2.0, 1.0, 0.5]], requires_grad=True)
    soft = torch.sigmoid(logits)
    hard = (logits >= 0).float()
    out = nested_st(hard, soft)
    assert out.tolist() == [[0.0, 0.0, 0.0, 0.0]]  # group 0 off: all off
    (out * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert bool((logits.grad.abs() > 1e-6).all())
    # the hard cumulative product alone would give group 3 no gradient
    h = hard.clone().requires_grad_(True)
    torch.cumprod(h, dim=1).sum().backward()
    assert h.grad[0, 3] == 0


def test_width_gate_gradient_reaches_every_logit_row_through_the_network():
    from hwbench.nets import create_net

    torch.manual_seed(3)
    net = create_net("resnet18", stem="cifar", gate="width:16").train()
    out = net.forward_gated(torch.randn(8, 3, 32, 32))
    (out.features.pow(2).mean() + out.macs_ratio.mean()).backward()
    for name, block in net.blocks():
        rows = block.gate.fc2.weight.grad.flatten(1).abs().sum(dim=1)
        assert rows.shape[0] == block.conv1.out_channels // 16, name
        assert bool((rows > 0).all()), name


@pytest.mark.parametrize("text", ["width", "width:0", "width:-4", "width:x", "chanel", "width:1.5",
                                  "channel:4"])
def test_bad_gate_values_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as err:
        parse_gate(text)
    assert "\n" not in str(err.value) and "width:G" in str(err.value)


def test_gate_step_must_divide_every_width():
    from hwbench.nets import create_net

    assert parse_gate("width:16") == GateSpec("width", 16) and parse_gate("channel").step == 1
    with pytest.raises(UsageError, match="multiple of 48"):
        create_net("resnet18", stem="cifar", gate="width:48")


@pytest.mark.slow
def test_width_gates_start_at_full_width_deployed_and_mostly_full_when_sampled():
    from hwbench.nets import create_net

    torch.manual_seed(2)
    net = create_net("resnet18", stem="cifar", gate="width:16")
    x = torch.randn(32, 3, 32, 32)
    deployed = net.eval().forward_gated(x)
    assert float(deployed.macs_ratio.min()) > 0.99  # every input keeps every group
    sampled = net.train().forward_gated(x)
    assert 0.5 < float(sampled.macs_ratio.mean()) < 0.95
    # channel gates keep the reference's zero bias
    assert float(create_net("resnet18").layer1[0].gate.fc2.bias.abs().max()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("gate_kind", ["channel", "width:16"])
def test_without_noise_the_training_pass_runs_the_deployed_decisions(gate_kind):
    """noise scale 0: the sampled masks a training pass runs are its noise-free decisions
    (what the deployed network runs), and the straight-through gradient still reaches the gate;
    scale 1: they differ (the paper's noise)."""
    from hwbench.nets import create_net
    from hwbench.nets.gate import set_gate_noise

    torch.manual_seed(3)
    net = create_net("resnet18", stem="cifar", gate=gate_kind).train()
    for _, block in net.blocks():  # logits spread around 0, as after some training
        torch.nn.init.normal_(block.gate.fc2.bias, 0.0, 1.0)
    x = torch.randn(16, 3, 32, 32)
    noisy = net.forward_gated(x)
    assert any(not torch.equal(m, d) for m, d in zip(noisy.masks, noisy.deployed_masks))
    set_gate_noise(net, 0.0)
    quiet = net.forward_gated(x)
    for m, d in zip(quiet.masks, quiet.deployed_masks):
        assert torch.equal(m.detach(), d.detach())
    assert torch.allclose(quiet.macs_ratio, quiet.deployed_macs_ratio)
    quiet.macs_ratio.sum().backward()
    assert all(b.gate.fc2.bias.grad is not None and b.gate.fc2.bias.grad.abs().sum() > 0
               for _, b in net.blocks())


def test_half_the_noise_flips_fewer_decisions_than_the_full_noise():
    torch.manual_seed(4)
    logits = torch.randn(256, 64)
    hard = (logits >= 0).float()
    flips = [float((gumbel_sigmoid_st(logits, noise_scale=s) != hard).float().mean())
             for s in (1.0, 0.5, 0.0)]
    assert flips[0] > flips[1] > flips[2] == 0.0


def test_a_stage_without_a_part_for_a_kind_says_so_in_one_line():
    from hwbench.errors import UsageError
    from hwbench.nets.gate import PREFIX, SUBSET, GateSpec, strategy

    width = GateSpec.of("width", 16)
    assert strategy({PREFIX: "prefix part", SUBSET: "subset part"}, width, "x") == "prefix part"
    with pytest.raises(UsageError, match="the engine has no strategy for width gates") as exc:
        strategy({SUBSET: "subset part"}, width, "the engine")
    assert "\n" not in str(exc.value)
