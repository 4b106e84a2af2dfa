import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hwbench.cli import cli

# modules that load OpenVINO into the test process: they run last (see below)
OPENVINO_MODULES = ("tests/engine/test_runtimes.py", "tests/test_export.py",
                    "tests/test_profile_runtimes.py")


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests (tests/gpu, run by scripts/gpu_check.sh) are opt-in: unless ``-m`` names
    ``gpu``, they are deselected, so ``make test`` / ``pytest -q`` never runs them.

    Tests that load OpenVINO run last: a process that has compiled OpenVINO models died of
    SIGSEGV later in the suite (DataLoader workers forked from it, fixed in
    ``data.worker_context``; a second crash further on, at tests of locate / io / the GPU
    script, is not traced). Every test still runs; none runs in a process where OpenVINO
    was loaded before it, except OpenVINO's own."""
    ov = [it for it in items if it.nodeid.startswith(OPENVINO_MODULES) or "openvino" in it.nodeid]
    if ov:
        items[:] = [it for it in items if it not in ov] + ov
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


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
