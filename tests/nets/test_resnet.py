import pytest
import torch

from hwbench.errors import UsageError
from hwbench.nets import create_net, list_nets
from tests.conftest import conv_mac_counter, force_gates

NETS = list_nets()
STEM_SIZES = [("cifar", 32), ("imagenet", 64)]


def test_registry_has_the_issue_nets():
    assert {"resnet18", "resnet34", "resnet50"} <= set(NETS)


def test_unknown_net_is_a_clear_error():
    with pytest.raises(UsageError, match="unknown network 'resnet7'"):
        create_net("resnet7")


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("stem,size", STEM_SIZES)
def test_output_shape_and_finite(name, stem, size):
    net = create_net(name, stem=stem).eval()
    x = torch.randn(2, 3, size, size)
    for stream in ("dense", "gated"):
        out = net(x, stream=stream)
        assert out.shape == (2, net.num_features)
        assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("stem,size", STEM_SIZES)
def test_every_parameter_gets_a_gradient_in_a_co_training_step(name, stem, size):
    net = create_net(name, stem=stem).train()
    x1, x2 = torch.randn(4, 3, size, size), torch.randn(4, 3, size, size)
    gated = net.forward_gated(x1)
    dense = net(x2, stream="dense")
    loss = gated.features.pow(2).mean() + dense.pow(2).mean() + gated.macs_ratio.mean()
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_gated_stream_gradient_reaches_gates_through_the_features_alone():
    net = create_net("resnet18").train()
    net.forward_gated(torch.randn(4, 3, 32, 32)).features.pow(2).mean().backward()
    for name, block in net.blocks():
        assert block.gate.fc2.weight.grad.abs().sum() > 0, name


def test_streams_share_convs_and_keep_separate_batchnorms():
    net = create_net("resnet18")
    names = {n for n, _ in net.named_parameters()}
    assert "layer1.0.conv1.weight" in names
    assert {"layer1.0.bn1.dense.weight", "layer1.0.bn1.gated.weight"} <= names
    # Training the dense stream moves only the dense BN statistics.
    net.train()
    net(torch.randn(4, 3, 32, 32), stream="dense")
    bn = net.layer1[0].bn1
    assert bn.dense.num_batches_tracked == 1 and bn.gated.num_batches_tracked == 0


# downsample output channels, written from the architectures: resnet18/34 (BasicBlock) change
# width at layer2-4; resnet50 (Bottleneck, expansion 4) at every stage's first block
DOWNSAMPLE_CHANNELS = {"resnet18": [128, 256, 512], "resnet34": [128, 256, 512],
                       "resnet50": [256, 512, 1024, 2048]}


@pytest.mark.parametrize("name", NETS)
def test_shared_downsample_bn_has_one_bn_per_shortcut(name):
    def count(net):
        return sum(p.numel() for p in net.parameters())

    shared = create_net(name)
    separate = create_net(name, shared_downsample_bn=False)
    assert shared.shared_downsample_bn and not separate.shared_downsample_bn
    # a second BN per shortcut: a weight and a bias per channel
    assert count(separate) - count(shared) == 2 * sum(DOWNSAMPLE_CHANNELS[name])
    keys = set(shared.state_dict())
    assert "layer2.0.downsample.bn.weight" in keys
    assert not any(".downsample.bn.dense." in k or ".downsample.bn.gated." in k for k in keys)
    assert "layer2.0.downsample.bn.dense.weight" in set(separate.state_dict())


@pytest.mark.slow
def test_shared_downsample_bn_sees_both_streams_and_separate_sees_one():
    x = torch.randn(4, 3, 32, 32)
    shared, separate = create_net("resnet18").train(), create_net(
        "resnet18", shared_downsample_bn=False).train()
    for net in (shared, separate):
        net(x, stream="dense")
        net.forward_gated(x)
    assert shared.layer2[0].downsample.bn.num_batches_tracked == 2
    bn = separate.layer2[0].downsample.bn
    assert bn.dense.num_batches_tracked == 1 and bn.gated.num_batches_tracked == 1
    # the block's own BNs stay one per stream in both
    assert shared.layer2[0].bn1.dense.num_batches_tracked == 1


def test_net_from_config_builds_the_architecture_a_config_recorded():
    from hwbench.nets import net_from_config

    old = {"arch": "resnet18", "gate": "channel", "widths": None}  # before the key existed
    assert not net_from_config(old, "cifar").shared_downsample_bn
    assert net_from_config({**old, "shared_downsample_bn": True}, "cifar").shared_downsample_bn
    assert not net_from_config({**old, "shared_downsample_bn": False},
                               "cifar").shared_downsample_bn


def test_unknown_stream_is_rejected():
    with pytest.raises(ValueError, match="stream"):
        create_net("resnet18")(torch.randn(1, 3, 32, 32), stream="both")


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_eval_gates_are_deterministic_and_per_sample(name):
    net = create_net(name, stem="cifar").eval()
    x = torch.randn(4, 3, 32, 32)
    a, b = net.forward_gated(x), net.forward_gated(x)
    for ma, mb in zip(a.masks, b.masks):
        assert torch.equal(ma, mb)
    assert torch.equal(a.features, b.features)
    # A sample's decisions do not depend on the rest of its batch.
    alone = net.forward_gated(x[1:2])
    for mb, ml in zip(a.masks, alone.masks):
        assert torch.equal(mb[1:2], ml)


@pytest.mark.slow
def test_training_gates_are_stochastic_and_seeded():
    net = create_net("resnet18").train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)
    a = net.forward_gated(x).masks
    torch.manual_seed(3)
    b = net.forward_gated(x).masks
    c = net.forward_gated(x).masks
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("stem,size", [("cifar", 33), ("cifar", 20), ("imagenet", 57),
                                       ("imagenet", 100)])
def test_any_input_size(stem, size):
    net = create_net("resnet18", stem=stem).eval()
    out = net.forward_gated(torch.randn(2, 3, size, size))
    assert out.features.shape == (2, 512)
    assert out.dense_macs == net.geometry((size, size)).dense_macs()


@pytest.mark.slow
def test_masks_really_gate_the_intermediate_channels():
    net = create_net("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    force_gates(net, 5.0)
    all_on = net(x, stream="gated")
    with torch.no_grad():
        for _, block in net.blocks():
            block.gate.fc2.bias[::2] = -5.0
    half = net(x, stream="gated")
    assert not torch.allclose(all_on, half)
    masks = net.forward_gated(x).masks
    assert all(m[:, ::2].sum() == 0 and m[:, 1::2].all() for m in masks)


@pytest.mark.parametrize("name", NETS)
def test_dense_macs_match_an_independent_conv_hook_counter(name):
    net = create_net(name, stem="imagenet").eval()
    counts, remove = conv_mac_counter(net)
    net(torch.randn(1, 3, 64, 64), stream="dense")
    remove()
    assert sum(counts) == net.geometry((64, 64)).dense_macs()


@pytest.mark.parametrize("name", NETS)
def test_per_sample_macs_all_on_and_all_off_are_exact(name):
    net = create_net(name, stem="cifar").eval()
    x = torch.randn(3, 3, 32, 32)
    geom = net.geometry((32, 32))
    force_gates(net, 5.0)
    counts, remove = conv_mac_counter(net)
    out = net.forward_gated(x)
    remove()
    # With every channel on, the gated network runs every conv plus the gates: the hook count.
    assert out.macs.tolist() == [float(sum(counts))] * 3
    force_gates(net, -5.0)
    off = net.forward_gated(x).macs
    fixed = geom.stem_macs + sum(b.downsample_macs + b.gate_macs() for b in geom.blocks)
    assert off.tolist() == [float(fixed)] * 3
