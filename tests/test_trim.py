"""Trimming a trained network to a latency target on the device: the ranking, the switch that
makes channels off for good, the measured search (with a fake device), and the run it writes."""

import json

import pytest
import torch

from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.errors import UsageError
from hwbench.io import atomic_write_json
from hwbench.patterns import mixed_pattern, summarise
from hwbench.profiles import Predictor
from hwbench.trim import ranking, search, switch_off, trim_run, trimmed_pattern
from tests.conftest import one_line_error, run_cli
from tests.test_profiles import synthetic_profile


def calib_images(n=64):
    return pattern_inputs(n, 32, seed=5)


def learned(seed=0):
    p = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=seed)
    net = realise(p, seed=1).eval()
    return net, summarise(net, [calib_images()])


def test_ranking_is_on_rate_per_ms_saved_and_keeps_a_channel_in_every_block():
    net, pattern = learned()
    pred = Predictor(synthetic_profile())  # block i: (i + 1) * 0.01 ms per channel
    cands = ranking(pattern, pred)
    keys = [c.on_rate / (0.01 * (c.block + 1)) for c in cands]
    assert all(a <= b * (1 + 1e-9) for a, b in zip(keys, keys[1:]))
    assert [c.cost for c in cands] == pytest.approx(keys)
    for i, lp in enumerate(pattern.layers):
        mine = {c.channel for c in cands if c.block == i}
        ever_on = set(lp.on_idx) | set(lp.dynamic_idx)
        assert mine < ever_on and len(ever_on - mine) == 1  # one stays, off ones never listed


def test_switched_off_channels_are_off_for_every_input_and_the_engines_agree():
    net, pattern = learned()
    cands = ranking(pattern)[:300]
    switch_off(net, cands)
    after = summarise(net, [pattern_inputs(32, 32, seed=99)])  # inputs the ranking never saw
    for c in cands:
        lp = after.layers[c.block]
        assert c.channel not in lp.on_idx and c.channel not in lp.dynamic_idx
    # the trimmed network is an ordinary network: compact execution equals masked execution
    x = pattern_inputs(4, 32, seed=3)
    ref = build_engine(net, "masked", after)(x)
    for mode in ("static", "dynamic"):
        out = build_engine(net, mode, after)(x)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(ref, net.forward_gated(x).features, rtol=1e-4, atol=1e-5)


def test_the_trimmed_stand_in_pattern_moves_channels_to_always_off():
    _, pattern = learned()
    cands = ranking(pattern)
    pred = Predictor(synthetic_profile())
    last = pred.predict(pattern, "p90")
    for n in (50, 400, 900):
        p = trimmed_pattern(pattern, cands[:n])
        assert sum(lp.always_off for lp in p.layers) == \
            sum(lp.always_off for lp in pattern.layers) + n
        for lp in p.layers:
            assert lp.always_on + lp.dynamic + lp.always_off == lp.channels >= 1
            assert len(lp.dynamic_rates) == lp.dynamic
        now = pred.predict(p, "p90")
        assert now < last
        last = now


def fake_device(pred: Predictor, slower: float):
    """A device whose latency is the profile's prediction times ``slower``; records calls."""
    calls = []

    def measure(net, pattern):
        ms = slower * pred.predict(pattern, "p90")
        calls.append(ms)
        return {"p90_ms": ms, "samples_ms": [ms]}

    return measure, calls


@pytest.mark.parametrize("slower", [1.0, 1.15, 0.85])
def test_the_search_lands_in_the_band_on_a_device_its_profile_misjudges(slower):
    net, _ = learned()
    pred = Predictor(synthetic_profile())
    base = summarise(net, [calib_images()])
    target = 0.7 * slower * pred.predict(base, "p90")
    measure, calls = fake_device(pred, slower)
    res = search(net, calib_images(), target, torch.device("cpu"), measure, pred,
                 tolerance=0.05)
    assert res.hit and 0.95 * target <= res.measured_ms <= 0.99 * target
    assert len(calls) == len(res.steps) <= 8
    # the returned network is the one measured: its own summary gives the same latency
    again = slower * pred.predict(summarise(res.net, [calib_images()]), "p90")
    assert again == pytest.approx(res.measured_ms)
    assert res.steps[-1]["measured"]["samples_ms"] == [calls[-1]]


def test_an_unreachable_target_returns_the_fastest_try_and_says_it_missed():
    net, _ = learned()
    pred = Predictor(synthetic_profile())
    measure, calls = fake_device(pred, 1.0)
    res = search(net, calib_images(), 0.01, torch.device("cpu"), measure, pred)
    assert not res.hit and res.measured_ms == min(calls)


def test_trim_run_refuses_what_it_cannot_trim(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint.pt"):
        trim_run(tmp_path, "5ms")
    r = run_cli("trim", tmp_path / "none", "--target-latency", "5ms")
    assert "no checkpoint.pt" in one_line_error(r)
    r = run_cli("trim", tmp_path, "--target-latency", "soon")
    assert "cannot parse latency" in one_line_error(r)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hwbench.train import TrainConfig, train

    d = tmp_path_factory.mktemp("trimrun")
    cfg = TrainConfig(dataset="synthetic", n_synthetic=64, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                      eval_initial=False, out=str(d / "run"), models_dir=str(d / "models"))
    train(cfg)
    return d / "run"


def test_trim_run_needs_this_machines_profile(tiny_run, tmp_path):
    other = atomic_write_json(tmp_path / "other.json", synthetic_profile())  # a "Test CPU"
    with pytest.raises(UsageError, match="not this machine"):
        trim_run(tiny_run, "5ms", "cpu", str(other))


def test_trim_run_writes_a_trimmed_run_measured_anew(tiny_run, tmp_path):
    from tests.test_locate import local_profile

    prof = atomic_write_json(tmp_path / "here.json", local_profile())
    said = []
    s = trim_run(tiny_run, "0.9x", "cpu", str(prof), max_time_s=0.2, min_runs=16,
                 verify_max_time_s=0.3, knn=False, calib_samples=32, say=said.append)
    out = tiny_run / "trim-0.9x"
    assert s["dir"] == str(out)
    for f in ("checkpoint.pt", "pattern.json", "trim.json", "verify.json", "summary.json"):
        assert (out / f).exists(), f
    rec = json.loads((out / "trim.json").read_text())
    assert rec["target_ms"] == pytest.approx(0.9 * 33.0) and rec["steps"]
    assert all("samples_ms" in st["measured"] for st in rec["steps"])
    ver = json.loads((out / "verify.json").read_text())
    assert s["measured_ms"] == ver["measured"]["p90_ms"] and len(ver["measured"]["samples_ms"])
    # the trimmed checkpoint loads as a run and carries the switched-off gates
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    biases = torch.cat([v for k, v in ck["model"].items() if k.endswith("gate.fc2.bias")])
    assert (biases <= -1e3).sum().item() == s["n_off"] == ck["trim"]["n_off"]
    assert "optimizer" not in ck and any("trim:" in line for line in said)



def test_a_latency_budget_run_on_this_machine_is_trimmed_by_default(tmp_path, monkeypatch):
    from hwbench.target import train_to_target
    from hwbench.train import TrainConfig
    from tests.test_locate import local_profile

    monkeypatch.chdir(tmp_path)
    prof = atomic_write_json(tmp_path / "profiles" / "here.json", local_profile())
    fast = {"max_time_s": 0.2, "min_runs": 16, "verify_max_time_s": 0.3, "knn": False,
            "calib_samples": 32}

    def cfg(name, budget):
        return TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                           proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                           eval_initial=False, budget=budget, out=str(tmp_path / name))

    said = []
    s = train_to_target(cfg("lat", "latency"), targets=[(str(prof), "0.8x")],
                        verify_max_time_s=0.3, trim_options=fast, say=said.append)
    assert s["trim"]["dir"] == str(tmp_path / "lat" / "trim-26.4ms")  # 0.8 x 33 ms
    saved = json.loads((tmp_path / "lat" / "summary.json").read_text())
    assert saved["trim"]["measured_ms"] == s["trim"]["measured_ms"]
    assert any("trimming the learned network" in line for line in said)
    s = train_to_target(cfg("flops", "flops"), targets=[(str(prof), "0.8x")],
                        verify_max_time_s=0.3, trim_options=fast)
    assert "trim" not in s and not list((tmp_path / "flops").glob("trim-*"))
