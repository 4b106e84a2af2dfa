"""Latency targets: finding or quick-measuring the target's profile, picking t_d, and the whole
train -> verify path on this machine."""

import json

import pytest
import torch

from hwbench.errors import HwbenchError, UsageError
from hwbench.io import atomic_write_json
from hwbench.measure.device import fingerprint, parse_device
from hwbench.patterns import synthesise
from hwbench.pipeline import train_to_target
from hwbench.profiles import Predictor, find_profile, save_profile
from hwbench.target import choose_t_d, resolve_profile
from hwbench.train import TrainConfig
from tests.test_profiles import synthetic_profile

HERE = fingerprint(parse_device("cpu"))


def local_profile(threads=None):
    """The synthetic profile, fingerprinted as this machine's CPU at its current thread count."""
    prof = synthetic_profile()
    prof["fingerprint"] = {**prof["fingerprint"], "name": HERE["name"], "type": "cpu",
                           "cpu_count": HERE["cpu_count"],
                           "threads": threads or torch.get_num_threads()}
    return prof


def test_a_profile_file_is_checked_against_the_network(tmp_path):
    path = atomic_write_json(tmp_path / "p.json", synthetic_profile())
    tp = resolve_profile(str(path), "resnet18", "cifar", 32)
    assert tp.profile["fingerprint"]["name"] == "Test CPU" and not tp.local
    with pytest.raises(UsageError, match="this run trains resnet18/imagenet/96px"):
        resolve_profile(str(path), "resnet18", "imagenet", 96)
    with pytest.raises(HwbenchError, match="no such profile"):
        resolve_profile(str(tmp_path / "none.json"), "resnet18", "cifar", 32)


def test_this_machine_uses_the_newest_matching_profile_of_its_thread_count(tmp_path):
    folder = tmp_path / "profiles"
    save_profile(local_profile(threads=torch.get_num_threads() + 7),
                 folder / "other_threads.json")
    assert find_profile(HERE["name"], "resnet18", "cifar", 32, folder=folder,
                        threads=torch.get_num_threads()) is None
    first = save_profile(local_profile(), folder / "mine.json")
    second = save_profile(local_profile(), folder / "mine.json")  # mine-v2.json
    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    assert tp.local and tp.path == second != first and not tp.measured_now


def test_no_matching_profile_runs_a_quick_one_and_says_so(tmp_path):
    folder, said, calls = tmp_path / "profiles", [], []

    def fake_profile(device, arch, stem, size):
        calls.append((device, arch, stem, size))
        return local_profile()

    with pytest.raises(UsageError, match="run `hwbench profile --device cpu"):
        resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                         profile_fn=fake_profile)
    assert calls == [("cpu", "resnet18", "cifar", 32)] and tp.measured_now and tp.local
    assert tp.path.exists() and "quick profile" in said[0]
    # the next request finds it instead of profiling again
    assert resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder,
                           profile_fn=None).path == tp.path


def test_choose_t_d_records_the_decision(tmp_path):
    path = atomic_write_json(tmp_path / "p.json", synthetic_profile())
    tp = resolve_profile(str(path), "resnet18", "cifar", 32)
    target_ms = Predictor(tp.profile).predict(synthesise("resnet18", "cifar", 32, 0.4), "p90")
    t_d, decision = choose_t_d(tp, target_ms * 1.001e-3)
    assert t_d == pytest.approx(0.4)
    assert decision["profile"] == str(path) and decision["predicted_ms"] <= target_ms * 1.001
    assert decision["local"] is False and decision["quick_profile"] is False


def test_train_to_target_on_this_machine_picks_trains_and_verifies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save_profile(local_profile(), "profiles/here.json")  # found from the cwd
    target_ms = Predictor(local_profile()).predict(synthesise("resnet18", "cifar", 32, 0.35),
                                                   "p90") * 1.001
    said = []
    cfg = TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                      out=str(tmp_path / "run"))
    summary = train_to_target(cfg, target_ms * 1e-3, "cpu", say=said.append,
                              verify_max_time_s=0.3)
    assert cfg.t_d == pytest.approx(0.35) and summary["config"]["decision"]["profile"] == str(path)
    v = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert v["profile"] == str(path) == "profiles/here.json"
    assert len(v["measured"]["samples_ms"]) >= 64
    assert summary["verify"]["met"] == v["met"]
    assert "samples_ms" not in summary["verify"]["measured"]
    assert any("verifying" in s for s in said)
    # a file from another machine: trained, not verified here, and told where to verify
    other = atomic_write_json(tmp_path / "other.json", synthetic_profile())
    said.clear()
    cfg2 = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "run2"), "decision": {}})
    s2 = train_to_target(cfg2, target_ms * 1e-3, str(other), say=said.append)
    assert "verify" not in s2 and not (tmp_path / "run2" / "verify.json").exists()
    assert any("hwbench verify --pattern" in s for s in said)


def test_a_profile_of_another_host_with_the_same_cpu_name_is_not_this_machine(tmp_path):
    """Cloud VMs report one generic CPU name for very different hosts (seen: the project VM, 2
    cores, and the GPU machine, 16 cores, are both 'Intel(R) Xeon(R) Processor')."""
    other = local_profile()
    other["fingerprint"]["cpu_count"] = HERE["cpu_count"] + 14
    folder = tmp_path / "profiles"
    path = save_profile(other, folder / "big_host.json")
    assert resolve_profile(str(path), "resnet18", "cifar", 32).local is False
    with pytest.raises(UsageError, match="no profile in"):
        resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    twin = save_profile(local_profile(), tmp_path / "Twin Host.json")
    assert resolve_profile(str(twin), "resnet18", "cifar", 32).local is True


def test_two_targets_on_this_machine_are_both_verified_under_their_own_names(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_profile(local_profile(), "profiles/here.json")
    twin = save_profile(local_profile(), tmp_path / "Twin Host.json")
    far = atomic_write_json(tmp_path / "far.json", synthetic_profile())  # a "Test CPU"
    target_ms = Predictor(local_profile()).predict(synthesise("resnet18", "cifar", 32, 0.5),
                                                   "p90")
    cfg = TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                      eval_initial=False, out=str(tmp_path / "run"))
    summary = train_to_target(cfg, targets=[("cpu", f"{target_ms}ms"),
                                            (str(twin), f"{target_ms}ms"),
                                            (str(far), f"{target_ms}ms")],
                              verify_max_time_s=0.3)
    names = sorted(p.name for p in (tmp_path / "run").glob("verify*.json"))
    assert names == ["verify-twin-host.json", "verify.json"]
    assert [v["profile"] for v in summary["verify_all"]] == ["profiles/here.json", str(twin)]


def test_a_relative_target_is_a_fraction_of_the_profiled_dense_latency(tmp_path):
    from hwbench.target import resolve_target

    path = atomic_write_json(tmp_path / "p.json", synthetic_profile())
    tp = resolve_profile(str(path), "resnet18", "cifar", 32)
    assert resolve_target("0.5x", tp, "p90") == pytest.approx(0.5 * 33.0e-3)
    assert resolve_target("0.5x", tp, "p50") == pytest.approx(0.5 * 30.0e-3)
    assert resolve_target("2ms", tp) == pytest.approx(2e-3)
    with pytest.raises(UsageError, match="no dense p99 reference"):
        resolve_target("0.5x", tp, "p99")


def test_a_target_run_is_named_by_its_target_so_resume_finds_it():
    from hwbench.target import target_run_name

    cfg = TrainConfig(dataset="mnist5k", seed=3)
    assert target_run_name(cfg, "0.67x") == "mnist5k_resnet18_co_target0.67x_s3"
    assert target_run_name(cfg, "5 ms") == target_run_name(cfg, 0.005) == \
        "mnist5k_resnet18_co_target5ms_s3"
