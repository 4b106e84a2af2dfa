import json

import pytest
import torch

from hwbench.io import atomic_write_json
from hwbench.patterns import mixed_pattern
from hwbench.train import TrainConfig, train
from tests.conftest import one_line_error, run_cli
from tests.test_locate import local_profile


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    train(TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, out=str(d / "run"),
                      energy=False, models_dir=str(d / "models")))
    return d / "models" / "run.json", d / "run" / "checkpoint.pt"


def test_verify_met_and_missed_with_a_checkpoint(trained, tmp_path):
    pattern, ckpt = trained
    prof = atomic_write_json(tmp_path / "p.json", local_profile())
    r = run_cli("verify", "--pattern", pattern, "--checkpoint", ckpt, "--target-latency", "10s",
                "--profile", prof, "--max-time", "0.2", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["met"] and d["predicted"]["p90_ms"] > 0 and d["measured"]["n"] >= 64
    assert len(d["measured"]["samples_ms"]) == d["measured"]["n"]
    r = run_cli("verify", "--pattern", pattern, "--checkpoint", ckpt, "--target-latency", "1us",
                "--profile", prof, "--max-time", "0.2")
    assert r.exit_code == 4 and "MISSED" in r.output


def test_verify_without_checkpoint_realises_the_pattern(tmp_path):
    pattern = mixed_pattern("resnet18", "cifar", 16, 0.4, seed=1).save(tmp_path / "p.json")
    r = run_cli("verify", "--pattern", pattern, "--target-latency", "10s", "--max-time", "0.2",
                "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["predicted"] is None  # no 16-px profile exists


def test_verify_bad_input(trained, tmp_path):
    pattern, ckpt = trained
    other = mixed_pattern("resnet34", "cifar", 32, 0.4, seed=1).save(tmp_path / "o.json")
    assert "checkpoint" in one_line_error(run_cli(
        "verify", "--pattern", other, "--checkpoint", ckpt, "--target-latency", "5ms"))
    assert "no such checkpoint" in one_line_error(run_cli(
        "verify", "--pattern", pattern, "--checkpoint", tmp_path / "x.pt",
        "--target-latency", "5ms"))
    assert "cannot parse" in one_line_error(run_cli(
        "verify", "--pattern", pattern, "--target-latency", "5 parsecs"))
    monkey = pytest.MonkeyPatch()
    monkey.setattr(torch.cuda, "is_available", lambda: False)
    try:
        assert "no CUDA GPU" in one_line_error(run_cli(
            "verify", "--pattern", pattern, "--target-latency", "5ms", "--device", "cuda"))
    finally:
        monkey.undo()


def test_advice_when_the_target_is_missed_says_why():
    from hwbench.verify import _advice

    assert _advice(True, 0.3, 0.5, 0.9) == ""
    assert "no t_d" in _advice(False, None, 0.5, 0.9)
    slow = _advice(False, 0.5, 0.5, 0.99)
    assert "already pick t_d 0.5" in slow and "99% of its gated channels" in slow
    assert _advice(False, 0.3, 0.5, 0.2) == "the profile now suggests t_d 0.3 for this target"
