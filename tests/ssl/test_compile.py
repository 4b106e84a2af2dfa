"""One compiled co-training step (torch.compile, inductor) gives the eager step's loss and
terms, on a tiny net (one block per stage, narrow): compiling resnet18's step takes minutes on a
small CPU. Forward only: the backward graph is compiled at the first backward, as long again
(tests/train/test_train.py runs compiled training steps through Dynamo with its eager backend)."""

import shutil

import pytest
import torch

from hwbench.nets.geometry import ARCHS, ArchSpec
from hwbench.nets.resnet import GatedResNet
from hwbench.ssl.model import CoTrainStep, Objective, SSLModel

TINY = ArchSpec("tiny", "basic", (1, 1, 1, 1), planes=(16, 16, 32, 32))


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="inductor compiles C++ on a CPU: no C++ compiler here")
def test_a_compiled_step_gives_the_eager_loss(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setitem(ARCHS, "tiny", TINY)
    # the compiled graph draws the gates' noise from torch's own generator, as eager does
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch.manual_seed(0)
    model = SSLModel(GatedResNet(TINY, stem="cifar"), proj_dims=(16, 16, 8)).train()
    objective = Objective(model, CoTrainStep("co", t_d=0.5))
    v1, v2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    p = torch.full((), 0.9, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        if compiled:
            torch._dynamo.reset()
            objective.compile()
        torch.manual_seed(1)
        loss, terms = objective(v1, v2, p)
        assert loss.requires_grad
        results.append((loss.detach(), terms))
    (l0, t0), (l1, t1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    assert t0.keys() == t1.keys()
    torch.testing.assert_close(t1["macs_ratio"], t0["macs_ratio"])  # the same gate decisions
    torch.testing.assert_close(t1["sparsity"], t0["sparsity"], rtol=1e-4, atol=1e-6)
