"""train's --views (the two views' augmentations) and --knn (the per-epoch monitor's protocol)."""

import json

import pytest
import torch

import hwbench.train as train_mod
from hwbench.data import TensorSplit
from hwbench.errors import UsageError
from hwbench.train.config import TrainConfig
from hwbench.train.loop import train
from tests.conftest import one_line_error, run_cli


@pytest.mark.parametrize("args, needle", [
    (("--knn", "l2"), "invalid value for '--knn'"),
    (("--views", "simclr"), "invalid value for '--views'"),
    (("--views", "reference", "--dataset", "mnist5k"), "no recipe for mnist5k"),
])
def test_bad_views_or_knn_are_one_line(tmp_path, args, needle):
    r = run_cli("train", *args, "--out", tmp_path / "r")
    assert needle in one_line_error(r).lower()
    assert not (tmp_path / "r").exists()


def fake_cifar100(name, split, **kw):
    """32 random 32-px images per split, 4 of CIFAR-100's classes: no files needed."""
    g = torch.Generator().manual_seed(int(split != "test"))
    return TensorSplit(torch.randint(0, 256, (32, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.arange(32) % 4)


@pytest.mark.slow
def test_reference_views_and_knn_reach_the_run(tmp_path, monkeypatch):
    asked = []
    real = train_mod.run.view_transforms

    def spy(name, views):
        asked.append((name, views))
        return real(name, views)

    # where the run reads them: the data when it sets up, the files when it validates
    monkeypatch.setattr(train_mod.run, "load_split", fake_cifar100)
    monkeypatch.setattr(train_mod.config, "check_files", lambda *a: None)
    monkeypatch.setattr(train_mod.run, "view_transforms", spy)
    cfg = TrainConfig(dataset="cifar100", views="reference", knn="reference", batch_size=16,
                      proj_dims=(32, 32, 16), epochs=1, max_steps_per_epoch=1, energy=False,
                      out=str(tmp_path / "run"), models_dir=str(tmp_path / "m"), amp="off")
    summary = train(cfg)
    assert asked == [("cifar100", "reference")]
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["views"] == "reference" and written["knn"] == "reference"
    assert summary["final"]["knn_protocol"] == "reference"
    assert summary["initial"]["knn_protocol"] == "reference"
    # the views change the trained function: a resume must keep them
    with pytest.raises(UsageError, match="views='reference'"):
        train(TrainConfig(**{**cfg.__dict__, "views": "hwbench", "resume": True}))


def test_an_old_checkpoint_resumes_with_hwbench_views():
    config = train_mod.config
    assert config.RESUME_DEFAULTS["views"] == "hwbench" and "views" in config.RESUME_KEYS
    assert "knn" not in train_mod.config.RESUME_KEYS  # the monitor does not change what is trained
