"""Recovery fine-tuning: the pattern stays frozen, the gated stream learns, the teacher does not."""

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import summarise
from hwbench.train.finetune import FinetuneConfig, finetune, load_model, lr_at
from tests.conftest import random_gate_heads


@pytest.fixture(scope="module")
def deployed_ck(tmp_path_factory):
    """A tiny co-trained run's network, deployed (decided channels closed), as a checkpoint
    dict, and its calibration images."""
    from hwbench.data import sample_images
    from hwbench.deploy.network import deploy
    from hwbench.deploy.pipeline import save_network
    from hwbench.train.config import TrainConfig
    from hwbench.train.loop import train

    d = tmp_path_factory.mktemp("finetune")
    cfg = TrainConfig(dataset="synthetic", n_synthetic=64, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=2, energy=False,
                      eval_initial=False, out=str(d / "run"), models_dir=str(d / "models"))
    train(cfg)
    ck = torch.load(d / "run" / "checkpoint.pt", weights_only=False)
    net = load_model(ck).backbone
    random_gate_heads(net)  # a mix of always-on, always-off and dynamic channels
    calib, _ = sample_images("synthetic", True, 32, n_synthetic=64, seed=0)
    deploy(net, calib)
    save_network(d / "run" / "checkpoint.pt", net, d / "deployed.pt")
    return torch.load(d / "deployed.pt", weights_only=False), calib


def _state(model, gate: bool) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()
            if (".gate." in f".{k}") == gate and v.is_floating_point()}


@pytest.mark.slow
def test_finetuning_moves_the_network_and_never_its_gates(deployed_ck):
    ck, calib = deployed_ck
    before = load_model(ck)
    pattern = summarise(before.backbone, [calib])
    model, rec = finetune(ck, FinetuneConfig(steps=3), torch.device("cpu"))
    gates, rest = _state(before, True), _state(before, False)
    after_gates, after_rest = _state(model, True), _state(model, False)
    assert all(torch.equal(gates[k], after_gates[k]) for k in gates)  # running stats too
    moved = [k for k in rest if not torch.equal(rest[k], after_rest[k])]
    assert any("conv" in k for k in moved) and any("projector" in k for k in moved)
    after = summarise(model.backbone, [calib])
    for a, b in zip(pattern.layers, after.layers):  # the closed channels stay decided
        assert set(a.on_idx or []) <= set(b.on_idx or [])
        assert set(b.on_idx or []) | set(b.dynamic_idx or []) <= \
            set(a.on_idx or []) | set(a.dynamic_idx or [])
    assert rec["steps"] == 3 and all(map(torch.isfinite, map(torch.tensor,
                                                            rec["last"].values())))


@pytest.mark.slow
def test_the_teacher_is_the_dense_stream_before_tuning(deployed_ck):
    """Distillation alone, many steps at a high rate: the gated features approach the dense
    stream's of the checkpoint, not of the tuned network (which moves with the shared convs)."""
    ck, calib = deployed_ck
    before = load_model(ck)
    with torch.no_grad():
        teacher = before.backbone(calib, stream="dense")
        start = 1 - torch.cosine_similarity(before.backbone(calib, stream="gated"), teacher)
    model, rec = finetune(ck, FinetuneConfig(steps=8, distill=1e3, lr_share=4.0),
                          torch.device("cpu"))
    with torch.no_grad():
        end = 1 - torch.cosine_similarity(model.backbone(calib, stream="gated"), teacher)
    assert float(end.mean()) < float(start.mean())
    assert rec["last"]["distill"] < rec["first"]["distill"]


@pytest.mark.parametrize("steps,distill", [(-1, 25.0), (3, -1.0), (3, float("nan"))])
def test_bad_fine_tuning_values_are_usage_errors(steps, distill):
    with pytest.raises(UsageError):
        FinetuneConfig(steps=steps, distill=distill).check()


def test_the_rate_warms_up_then_decays_to_zero():
    rates = [lr_at(1.0, s, 20) for s in range(20)]
    assert rates[0] == 0.5 and rates[1] == 1.0  # warm-up over the first tenth (2 steps)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:])) and rates[-1] < 0.01
