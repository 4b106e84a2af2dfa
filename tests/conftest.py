import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwbench.cli import cli


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests (tests/gpu, run by scripts/gpu_check.sh) are opt-in: unless ``-m`` names
    ``gpu``, they are deselected, so ``make test`` / ``pytest -q`` never runs them. Every other
    test runs in the order collected (no OpenVINO-last ordering: issue 24,
    ``tests/deploy/test_pipeline.py`` runs OpenVINO end to end and forks after it)."""
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """One tiny co-trained run (synthetic data, 64 images, two steps), trained once per session
    for the tests that read its checkpoint and saved pattern and write nothing into it:
    ``(RUN, MODELS/run.json, RUN/checkpoint.pt)``."""
    from hwbench.train.config import TrainConfig
    from hwbench.train.loop import train

    d = tmp_path_factory.mktemp("tiny_trained")
    train(TrainConfig(dataset="synthetic", n_synthetic=64, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=2, energy=False,
                      eval_initial=False, out=str(d / "run"), models_dir=str(d / "models")))
    return d / "run", d / "models" / "run.json", d / "run" / "checkpoint.pt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def conv_mac_counter(module: nn.Module):
    """An independent MAC counter: forward hooks on every Conv2d.

    MACs of one conv per sample = output elements per sample x (C_in / groups) x kh x kw.
    Returns (counts list, remove handle function).
    """
    counts: list[int] = []

    def hook(mod: nn.Conv2d, inputs, output):
        per_sample_out = output[0].numel()
        kh, kw = mod.kernel_size
        counts.append(per_sample_out * (mod.in_channels // mod.groups) * kh * kw)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.Conv2d)]

    def remove():
        for h in handles:
            h.remove()

    return counts, remove


def force_gates(net, bias: float) -> None:
    """Make every gate output constant: zero weights, a bias of the given sign."""
    with torch.no_grad():
        for _, block in net.blocks():
            block.gate.fc2.weight.zero_()
            block.gate.fc2.bias.fill_(bias)


def run_cli(*args):
    """Black-box run of the ``hwbench`` CLI (arguments converted to strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    """Assert the run failed with ``code`` and printed exactly one ``hwbench: error:`` line."""
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hwbench: error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def random_gate_heads(net, spread: float | None = None) -> None:
    """Random last convs in every gate (a width gate's start at zero, so that its bias alone
    decides at first): decisions that vary from input to input, as a trained gate's do.
    ``spread``: group j's bias falls linearly from +spread to -spread, so inputs keep different
    widths. Seed the caller's RNG first."""
    import torch

    with torch.no_grad():
        for _, block in net.blocks():
            torch.nn.init.kaiming_normal_(block.gate.fc2.weight, mode="fan_out",
                                          nonlinearity="relu")
            if spread is not None:
                b = block.gate.fc2.bias
                b.copy_(torch.linspace(spread, -spread, b.numel()))


def goals_for(cfg, *targets: str, device: str = "cpu", percentile: str = "p90",
              runtime: str | None = None, quick: bool = True, say=lambda s: None):
    """What the CLI resolves for ``train --target-latency T...`` (``T``, ``dev:T`` or
    ``PROFILE.json:T``): the goals, parsed, checked and located for ``cfg``'s network."""
    from hwbench.data import info
    from hwbench.pick.goal import locate, parse_goals

    meta = info(cfg.dataset)
    return locate(parse_goals(list(targets), device, percentile, runtime), cfg.arch, meta.stem,
                  meta.input_size, quick=quick, say=say)


def trim_goal_for(run, target: str, profile=None, runtime: str | None = None,
                  device: str = "cpu", percentile: str = "p90"):
    """What the CLI resolves for ``trim RUN --target-latency T [--profile P] [--runtime R]``."""
    from hwbench.engine.runtimes.deployment import deploy_on
    from hwbench.pick.goal import trim_goal

    return trim_goal(run, target, deploy_on(device, runtime), percentile,
                     None if profile is None else str(profile))


def measuring_goal_for(pattern_path, target, profile=None, runtime: str | None = None,
                       device: str = "cpu", percentile: str = "p90", allow_foreign=False):
    """What the CLI resolves for ``verify --pattern P --target-latency T [--profile F]``."""
    from hwbench.engine.runtimes.deployment import deploy_on
    from hwbench.pattern.gate_pattern import load_pattern
    from hwbench.pick.goal import measuring_goal

    pattern = load_pattern(pattern_path)
    return measuring_goal(target, deploy_on(device, runtime), pattern.arch, pattern.stem,
                          pattern.input_size, percentile,
                          None if profile is None else str(profile), allow_foreign)
