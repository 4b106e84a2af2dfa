"""hwbench eval: the linear probe on known features, and a run's evaluation end to end."""

import json

import pytest
import torch

from hwbench.evaluate import linear_probe, run_eval
from hwbench.train import TrainConfig, train
from tests.conftest import one_line_error, run_cli


def test_linear_probe_separates_separable_classes_and_is_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    y = torch.randint(0, 4, (400,), generator=g)
    x = centres[y] + torch.randn(400, 16, generator=g)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) == 100.0
    noise = torch.randn(400, 16, generator=g)
    assert linear_probe(noise[:300], y[:300], noise[300:], y[300:]) < 50.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun")
    train(TrainConfig(dataset="synthetic", n_synthetic=48, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                      out=str(d / "run"), models_dir=str(d / "models"), t_d=0.4))
    return d / "run" / "checkpoint.pt"


def test_eval_reports_both_streams_macs_and_on_ratios(run):
    res = run_eval(run)
    assert {"knn_top1_dense", "knn_top1_gated", "linear_top1_dense",
            "linear_top1_gated"} <= set(res)
    assert all(0 <= res[k] <= 100 for k in res if "top1" in k)
    assert 0 < res["eval_macs_ratio"] <= 1 and res["epoch"] == 0
    assert len(res["on_ratios"]) == 8 and all(0 <= v <= 1 for v in res["on_ratios"].values())
    on_disk = json.loads((run.parent / "eval.json").read_text())
    assert on_disk["linear_top1_gated"] == res["linear_top1_gated"]


def test_eval_cli(run, tmp_path):
    r = run_cli("eval", "--checkpoint", run, "--no-knn", "--out", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "linear top-1 dense" in r.output and "MACs ratio" in r.output
    assert "knn_top1_dense" not in json.loads((tmp_path / "e.json").read_text())
    assert "no such checkpoint" in one_line_error(run_cli("eval", "--checkpoint",
                                                          tmp_path / "x.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in one_line_error(run_cli("eval", "--checkpoint",
                                                                 tmp_path / "junk.pt"))
    assert "nothing to evaluate" in one_line_error(run_cli("eval", "--checkpoint", run,
                                                           "--no-knn", "--no-linear"))
