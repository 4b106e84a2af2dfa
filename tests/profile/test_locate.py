"""Which profile describes this device: the device and every condition must agree, the newest by
``created`` wins, a foreign profile is usable for training but refused by verify unless allowed,
and verify/trim measure at the profile's thread count."""

import json
import types
from pathlib import Path

import pytest
import torch

from hwbench.errors import HwbenchError, UsageError
from hwbench.io import atomic_write_json
from hwbench.measure.device import fingerprint, parse_device
from hwbench.pattern.gate_pattern import mixed_pattern
from hwbench.profile.locate import (
    Conditions,
    find_profile,
    is_local,
    local_device,
    mark_stale,
    profile_threads,
    resolve_profile,
    same_machine,
)
from hwbench.profile.predictor import save_profile
from tests.conftest import measuring_goal_for, one_line_error, run_cli
from tests.profile.test_predictor import synthetic_profile

HERE = fingerprint(parse_device("cpu"))
REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def local_profile(threads=None, created="2026-11-27T19:33:15+00:00"):
    """The synthetic profile, fingerprinted as this machine's CPU at its current thread count."""
    prof = synthetic_profile()
    prof["created"] = created
    prof["fingerprint"] = {**prof["fingerprint"], "name": HERE["name"], "type": "cpu",
                           "cpu_count": HERE["cpu_count"],
                           "threads": threads or torch.get_num_threads()}
    return prof


def cond(**kw):
    """The synthetic profile's conditions at this process's thread count, changed by ``kw``."""
    return Conditions(**{**dict(arch="resnet18", stem="cifar", input_size=32,
                                threads=torch.get_num_threads(), dtype="fp32", batch_size=1),
                         **kw})


# --- matching ---------------------------------------------------------------------------------

def test_every_condition_must_match(tmp_path):
    folder = tmp_path / "profiles"
    path = save_profile(local_profile(), folder / "mine.json")
    assert find_profile(HERE, cond(), folder)[0] == path
    for other in (dict(threads=torch.get_num_threads() + 1), dict(dtype="bf16"),
                  dict(batch_size=8), dict(arch="resnet34"), dict(stem="imagenet"),
                  dict(input_size=64)):
        assert find_profile(HERE, cond(**other), folder) is None, other


def test_the_profile_records_its_conditions_where_the_matcher_reads_them(tmp_path):
    """The profiler's own fingerprint fields (dtype, threads, batch_size ...) are what matching
    reads: a profile written by the real profiler is found under its conditions."""
    found = [find_profile(json.loads(p.read_text())["fingerprint"], Conditions(
        arch=f["arch"], stem=f["stem"], input_size=f["input_size"], threads=f["threads"],
        dtype=f["dtype"], batch_size=f["batch_size"], runtime=f.get("runtime", "eager"),
        runtime_version=f.get("runtime_version") if f.get("runtime", "eager") != "eager"
        else None), REPO_PROFILES)
        for p in sorted(REPO_PROFILES.glob("*.json"))
        for f in [json.loads(p.read_text())["fingerprint"]]]
    assert found and all(hit is not None for hit in found)
    assert len({hit[0] for hit in found}) == len(found)  # each finds its own file


def test_a_foreign_vm_with_the_same_cpu_name_and_other_core_count_is_no_match(tmp_path):
    """Cloud VMs report one generic CPU name for very different hosts (seen: the project VM, 2
    cores, and the GPU machine, 16 cores, are both 'Intel(R) Xeon(R) Processor')."""
    other = local_profile()
    other["fingerprint"]["cpu_count"] = HERE["cpu_count"] + 14
    folder = tmp_path / "profiles"
    path = save_profile(other, folder / "big_host.json")
    assert find_profile(HERE, cond(), folder) is None
    assert resolve_profile(str(path), "resnet18", "cifar", 32).local is False
    with pytest.raises(UsageError, match="no profile in"):
        resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    twin = save_profile(local_profile(), tmp_path / "Twin Host.json")
    tp = resolve_profile(str(twin), "resnet18", "cifar", 32)
    assert tp.local is True and tp.device == "cpu"


def test_same_machine_compares_core_counts_for_cpus_and_uuids_for_gpus():
    vm = {"type": "cpu", "name": "Intel(R) Xeon(R) Processor", "cpu_count": 2}
    assert same_machine(vm, {**vm, "threads": 1}) and not same_machine(vm, {**vm, "cpu_count": 16})
    gpu = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5c6e"}
    assert same_machine({**gpu, "cpu_count": 16}, {**gpu, "cpu_count": 64})  # host cores: no
    assert not same_machine(gpu, {**gpu, "uuid": "GPU-0a91"})
    assert not same_machine(gpu, {**gpu, "uuid": None})  # an older fingerprint: cannot tell
    assert not same_machine(gpu, {**gpu, "name": "NVIDIA H200"})
    assert not same_machine(vm, {**vm, "type": "cuda"})


def test_a_gpu_of_the_same_model_with_another_uuid_is_no_match(tmp_path):
    here = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5c6e", "cpu_count": 16}
    prof = synthetic_profile()
    prof["fingerprint"] = {**prof["fingerprint"], **here, "dtype": "bf16", "threads": 16}
    folder = tmp_path / "profiles"
    save_profile(prof, folder / "h100.json")
    # threads are a CPU condition: a GPU profile at 16 host threads serves a 1-thread process
    gpu = cond(dtype="bf16", threads=1)
    assert find_profile(here, gpu, folder) is not None
    assert find_profile({**here, "uuid": "GPU-0a91"}, gpu, folder) is None
    assert find_profile(here, cond(dtype="fp32", threads=1), folder) is None


def test_the_newest_by_created_wins_whatever_the_file_names_say(tmp_path):
    folder = tmp_path / "profiles"
    newer = save_profile(local_profile(created="2026-11-28T09:00:00+00:00"), folder / "a.json")
    save_profile(local_profile(created="2026-11-27T09:00:00+00:00"), folder / "b.json")
    save_profile(local_profile(created="2026-11-28T10:00:00+02:00"), folder / "c.json")  # 08:00Z
    save_profile(local_profile(created="not a date"), folder / "d.json")
    assert find_profile(HERE, cond(), folder)[0] == newer
    # the same second: the later -vN version, then the file name, decides (not the glob order)
    tie = local_profile(created="2026-11-29T00:00:00+00:00")
    first = save_profile(tie, folder / "e.json")
    second = save_profile(tie, folder / "e.json")  # e-v2.json
    assert first.name == "e.json" and find_profile(HERE, cond(), folder)[0] == second


def test_a_corrupt_or_foreign_schema_file_in_the_folder_is_skipped(tmp_path):
    folder = tmp_path / "profiles"
    good = save_profile(local_profile(created="2026-01-01T00:00:00+00:00"), folder / "a.json")
    (folder / "z.json").write_text('{"schema": "hwbench/device-profile@1", "fingerp')
    (folder / "y.json").write_text("[1, 2]")
    broken = local_profile(created="2027-01-01T00:00:00+00:00")
    broken["fingerprint"] = {k: v for k, v in broken["fingerprint"].items() if k != "dtype"}
    save_profile(broken, folder / "x.json")  # newer, but says nothing about its dtype
    assert find_profile(HERE, cond(), folder)[0] == good


# --- resolving a training target --------------------------------------------------------------

def test_a_profile_file_is_checked_against_the_network(tmp_path):
    path = atomic_write_json(tmp_path / "p.json", synthetic_profile())  # a "Test CPU"
    tp = resolve_profile(str(path), "resnet18", "cifar", 32)
    assert tp.device is None and not tp.local  # foreign: allowed for training
    with pytest.raises(UsageError, match="this run trains resnet18/imagenet/96px"):
        resolve_profile(str(path), "resnet18", "imagenet", 96)
    with pytest.raises(HwbenchError, match="no such profile"):
        resolve_profile(str(tmp_path / "none.json"), "resnet18", "cifar", 32)


def test_this_machine_uses_the_newest_matching_profile_of_its_thread_count(tmp_path):
    folder = tmp_path / "profiles"
    save_profile(local_profile(threads=torch.get_num_threads() + 7,
                               created="2030-01-01T00:00:00+00:00"), folder / "other_threads.json")
    with pytest.raises(UsageError, match=r"other_threads.json has threads \d+, not \d+"):
        resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    first = save_profile(local_profile(), folder / "mine.json")
    second = save_profile(local_profile(), folder / "mine.json")  # mine-v2.json
    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, quick=False)
    assert tp.local and tp.path == second != first and not tp.measured_now


def test_no_matching_profile_runs_a_quick_one_under_the_wanted_conditions(tmp_path):
    folder, said, calls = tmp_path / "profiles", [], []

    def fake_profile(device, conditions):
        calls.append((device, conditions))
        return local_profile(threads=conditions.threads)

    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                         profile_fn=fake_profile)
    assert calls == [("cpu", cond())] and tp.measured_now and tp.local
    assert tp.path.exists() and "quick profile" in said[0]
    # the next request finds it instead of profiling again
    again = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, profile_fn=None)
    assert again.path == tp.path and not again.measured_now


BUSY = {"wall_s": 60.0, "others_cores": 1.6, "steal_share": 0.0, "loadavg_1m": 3.5,
        "cpus": 2, "busy": True, "rule": "busy: ..."}
IDLE = {**BUSY, "others_cores": 0.05, "loadavg_1m": 0.3, "busy": False}


def profile_with(load, quick=False, created="2026-11-28T09:00:00+00:00"):
    prof = local_profile(created=created)
    prof["load"] = load
    if quick:
        prof["quick"] = True
    return prof


def test_an_idle_profile_wins_over_a_newer_busy_one(tmp_path):
    folder = tmp_path / "profiles"
    idle = save_profile(profile_with(IDLE, created="2026-11-27T09:00:00+00:00"),
                        folder / "idle.json")
    save_profile(profile_with(BUSY, created="2026-11-29T09:00:00+00:00"), folder / "busy.json")
    assert find_profile(HERE, cond(), folder)[0] == idle
    # older profiles record no load: taken as idle, the newest wins among them
    old = save_profile(local_profile(created="2026-11-28T00:00:00+00:00"), folder / "old.json")
    assert find_profile(HERE, cond(), folder)[0] == old


def test_a_busy_quick_profile_is_measured_again_not_reused_silently(tmp_path):
    folder, said, calls = tmp_path / "profiles", [], []
    busy = save_profile(profile_with(BUSY, quick=True), folder / "quick.json")

    def fake_profile(device, conditions):
        calls.append(device)
        return profile_with(IDLE if len(calls) > 1 else BUSY, quick=True,
                            created=f"2026-11-30T0{len(calls)}:00:00+00:00")

    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                         profile_fn=fake_profile)
    assert calls == ["cpu"] and tp.measured_now and str(busy) in said[0]
    assert "busy: measuring it again" in said[0]
    # still busy: written, and said in the same line
    assert "other processes took 1.60 cores" in said[-1]
    tp2 = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                          profile_fn=fake_profile)
    assert len(calls) == 2 and not (tp2.profile.get("load") or {}).get("busy")
    said.clear()
    tp3 = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                          profile_fn=fake_profile)
    assert len(calls) == 2 and not tp3.measured_now and said == []  # idle: reused quietly


def test_a_busy_full_profile_is_used_and_said(tmp_path):
    folder, said = tmp_path / "profiles", []
    full = save_profile(profile_with(BUSY), folder / "full.json")
    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                         quick=True, profile_fn=lambda *a: pytest.fail("measured again"))
    assert tp.path == full and len(said) == 1 and "busy" in said[0]


def test_a_quick_profile_found_stale_is_measured_again_and_a_full_one_is_used_and_said(
        tmp_path):
    folder, said, calls = tmp_path / "profiles", [], []
    quick = save_profile(profile_with(IDLE, quick=True), folder / "quick.json")
    before = json.loads(quick.read_text())
    rec = mark_stale(quick, 40.0, "p90")  # the profile's dense p90 is 33 ms
    after = json.loads(quick.read_text())
    assert after["stale"] == rec and {k: v for k, v in after.items() if k != "stale"} == before
    assert "measured 40.000 ms, +21% from the profile's 33.000 ms" in rec["note"]

    def fake_profile(device, conditions):
        calls.append(device)
        return profile_with(IDLE, quick=True, created="2026-11-30T01:00:00+00:00")

    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                         profile_fn=fake_profile)
    assert calls == ["cpu"] and tp.measured_now and tp.path != quick
    assert f"{quick} is a quick profile found stale: measuring it again" == said[0]
    # the new one is taken from now on, quietly; the stale one is ranked below any other
    said.clear()
    again = resolve_profile("cpu", "resnet18", "cifar", 32, folder=folder, say=said.append,
                            profile_fn=fake_profile)
    assert again.path == tp.path and calls == ["cpu"] and said == []
    # a full profile found stale is the user's: used, with a line saying why it may be off
    full = save_profile(profile_with(IDLE, created="2026-12-01T00:00:00+00:00"),
                        tmp_path / "full" / "full.json")
    mark_stale(full, 28.0, "p90")
    said.clear()
    tp = resolve_profile("cpu", "resnet18", "cifar", 32, folder=full.parent, say=said.append,
                         profile_fn=lambda *a: pytest.fail("measured again"))
    assert tp.path == full and said == [f"{full}: stale: {load_json(full)['stale']['note']}"]


def load_json(path):
    return json.loads(Path(path).read_text())


def test_a_relative_target_is_a_fraction_of_the_profiled_dense_latency(tmp_path):
    from hwbench.pick.goal import locate, parse_goals

    path = atomic_write_json(tmp_path / "p.json", synthetic_profile())

    def seconds(text: str, percentile: str = "p90") -> float:
        [goal] = locate(parse_goals([f"{path}:{text}"], "cpu", percentile), "resnet18", "cifar",
                        32)
        return goal.seconds()

    assert seconds("0.5x") == pytest.approx(0.5 * 33.0e-3)
    assert seconds("0.5x", "p50") == pytest.approx(0.5 * 30.0e-3)
    assert seconds("2ms") == pytest.approx(2e-3)
    assert seconds("0.004s") == pytest.approx(4e-3)
    with pytest.raises(UsageError, match="no dense p99 reference"):
        seconds("0.5x", "p99")


# --- GPUs, with a fake CUDA -------------------------------------------------------------------

@pytest.fixture
def two_h100s(monkeypatch):
    """Two boards of one model; torch reports each one's UUID as an object, like _CUuuid."""
    uuids = ["5c6e0f4a-0000-4000-8000-000000000001", "0a91d2b3-0000-4000-8000-000000000002"]

    class Uuid:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9,
                                                        minor=0, uuid=Uuid(uuids[i])))
    return uuids


def test_a_gpu_fingerprint_carries_its_uuid_and_finds_its_own_board(two_h100s):
    fp1 = fingerprint(torch.device("cuda", 1))
    assert fp1["uuid"] == two_h100s[1] and fp1["name"] == "NVIDIA H100 80GB HBM3"
    assert local_device(fp1) == "cuda:1"
    assert is_local(fp1) and is_local(fp1, "cuda:1") and not is_local(fp1, "cuda:0")
    assert local_device({**fp1, "uuid": "11111111-0000-4000-8000-000000000009"}) is None


def test_an_older_torch_without_uuids_still_fingerprints(monkeypatch, two_h100s):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9,
                                                        minor=0))
    assert fingerprint(torch.device("cuda", 0))["uuid"] is None


def test_profile_threads_is_a_cpu_condition():
    assert profile_threads(local_profile(threads=3)) == 3
    gpu = synthetic_profile()
    gpu["fingerprint"] = {**gpu["fingerprint"], "type": "cuda", "threads": 16}
    assert profile_threads(gpu) is None and profile_threads(None) is None


# --- verify: foreign profiles and thread counts -----------------------------------------------

@pytest.fixture
def fake_timing(monkeypatch):
    """verify's network and measuring replaced: records the thread count it ran at, returns
    uneven samples (ms) with a slow outlier, as real timings have."""
    seen = []

    def time_network(net, pattern, inputs, dev, percentile="p90", max_time_s=10.0,
                     min_runs=64, runtime="eager", threads=None):
        from hwbench.measure.protocol import Measurement, Protocol
        from hwbench.measure.stats import summarise

        seen.append(torch.get_num_threads())
        dyn = [2.0 + 0.01 * (i % 7) for i in range(63)] + [9.5]
        dense = [3.0 + 0.02 * (i % 5) for i in range(64)]
        res = {k: {**summarise(v, 0.02, quantile=0.9).to_dict(), "samples_ms": v}
               for k, v in (("dynamic", dyn), ("dense", dense))}
        return Measurement(res, Protocol(quantile=0.9).to_dict(), inputs.record), ["static"] * 8

    monkeypatch.setattr("hwbench.deploy.verify.time_network", time_network)
    # BN calibration: ~10 s
    monkeypatch.setattr("hwbench.deploy.verify.realise", lambda pattern: None)
    return seen


def test_verify_refuses_a_foreign_profile_before_measuring(tmp_path, fake_timing):
    pattern = mixed_pattern("resnet18", "cifar", 32, 0.4, seed=1).save(tmp_path / "pat.json")
    foreign = atomic_write_json(tmp_path / "far.json", synthetic_profile())  # a "Test CPU"
    err = one_line_error(run_cli("verify", "--pattern", pattern, "--target-latency", "10s",
                                 "--profile", foreign))
    assert "foreign profile" in err and "'Test CPU'" in err and "--allow-foreign-profile" in err
    assert fake_timing == []  # nothing was measured
    # a target the fake network lands within the band (p90 2.06 ms of 2.2: MET, exit 0)
    r = run_cli("verify", "--pattern", pattern, "--target-latency", "2.2ms", "--profile",
                foreign, "--allow-foreign-profile", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["profile"] == str(foreign) and d["predicted"]["p90_ms"] > 0 and d["met"]
    assert fake_timing == [2]  # at the foreign profile's thread count (FP: 2 threads)


def test_verify_measures_at_the_profiles_thread_count_and_restores_it(tmp_path, fake_timing):
    from hwbench.deploy.verify import run_verify

    pattern = mixed_pattern("resnet18", "cifar", 32, 0.4, seed=1).save(tmp_path / "pat.json")
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    prof = atomic_write_json(tmp_path / "here.json", local_profile(threads=want))
    res = run_verify(str(pattern), measuring_goal_for(pattern, 10.0, prof), max_time_s=0.1)
    assert fake_timing == [want] and torch.get_num_threads() == before
    assert res["profile"] == str(prof) and res["measured"]["n"] == 64
