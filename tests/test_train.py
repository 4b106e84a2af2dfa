import json

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.patterns import load_pattern
from hwbench.train import CHECKPOINT, TrainConfig, lr_at, train
from tests.conftest import one_line_error as _one_line
from tests.conftest import run_cli as _cli

TINY = dict(dataset="synthetic", n_synthetic=64, batch_size=16, proj_dims=(32, 32, 16),
            max_steps_per_epoch=2, eval_every=1, energy=False)


def test_a_tiny_co_training_run_writes_everything(tmp_path):
    cfg = TrainConfig(**TINY, epochs=2, out=str(tmp_path / "run"),
                      models_dir=str(tmp_path / "models"), t_d=0.4)
    summary = train(cfg)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"loss", "vicreg", "sparsity", "bound", "macs_ratio", "knn_top1_dense",
            "knn_top1_gated", "images_per_s", "eval_macs_ratio"} <= set(rows[-1])
    assert 0 < rows[-1]["eval_macs_ratio"] <= 1
    assert (run / CHECKPOINT).exists() and (run / "config.json").exists()
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "knn_top1_gated" in csv_lines[0]
    assert {"knn_top1_dense", "knn_top1_gated"} <= set(summary["initial"])
    assert rows[-1]["knn_test_n"] == 64  # the synthetic test split
    pattern = load_pattern(tmp_path / "models" / "run.json")
    assert pattern.t_d == 0.4 and pattern.extra["dataset"] == "synthetic"
    assert summary["final"]["epoch"] == 1


def test_top1_standard_error():
    from hwbench.train import top1_se

    assert top1_se(90.0, 1000) == pytest.approx(100 * (0.9 * 0.1 / 1000) ** 0.5)
    assert top1_se(100.0, 50) == 0.0


def test_ctrl_c_leaves_a_checkpoint_and_resume_reproduces_the_loss_curve(tmp_path):
    full = TrainConfig(**TINY, epochs=3, out=str(tmp_path / "full"),
                       models_dir=str(tmp_path / "m"))
    train(full)
    part = TrainConfig(**TINY, epochs=3, out=str(tmp_path / "part"),
                       models_dir=str(tmp_path / "m"))

    def interrupt(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(part, progress=interrupt)
    assert torch.load(tmp_path / "part" / CHECKPOINT, weights_only=False)["epoch"] == 1
    train(TrainConfig(**TINY, epochs=3, out=str(tmp_path / "part"),
                      models_dir=str(tmp_path / "m"), resume=True))

    def losses(d):
        return [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text()
                .splitlines()]

    assert losses("part") == pytest.approx(losses("full"), rel=1e-5, abs=1e-6)


def test_bad_runs_are_refused_without_damage(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        train(TrainConfig(**TINY, out=str(tmp_path / "x"), resume=True))
    with pytest.raises(UsageError, match="t-d"):
        train(TrainConfig(**TINY, t_d=1.5, out=str(tmp_path / "y")))
    with pytest.raises(UsageError, match="unknown dataset"):
        train(TrainConfig(**{**TINY, "dataset": "mnist60k"}, out=str(tmp_path / "z")))
    cfg = TrainConfig(**TINY, epochs=1, out=str(tmp_path / "done"),
                      models_dir=str(tmp_path / "m"))
    train(cfg)
    before = (tmp_path / "done" / CHECKPOINT).read_bytes()
    with pytest.raises(UsageError, match="already holds a run"):
        train(cfg)
    assert (tmp_path / "done" / CHECKPOINT).read_bytes() == before
    assert not list((tmp_path / "done").glob(".*.tmp"))


def test_energy_is_tracked_per_launch_and_a_resumed_run_adds_a_segment(tmp_path):
    from tests.measure.test_energy import _CC

    cfg = dict(TINY, energy=True, epochs=2, out=str(tmp_path / "run"),
               models_dir=str(tmp_path / "m"))
    seen = []

    def stop_after_first_epoch(state):
        seen.append(state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg), progress=stop_after_first_epoch, energy_factory=_CC)
    assert {"images_per_s", "eta_s", "steps", "epochs"} <= set(seen[0]) and seen[0]["eta_s"] > 0
    first = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert len(first["segments"]) == 1 and first["total"]["label"] == "estimated"
    summary = train(TrainConfig(**{**cfg, "resume": True}), energy_factory=_CC)
    energy = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert len(energy["segments"]) == 2
    assert summary["energy"]["energy_kwh"] == pytest.approx(0.006)


def test_amp_resolution(monkeypatch):
    from hwbench import train as tr

    cpu = torch.device("cpu")
    assert tr.amp_dtype("off", cpu) is None and tr.amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs a CUDA"):
        tr.amp_dtype("fp16", cpu)
    monkeypatch.setattr(tr, "_cpu_bf16_native", lambda: False)
    assert tr.amp_dtype("auto", cpu) is None
    monkeypatch.setattr(tr, "_cpu_bf16_native", lambda: True)
    assert tr.amp_dtype("auto", cpu) == torch.bfloat16


def test_resume_refuses_a_different_configuration(tmp_path):
    cfg = dict(TINY, epochs=1, out=str(tmp_path / "r"), models_dir=str(tmp_path / "m"))
    train(TrainConfig(**cfg))
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    with pytest.raises(UsageError, match="t_d=0.5"):
        train(TrainConfig(**{**cfg, "t_d": 0.3, "resume": True}))
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=0.3, batch_size=256)
    lrs = [lr_at(cfg, s, 10) for s in range(40)]
    assert lrs[0] == pytest.approx(0.03) and lrs[9] == pytest.approx(0.3)
    assert lrs[10] == pytest.approx(0.3) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert torch.tensor(lrs).max().item() == pytest.approx(0.3)






def test_train_cli_bad_input(tmp_path):
    assert "mutually exclusive" in _one_line(_cli("train", "--t-d", "0.3", "--target-latency",
                                                  "5ms", "--out", tmp_path / "a"))
    assert "unknown dataset" in _one_line(_cli("train", "--dataset", "imagenet1k",
                                               "--out", tmp_path / "b"))
    assert "--t-d" in _one_line(_cli("train", "--t-d", "0", "--out", tmp_path / "c"))
    assert "no checkpoint" in _one_line(_cli("train", "--resume", "--dataset", "synthetic",
                                             "--out", tmp_path / "d"))
    assert "cannot parse latency" in _one_line(_cli("train", "--target-latency", "soon",
                                                    "--target-device", "x.json",
                                                    "--out", tmp_path / "e"))
    assert "no such profile" in _one_line(_cli("train", "--target-latency", "5ms",
                                               "--target-device", tmp_path / "none.json",
                                               "--out", tmp_path / "f"))
    assert "--data-dir" in _one_line(_cli("train", "--dataset", "cifar10",
                                          "--out", tmp_path / "g"))
    assert "needs --target-latency" in _one_line(_cli("train", "--target-device", "cpu",
                                                      "--out", tmp_path / "h"))
    assert "fp16 needs a CUDA device" in _one_line(_cli("train", "--amp", "fp16", "--device",
                                                        "cpu", "--out", tmp_path / "h"))
    from hwbench.io import atomic_write_json
    from tests.test_profiles import synthetic_profile

    prof = atomic_write_json(tmp_path / "prof.json", synthetic_profile())
    r = _cli("train", "--dataset", "synthetic", "--target-latency", "1us", "--target-device",
             prof, "--out", tmp_path / "i")
    assert "below the fastest" in _one_line(r, code=3)
    other = synthetic_profile()
    other["fingerprint"] = {**other["fingerprint"], "stem": "imagenet", "input_size": 96}
    atomic_write_json(tmp_path / "stl.json", other)
    assert "this run trains resnet18/cifar/32px" in _one_line(_cli(
        "train", "--dataset", "synthetic", "--target-latency", "5ms", "--target-device",
        tmp_path / "stl.json", "--out", tmp_path / "j"))
    assert not any((tmp_path / d).exists() for d in "abcdefghij")


def test_train_cli_picks_t_d_from_a_profile(tmp_path, monkeypatch):
    from hwbench.io import atomic_write_json
    from hwbench.patterns import synthesise
    from hwbench.profiles import Predictor
    from tests.test_profiles import synthetic_profile

    monkeypatch.chdir(tmp_path)  # the learned pattern goes to ./models/<run>.json
    prof = synthetic_profile()
    path = atomic_write_json(tmp_path / "prof.json", prof)
    target_ms = Predictor(prof).predict(synthesise("resnet18", "cifar", 32, 0.35), "p90") * 1.001
    r = _cli("train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "256",
             "--target-latency", f"{target_ms:.4f}ms", "--target-device", path,
             "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["t_d"] == pytest.approx(0.35) and cfg["decision"]["profile"] == str(path)
    assert "t_d 0.35 picked" in r.output
    assert "kNN top-1 dense" in r.output and "standard error on 512 test images" in r.output
    assert (tmp_path / "models" / "run.json").exists()
