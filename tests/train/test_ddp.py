"""The distributed path on CPU: torchrun, 2 processes, gloo."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.parametrize("method", ["co", "gated"])  # gated leaves the dense BNs unused
def test_torchrun_two_processes_gloo_trains_in_sync_and_rank0_alone_writes(tmp_path, method):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hwbench", "train", "--dataset", "synthetic", "--epochs", "2", "--method", method,
           "--batch-size", "16", "--max-steps-per-epoch", "2", "--eval-every", "2",
           "--no-energy", "--n-synthetic", "64", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ddp_max_param_divergence"] == 0.0  # DDP kept both replicas identical
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [0, 1]  # written once, by rank 0
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert (tmp_path / "models" / "run.json").exists()
    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                    if v.is_floating_point())


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    from hwbench.errors import UsageError
    from hwbench.train.config import TrainConfig
    from hwbench.train.loop import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="not divisible by the 3 processes"):
        train(TrainConfig(dataset="synthetic", batch_size=16, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
