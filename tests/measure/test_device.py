"""What a device name promises: fp32 is IEEE fp32 (which fingerprints are the same machine:
tests/profile/test_locate.py)."""

import pytest
import torch

from hwbench.measure.device import ieee_fp32


@pytest.fixture
def tf32_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_on_cuda_turns_tf32_off_and_leaves_the_cpu_alone(tf32_flags):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    ieee_fp32("cpu")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    ieee_fp32(torch.device("cuda", 0))
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.slow
def test_an_engine_built_for_cuda_turns_tf32_off_before_it_touches_the_device(tf32_flags):
    from hwbench.engine import build_engine, realise
    from hwbench.pattern.gate_pattern import mixed_pattern

    torch.backends.cudnn.allow_tf32 = True
    p = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=0)
    try:
        build_engine(realise(p, seed=0), "dense", p, device="cuda")
    except (RuntimeError, AssertionError):  # no CUDA here: the flag is set before the move
        pass
    assert not torch.backends.cudnn.allow_tf32
