"""The differentiable latency estimate (--budget latency) and the multi-device targets."""

import copy

import numpy as np
import pytest
import torch

from hwbench.engine import pattern_inputs, realise
from hwbench.errors import UsageError
from hwbench.nets import create_net
from hwbench.pattern.gate_pattern import mixed_pattern, summarise, synthesise
from hwbench.pick.goal import parse_goals
from hwbench.profile.predictor import Predictor, interp
from hwbench.train.budget import LatencyBudget, LatencyEstimate
from tests.conftest import goals_for, one_line_error, run_cli
from tests.profile.test_predictor import synthetic_profile


def curved_profile(seed=0):
    """The synthetic profile with 5-point, non-linear block tables and both engine plans."""
    prof = copy.deepcopy(synthetic_profile())
    rng = np.random.default_rng(seed)
    for b in prof["table"]["blocks"]:
        c = b["channels"]
        b["grid"] = [0, c // 8, c // 3, (3 * c) // 4, c]
        steps = np.cumsum(rng.uniform(0.01, 0.2, size=5))
        b["plain_ms"] = [float(v) for v in steps]
        b["gated_ms"] = [float(v) + 0.03 for v in steps]
    prof["dynamic_executes"] = ["kept", "expected"] * 4
    prof["calibration"]["scale"] = 1.3
    return prof


def test_interp_matches_numpy_and_has_the_segment_slope():
    grid = torch.tensor([0.0, 2.0, 5.0, 8.0], dtype=torch.float64)
    vals = torch.tensor([1.0, 2.0, 2.5, 5.0], dtype=torch.float64)
    for x in (0.0, 1.0, 2.0, 3.7, 5.0, 8.0):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y = interp(xt, grid, vals)
        assert y.item() == pytest.approx(np.interp(x, grid.numpy(), vals.numpy()))
        y.backward()
        assert float(xt.grad) != 0.0  # no flat spot, even at the grid's ends


@pytest.mark.parametrize("percentile", ["p50", "p90", "p99"])
def test_the_estimate_equals_the_predictor_at_pattern_files(percentile):
    prof = curved_profile()
    est, pred = LatencyEstimate(prof, percentile), Predictor(prof)
    for seed, t_d in enumerate((0.2, 0.45, 0.7, 1.0)):
        for p in (synthesise("resnet18", "cifar", 32, t_d),
                  mixed_pattern("resnet18", "cifar", 32, t_d, seed=seed)):
            assert est.of_pattern(p) == pytest.approx(pred.predict(p, percentile), rel=1e-12)


@pytest.mark.slow
def test_the_estimate_from_a_hard_pass_equals_the_predictor_of_its_pattern():
    """Eval-mode masks of a batch, and the pattern summarised from that same batch."""
    prof = curved_profile(1)
    est = LatencyEstimate(prof, "p90")
    for seed in range(3):
        net = realise(mixed_pattern("resnet18", "cifar", 32, 0.4 + 0.1 * seed, seed=seed),
                      seed=seed).eval()
        x = pattern_inputs(16, 32, seed=seed)
        with torch.no_grad():
            masks = net.forward_gated(x).masks
        pattern = summarise(net, [x])
        assert any(lp.dynamic for lp in pattern.layers)  # the test covers dynamic channels
        assert float(est(masks)) == pytest.approx(Predictor(prof).predict(pattern, "p90"),
                                                  rel=1e-9)


@pytest.mark.parametrize("which", ["masks", "deployed_masks"])
def test_every_gate_gets_a_gradient_from_the_latency_estimate(which):
    torch.manual_seed(0)
    net = create_net("resnet18", stem="cifar").train()
    est = LatencyEstimate(curved_profile(2), "p90")
    out = net.forward_gated(torch.randn(8, 3, 32, 32))
    LatencyBudget([est], [1.0])(getattr(out, which))[0].backward()
    for name, gate in ((n, m) for n, m in net.named_modules() if n.endswith(".gate")):
        g = gate.fc2.weight.grad
        assert g is not None and g.abs().sum() > 0, name


def test_deployed_masks_are_the_noise_free_decisions():
    torch.manual_seed(0)
    net = create_net("resnet18", stem="cifar").eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        eval_pass = net.forward_gated(x)
    assert all(torch.equal(a, b) for a, b in zip(eval_pass.masks, eval_pass.deployed_masks))
    # gates in training mode (noise, straight-through), every BatchNorm still in eval mode so
    # the gates see the same inputs: the noisy masks differ, the deployed decisions do not
    gates = [m for m in net.modules() if m.__class__.__name__ == "ChannelGate"]
    for g in gates:
        g.train()
        g.bn.eval()
    noisy = net.forward_gated(x)
    assert len(noisy.deployed_masks) == len(gates) == 8
    # the first gate sees the same input in both passes (later ones see the noisy masks' effect)
    assert not torch.equal(noisy.masks[0].detach(), eval_pass.masks[0])
    assert torch.equal(noisy.deployed_masks[0].detach(), eval_pass.masks[0])
    for d in noisy.deployed_masks:
        assert d.requires_grad and set(d.detach().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_the_budget_term_shapes_and_combines():
    prof = synthetic_profile()
    e1, e2 = LatencyEstimate(prof, "p50"), LatencyEstimate(prof, "p50")
    p = synthesise("resnet18", "cifar", 32, 0.5)
    net = realise(p).eval()
    with torch.no_grad():
        masks = net.forward_gated(pattern_inputs(4, 32)).masks
    ms = float(e1(masks))
    two = LatencyBudget([e1], [ms / 2])(masks)[0]
    assert float(two) == pytest.approx(1.0)  # (2 - 1)^2
    assert float(LatencyBudget([e1], [ms * 2], "one-sided")(masks)[0]) == 0.0
    assert float(LatencyBudget([e1], [ms * 2])(masks)[0]) == pytest.approx(0.25)
    both = [ms / 2, ms * 2]
    assert float(LatencyBudget([e1, e2], both, combine="max")(masks)[0]) == pytest.approx(1.0)
    assert float(LatencyBudget([e1, e2], both, combine="sum")(masks)[0]) == pytest.approx(1.25)


def test_device_targets_parse_and_refuse_duplicates_and_bad_values():
    [g] = parse_goals(["5ms"], "cpu")
    assert (g.where, g.target.ms, g.on.device, g.profile) == ("cpu", 5.0, "cpu", None)
    [g] = parse_goals(["0.6x"], "p.json")  # a profile file: its device is read from it later
    assert (g.where, g.target.ratio, g.on.device) == ("p.json", 0.6, "cpu")
    a, b = parse_goals(["cpu:20ms", "C:/profiles/x.json:2ms"], "cpu")  # split at the last colon
    assert (a.where, a.target.ms) == ("cpu", 20.0)
    assert (b.where, b.target.ms) == ("C:/profiles/x.json", 2.0)
    if not torch.cuda.is_available():  # the deployment is checked as the target is read
        with pytest.raises(UsageError, match="no CUDA GPU"):
            parse_goals(["cuda:1:2ms"], "cpu")
    with pytest.raises(UsageError, match="more than one target for cpu"):
        parse_goals(["cpu:20ms", "cpu:10ms"], "cpu")
    with pytest.raises(UsageError, match="prefix each with its device"):
        parse_goals(["20ms", "10ms"], "cpu")
    with pytest.raises(UsageError, match="cannot parse latency"):
        parse_goals(["cpu:fast"], "cpu")
    with pytest.raises(UsageError, match="name a device"):
        parse_goals([":5ms"], "cpu")
    with pytest.raises(UsageError, match="unknown runtime"):
        parse_goals(["5ms"], "cpu", runtime="tensorrt")


def test_train_cli_refuses_bad_multi_device_targets(tmp_path):
    base = ["train", "--dataset", "synthetic", "--out", str(tmp_path / "r")]
    r = run_cli(*base, "--target-latency", "cpu:2ms", "--target-latency", "cpu:3ms")
    assert "more than one target for cpu" in one_line_error(r)
    r = run_cli(*base, "--target-latency", "cpu:soon")
    assert "cannot parse latency" in one_line_error(r)
    r = run_cli(*base, "--budget", "latency")
    assert "--budget latency needs --target-latency" in one_line_error(r)
    r = run_cli(*base, "--budget", "latency", "--target-latency",
                f"{tmp_path / 'missing.json'}:2ms")
    assert "no such profile" in one_line_error(r)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_latency_budget_run_records_its_targets_and_predicted_latency(tmp_path):
    import json

    from hwbench.deploy.pipeline import train_to_target
    from hwbench.io import atomic_write_json
    from hwbench.train.config import TrainConfig

    prof_path = atomic_write_json(tmp_path / "p.json", curved_profile(3))
    cfg = TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=2, energy=False,
                      eval_initial=False, budget="latency", out=str(tmp_path / "run"),
                      models_dir=str(tmp_path / "models"))
    target_ms = Predictor(curved_profile(3)).predict(
        synthesise("resnet18", "cifar", 32, 0.5), "p90")
    summary = train_to_target(cfg, goals_for(cfg, f"{prof_path}:{target_ms}ms"))
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    assert conf["budget"] == "latency" and len(conf["latency_targets"]) == 1
    t = conf["latency_targets"][0]
    assert t["profile"] == str(prof_path) and t["target_ms"] == pytest.approx(target_ms)
    assert conf["t_d"] == pytest.approx(0.5, abs=0.02)  # the bound's t_d: the profile's pick
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["latency_ms_0"] > 0 and "sparsity" in row
    assert "verify" not in summary  # a profile of a "Test CPU": not this machine


def test_a_latency_budget_has_its_own_measured_defaults_and_the_user_overrides_them():
    from hwbench.train.config import LATENCY_DEFAULTS, PAPER_DEFAULTS, budget_defaults

    assert budget_defaults("flops") == PAPER_DEFAULTS == {"lam": 5.0, "surrogate": "sigmoid"}
    assert budget_defaults("latency") == LATENCY_DEFAULTS and LATENCY_DEFAULTS["lam"] == 50.0
    assert budget_defaults("latency", lam=7.0, surrogate="linear") == \
        {"lam": 7.0, "surrogate": "linear"}
    assert budget_defaults("flops", lam=0.0)["lam"] == 0.0  # 0 is a value, not "unset"


def _prefix_masks(kept, batch=4):
    """(B, C) prefix masks of resnet18: block i keeps kept[i] channels (an int for every input,
    or a list with one width per input)."""
    from hwbench.nets.geometry import net_geometry

    masks = []
    for b, k in zip(net_geometry("resnet18", "cifar", 32).blocks, kept):
        ks = torch.tensor(k if isinstance(k, list) else [k] * batch)
        masks.append((torch.arange(b.width)[None, :] < ks[:, None]).double())
    return masks


@pytest.mark.parametrize("percentile", ["p50", "p90", "p99"])
def test_width_estimate_at_hard_masks_equals_the_predictor_of_their_pattern(percentile):
    from hwbench.nets.geometry import net_geometry
    from hwbench.pattern.gate_pattern import GatePattern, LayerPattern

    prof = curved_profile(3)
    kept = [16, 48, 64, 32, 96, 128, 256, 16]
    est = LatencyEstimate(prof, percentile, gate="width:16")
    layers = [LayerPattern.from_width_hist(b.name, b.width, 16,
                                           [float(j * 16 == k) for j in range(b.width // 16 + 1)])
              for b, k in zip(net_geometry("resnet18", "cifar", 32).blocks, kept)]
    pattern = GatePattern("resnet18", "cifar", 32, layers, gate=est.gate)
    want = Predictor(prof).predict(pattern, percentile)
    assert float(est(_prefix_masks(kept))) == pytest.approx(want, rel=1e-12)
    assert est.of_pattern(pattern) == pytest.approx(want, rel=1e-12)


def test_width_estimate_charges_each_input_its_own_width():
    prof = curved_profile(4)
    prof["dynamic_executes"] = ["expected"] * 8
    pred = Predictor(prof)
    kept = [[16, 64, 64, 64], 64, 128, 128, 256, 256, 512, 512]  # block 0's width varies
    masks = _prefix_masks(kept)
    factor = pred.scale * pred.ratios["p90"]
    per_input = [factor * (pred.fixed_ms + pred.block_ms(0, k0, True)
                           + sum(pred.block_ms(i, k, False)
                                 for i, k in enumerate(kept[1:], start=1)))
                 for k0 in kept[0]]
    mean = LatencyEstimate(prof, "p90", gate="width:16")
    tail = LatencyEstimate(prof, "p90", gate="width:16", reduce="tail")
    assert float(mean(masks)) == pytest.approx(sum(per_input) / 4, rel=1e-12)
    assert float(tail(masks)) == pytest.approx(max(per_input), rel=1e-12)  # ceil(10% of 4) = 1
    assert float(tail(masks)) > float(mean(masks))
    # channel gates price the batch, not the input: the same masks cost what 64 channels do
    assert float(LatencyEstimate(prof, "p90")(masks)) != pytest.approx(float(mean(masks)))


@pytest.mark.parametrize("reduce", ["mean", "tail"])
def test_every_width_gate_gets_a_gradient_from_the_latency_estimate(reduce):
    torch.manual_seed(0)
    net = create_net("resnet18", stem="cifar", gate="width:16").train()
    est = LatencyEstimate(curved_profile(2), "p90", gate="width:16", reduce=reduce)
    out = net.forward_gated(torch.randn(8, 3, 32, 32))
    LatencyBudget([est], [1.0])(out.deployed_masks)[0].backward()
    for name, gate in ((n, m) for n, m in net.named_modules() if n.endswith(".gate")):
        g = gate.fc2.weight.grad
        assert g is not None and g.abs().sum() > 0, name
