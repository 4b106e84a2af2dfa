"""hwbench eval: the linear probe on known features, and a run's evaluation end to end."""

import json

import pytest
import torch

from hwbench.data import load_split
from hwbench.errors import UsageError
from hwbench.ssl.knn import KNN_PROTOCOLS, PROTOCOLS
from hwbench.train.config import TrainConfig
from hwbench.train.evaluation import linear_probe, linear_sgd, run_eval
from hwbench.train.loop import train
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
                      out=str(d / "run"), models_dir=str(d / "models"), t_d=0.4, knn="online"))
    return d / "run" / "checkpoint.pt"


@pytest.mark.slow
def test_eval_reports_both_streams_macs_and_on_ratios(run):
    res = run_eval(run)
    assert {"knn_top1_dense", "knn_top1_gated", "linear_top1_dense",
            "linear_top1_gated"} <= set(res)
    # every kNN protocol, labelled; knn_top1_* is the run's own (it trained with --knn online)
    for p in KNN_PROTOCOLS:
        assert {f"knn_{p}_top1_dense", f"knn_{p}_top1_gated"} <= set(res)
        assert res["protocol"]["knn"]["protocols"][p] == PROTOCOLS[p].record()
    assert res["protocol"]["knn"]["knn_top1"] == "online"
    assert res["knn_top1_gated"] == res["knn_online_top1_gated"]
    assert res["knn_test_n"] == 48 and "linear_sgd_top1_dense" not in res
    last = json.loads((run.parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["knn_protocol"] == "online"  # train's monitor, labelled
    assert all(0 <= res[k] <= 100 for k in res if "top1" in k)
    assert 0 < res["eval_macs_ratio"] <= 1 and res["epoch"] == 0
    assert len(res["on_ratios"]) == 8 and all(0 <= v <= 1 for v in res["on_ratios"].values())
    on_disk = json.loads((run.parent / "eval.json").read_text())
    assert on_disk["linear_top1_gated"] == res["linear_top1_gated"]


@pytest.mark.slow
def test_eval_knn_protocols_and_the_sgd_linear_evaluation(run, tmp_path):
    r = run_cli("eval", "--checkpoint", run, "--no-linear", "--knn-protocol", "reference",
                "--linear-sgd-epochs", "1", "--out", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "kNN reference top-1 dense" in r.output and "linear SGD top-1 gated" in r.output
    assert "the online protocol" in r.output
    res = json.loads((tmp_path / "e.json").read_text())
    # reference asked for; the run's own (online) computed for knn_top1_*, not listed beside it
    assert "knn_reference_top1_gated" in res and "knn_cosine_top1_gated" not in res
    assert "knn_online_top1_gated" not in res and "knn_top1_gated" in res
    assert 0 <= res["linear_sgd_top1_gated"] <= 100 and "linear_top1_gated" not in res
    assert res["protocol"]["linear_sgd"]["epochs"] == 1
    assert "invalid value for '--knn-protocol'" in one_line_error(run_cli(
        "eval", "--checkpoint", run, "--knn-protocol", "l2")).lower()


@pytest.mark.slow
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


class ColourNet(torch.nn.Module):
    """A stand-in backbone: a 1x1 conv (+x, -x), BatchNorm, ReLU, mean over the image: its
    features are the image's mean colour, enough to separate the synthetic set's classes."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(6)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)])[:, :, None, None])

    def forward(self, x, stream="dense"):
        assert stream == "gated"
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_linear_sgd_learns_a_separable_set_and_leaves_the_backbone_as_it_was():
    train_xy = load_split("synthetic", "train", n_synthetic=96, seed=0)
    test_xy = load_split("synthetic", "test", n_synthetic=64, seed=0)
    net = ColourNet().train()  # linear_sgd must put it in eval mode, and back
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    top1 = linear_sgd(net, train_xy, test_xy, "synthetic", "gated", torch.device("cpu"),
                      epochs=8, batch_size=16)
    assert top1 == 100.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and torch.equal(torch.get_rng_state(), rng)
    # seeded: the same seed, the same head
    assert linear_sgd(net, train_xy, test_xy, "synthetic", "gated", torch.device("cpu"),
                      epochs=8, batch_size=16) == top1
    with pytest.raises(UsageError, match="linear-sgd-epochs"):
        linear_sgd(net, train_xy, test_xy, "synthetic", "gated", torch.device("cpu"), epochs=0)
