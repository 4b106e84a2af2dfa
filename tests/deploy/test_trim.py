"""Trimming a trained network to a latency target on the device: the ranking, the switch that
makes channels off for good, the measured search (with a fake device), and the run it writes."""

import copy
import functools
import json
import random

import pytest
import torch

from hwbench.deploy.moves import (
    ranking,
    restore_ranking,
    restored_pattern,
    switch_off,
    switch_on,
    trimmed_pattern,
)
from hwbench.deploy.pipeline import trim_run
from hwbench.deploy.trim import SearchRule, logit_means, search
from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.errors import UsageError
from hwbench.io import atomic_write_json
from hwbench.pattern.gate_pattern import mixed_pattern, summarise
from hwbench.profile.predictor import Predictor
from tests.conftest import (
    goals_for,
    one_line_error,
    random_gate_heads,
    run_cli,
    trim_goal_for,
)
from tests.profile.test_predictor import synthetic_profile


def calib_images(n=64):
    return pattern_inputs(n, 32, seed=5)


def learned(seed=0):
    """A realised mixed pattern and its summary (a fresh copy: the search deploys in place)."""
    return copy.deepcopy(_learned(seed))


@functools.cache
def _learned(seed):
    p = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=seed)
    net = realise(p, seed=1).eval()
    return net, summarise(net, [calib_images()])


@pytest.mark.slow
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


def uneven(factors):
    """The synthetic profile with block i's times scaled by ``factors[i]``: a device the
    profile misjudges unevenly (some blocks 30% slower than it says, some faster)."""
    prof = synthetic_profile()
    for f, b in zip(factors, prof["table"]["blocks"]):
        b["plain_ms"] = [f * v for v in b["plain_ms"]]
        b["gated_ms"] = [f * v for v in b["gated_ms"]]
    return Predictor(prof)


FACTORS = [1.3, 0.8, 1.0, 1.3, 0.85, 1.15, 1.3, 0.9]


def fake_device(truth: Predictor, target_ms: float, seed: int, common: float, own: float,
                relative: bool):
    """Scores of a noisy device: each measurement's p90 is off by a drift common to the
    network and the dense reference measured alongside (+-``common``) and its own noise
    (+-``own``); a relative target sees only the second, an absolute one both."""
    rng = random.Random(seed)
    calls = []

    def measure(net, pattern):
        true = truth.predict(pattern, "p90") / target_ms
        drift, noise = rng.uniform(-common, common), rng.uniform(-own, own)
        score = true * (1 + noise) * (1 if relative else 1 + drift)
        calls.append(score)
        return {"score": score, "valid": True}

    return measure, calls


def run_search(seed, common, own, relative, frac):
    net, _ = learned()
    pred, truth = Predictor(synthetic_profile()), uneven(FACTORS)
    base = summarise(net, [calib_images(16)])
    target = frac * truth.predict(base, "p90")
    measure, calls = fake_device(truth, target, seed, common, own, relative)
    res = search(net, calib_images(16), torch.device("cpu"), measure,
                 lambda pat: pred.predict(pat, "p90") / target, pred)
    return res, truth.predict(res.pattern, "p90") / target, calls


@pytest.mark.parametrize("seed,frac", [(0, 0.55), (1, 0.7), (2, 0.85)])
def test_a_relative_target_lands_on_a_drifting_device_the_profile_misjudges(seed, frac):
    # +-7% drift per measurement, +-2% of its own: the ratio to dense cancels the drift
    res, true, calls = run_search(seed, 0.07, 0.02, True, frac)
    assert res.hit, res.reason
    assert 0.90 <= true <= 1.0  # the network itself, not the last draw, lands in the band
    assert len(calls) == len(res.steps) <= 12
    assert res.pattern.layers and res.steps[-1]["n"] == res.n > 0  # it started over: trimmed
    assert res.n_off == len(res.changed) and res.n_restored == 0
    assert res.to_dict()["switched_off"] and not res.to_dict()["restored"]


@pytest.mark.parametrize("seed", range(4))
def test_an_absolute_target_on_a_7pct_noisy_device_lands_or_says_it_could_not(seed):
    res, true, calls = run_search(seed, 0.07, 0.0, False, 0.7)
    if res.hit:
        assert 0.90 <= true <= 1.0
    else:
        assert "no candidate confirmed" in res.reason and res.spread > 0.02
        assert abs(true - 1) < 0.1  # the closest estimate is still returned


def test_an_unreachable_target_returns_the_fastest_try_and_says_it_missed():
    net, _ = learned()
    pred = Predictor(synthetic_profile())
    measure, calls = fake_device(pred, 0.01, 0, 0.0, 0.0, True)
    res = search(net, calib_images(16), torch.device("cpu"), measure,
                 lambda pat: pred.predict(pat, "p90") / 0.01, pred)
    assert not res.hit and "no candidate met the target" in res.reason
    assert res.score == pytest.approx(min(calls), rel=1e-6)


def test_invalid_measurements_are_never_accepted():
    net, _ = learned()
    pred = Predictor(synthetic_profile())
    base = summarise(net, [calib_images(16)])
    target = 0.7 * pred.predict(base, "p90")

    def measure(net, pattern):  # perfect numbers, but no valid CI
        return {"score": pred.predict(pattern, "p90") / target, "valid": False}

    res = search(net, calib_images(16), torch.device("cpu"), measure,
                 lambda pat: pred.predict(pat, "p90") / target, pred)
    assert not res.hit and "no valid measurement" in res.reason


# --- restoring: the search moves both ways --------------------------------------------------


def test_the_searchs_band_is_the_verdicts():
    from hwbench.deploy.verdict import BAND

    assert SearchRule().band == BAND and SearchRule(tolerance=0.05).band == (0.95, 1.0)


def test_logit_means_are_each_gates_mean_logit():
    net, _ = learned()
    x = calib_images(16)
    with torch.no_grad():  # block 2's gate: a constant logit per channel
        gate = [b for _, b in net.blocks()][2].gate
        gate.fc2.weight.zero_()
        gate.fc2.bias.copy_(torch.linspace(-3, 1, gate.fc2.out_channels))
    means = logit_means(net, [x[:10], x[10:]], "cpu")
    assert [len(m) for m in means] == [b.gate.fc2.out_channels for _, b in net.blocks()]
    assert means[2].tolist() == pytest.approx(torch.linspace(-3, 1, len(means[2])).tolist())


def gated_at_random(gate="channel"):
    """A network whose gates decide by input (random last convs, biases from +3 to -3)."""
    from hwbench.nets import create_net

    torch.manual_seed(3)
    net = create_net("resnet18", stem="cifar", gate=gate).eval()
    random_gate_heads(net, spread=3.0)
    return net


def test_restore_ranking_lists_always_off_channels_nearest_to_on_first():
    net = gated_at_random()
    x = [calib_images(32)]
    pattern, means = summarise(net, x), logit_means(net, x, "cpu")
    cands = restore_ranking(pattern, means)
    for i, lp in enumerate(pattern.layers):
        never = set(range(lp.channels)) - set(lp.on_idx) - set(lp.dynamic_idx)
        assert {c.channel for c in cands if c.block == i} == never
    keys = [c.logit for c in cands]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) > 1
    # each key is the channel's own mean logit, below 0 on every calibration image
    assert all(c.logit == pytest.approx(float(means[c.block][c.channel])) for c in cands)
    assert max(keys) < 0


def test_restored_channels_are_on_for_every_input_and_the_stand_in_agrees():
    net, pattern = learned()
    cands = restore_ranking(pattern, logit_means(net, [calib_images()], "cpu"))[:200]
    switch_on(net, cands)
    unseen = summarise(net, [pattern_inputs(32, 32, seed=99)])  # inputs the ranking never saw
    assert all(c.channel in unseen.layers[c.block].on_idx for c in cands)
    got, want = summarise(net, [calib_images()]), restored_pattern(pattern, cands)
    first = min(c.block for c in cands)
    for i, (lp, lw) in enumerate(zip(pattern.layers, want.layers)):
        back = sum(c.block == i for c in cands)
        assert (lw.always_on, lw.always_off) == (lp.always_on + back, lp.always_off - back)
        if i <= first:  # later gates see the changed features: the stand-in is a guess there
            assert got.layers[i].on_idx == lw.on_idx
            assert got.layers[i].dynamic_idx == lw.dynamic_idx
    pred = Predictor(synthetic_profile())
    assert pred.predict(want, "p90") > pred.predict(pattern, "p90")


def test_width_gated_restoring_raises_caps_from_the_widest_kept_width():
    net = gated_at_random("width:16")
    x = calib_images(32)
    pattern = summarise(net, [x])
    cands = restore_ranking(pattern, logit_means(net, [x], "cpu"))
    assert cands and all(c.step == 16 for c in cands)
    for i, lp in enumerate(pattern.layers):  # every closed group, the lowest first
        mine = [c.channel for c in cands if c.block == i]
        assert mine == list(range(lp.channels - lp.always_off, lp.channels, 16))
    for n in (1, len(cands) // 3, len(cands)):
        m = copy.deepcopy(net)
        switch_on(m, cands[:n])
        got, want = summarise(m, [x]), restored_pattern(pattern, cands[:n])
        first = min(c.block for c in cands[:n])
        for i in range(first + 1):
            back = [c.channel for c in cands[:n] if c.block == i]
            if back:  # the inputs that kept the widest width now keep the reopened groups too
                top = max(back) + 16
                assert got.layers[i].channels - got.layers[i].always_off == top
            assert got.layers[i].width_hist == pytest.approx(want.layers[i].width_hist)


@pytest.mark.parametrize("seed", range(3))
def test_a_network_far_under_the_target_climbs_into_the_band_by_restoring(seed):
    # it starts at 0.75 x target (25 % of the latency unused) on a device the profile misjudges
    # block by block (FACTORS), with +-3 % noise of its own per measurement
    res, true, calls = run_search(seed, 0.0, 0.03, True, 1 / 0.75)
    assert res.hit, res.reason
    assert 0.90 <= true <= 1.0
    assert res.n < 0 and res.n_restored == len(res.changed) > 0 and res.n_off == 0
    d = res.to_dict()
    assert d["restored"] == [c.to_dict() for c in res.changed] and not d["switched_off"]
    assert d["n"] == res.n and len(calls) == len(res.steps) <= 12
    assert all(c.channel in res.pattern.layers[c.block].on_idx for c in res.changed)


def test_a_target_out_of_reach_above_returns_the_slowest_and_says_so():
    net, _ = learned()
    pred = Predictor(synthetic_profile())
    target = 10 * pred.predict(summarise(net, [calib_images(16)]), "p90")  # > dense
    measure, calls = fake_device(pred, target, 0, 0.0, 0.0, True)
    res = search(net, calib_images(16), torch.device("cpu"), measure,
                 lambda pat: pred.predict(pat, "p90") / target, pred)
    assert not res.hit and "no candidate reached the band" in res.reason
    assert res.n == -res.restorable < 0  # every always-off channel back on
    assert res.score == pytest.approx(max(calls), rel=1e-6) and res.score < 0.9


def test_trim_run_refuses_what_it_cannot_trim(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint.pt"):
        trim_run(tmp_path, trim_goal_for(tmp_path, "5ms"))
    r = run_cli("trim", tmp_path / "none", "--target-latency", "5ms")
    assert "no checkpoint.pt" in one_line_error(r)
    r = run_cli("trim", tmp_path, "--target-latency", "soon")
    assert "cannot parse latency" in one_line_error(r)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from hwbench.train.config import TrainConfig
    from hwbench.train.loop import train

    d = tmp_path_factory.mktemp("trimrun")
    cfg = TrainConfig(dataset="synthetic", n_synthetic=64, batch_size=16, epochs=1,
                      proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                      eval_initial=False, out=str(d / "run"), models_dir=str(d / "models"))
    train(cfg)
    return d / "run"


@pytest.mark.slow
def test_trim_run_needs_this_machines_profile(tiny_run, tmp_path):
    other = atomic_write_json(tmp_path / "other.json", synthetic_profile())  # a "Test CPU"
    with pytest.raises(UsageError, match="not this machine"):
        trim_run(tiny_run, trim_goal_for(tiny_run, "5ms", other))


@pytest.mark.slow
def test_trim_run_writes_a_trimmed_run_measured_anew(tiny_run, tmp_path):
    from tests.profile.test_locate import local_profile

    prof = atomic_write_json(tmp_path / "here.json", local_profile())
    said = []
    s = trim_run(tiny_run, trim_goal_for(tiny_run, "0.9x", prof), max_time_s=0.2, min_runs=40,
                 verify_max_time_s=0.3, knn=False, calib_samples=32, max_measurements=3,
                 say=said.append)
    out = tiny_run / "trim-0.9x"
    assert s["dir"] == str(out)
    for f in ("checkpoint.pt", "pattern.json", "trim.json", "verify.json", "summary.json"):
        assert (out / f).exists(), f
    rec = json.loads((out / "trim.json").read_text())
    assert rec["target"]["ratio"] == 0.9 and rec["steps"]
    assert rec["calibration"]["source"] == "synthetic:train" and rec["calibration"]["n"] == 32
    counts = rec["calibration"]["class_counts"].values()
    assert max(counts) - min(counts) <= 1  # stratified, not the split's first images
    assert rec["inputs"]["source"] == "synthetic:test"
    assert all("samples_ms" in st["measured"]["measured"] for st in rec["steps"])
    ver = json.loads((out / "verify.json").read_text())
    assert s["measured_ms"] == ver["measured"]["p90_ms"] and len(ver["measured"]["samples_ms"])
    assert ver["inputs"]["source"] == "synthetic:test" and ver["inputs"]["n"] >= 32
    assert ver["measured"]["quantile"] == 0.9
    # a 0.2 s measurement cannot give a p90 within 2%: nothing is decided on it
    if not ver["valid"]:
        assert not ver["met"] and "no valid p90" in ver["reason"] and not s["met"]
    # the trimmed checkpoint loads as a run and carries the switched-off gates
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["trim"]["n"] == s["n"] and ck["trim"]["n_off"] == s["n_off"]
    assert rec["band"] == [0.9, 1.0] and rec["n"] == s["n"]
    assert len(rec["restored"]) == s["n_restored"] and len(rec["switched_off"]) == s["n_off"]
    # the verdict on the delivered network, beside its measurement, in RUN/final.json
    final = json.loads((tiny_run / "final.json").read_text())
    assert final == s["delivered"] and final["schema"] == "hwbench/final@1"
    assert final["network"] == "trim-0.9x" and final["band"] == [0.9, 1.0]
    assert final["target"] == {"percentile": "p90", "ratio": 0.9, "ms": None}
    assert final["measured"] == {"ratio": ver["ratio_to_dense"]["value"],
                                 "ms": ver["measured"]["p90_ms"], "runtime": "eager",
                                 "valid": ver["valid"]}
    assert final["verdict"] == ver["verdict"] and final["exit_code"] == \
        {"MET": 0, "UNDERSHOT": 4, "MISSED": 4, "NO DECISION": 5}[final["verdict"]]
    assert final["knn_top1"]["gated"] is None and final["baseline"] is None  # --no-knn
    assert "optimizer" not in ck and any("trim:" in line for line in said)


@pytest.mark.slow
def test_a_latency_budget_run_on_this_machine_is_trimmed_by_default(tmp_path, monkeypatch):
    from hwbench.deploy.pipeline import train_to_target
    from hwbench.train.config import TrainConfig
    from tests.profile.test_locate import local_profile

    monkeypatch.chdir(tmp_path)
    prof = atomic_write_json(tmp_path / "profiles" / "here.json", local_profile())
    fast = {"max_time_s": 0.2, "min_runs": 40, "verify_max_time_s": 0.3, "knn": False,
            "max_measurements": 3,
            "calib_samples": 32}

    def cfg(name, budget):
        return TrainConfig(dataset="synthetic", n_synthetic=32, batch_size=16, epochs=1,
                           proj_dims=(32, 32, 16), max_steps_per_epoch=1, energy=False,
                           eval_initial=False, budget=budget, out=str(tmp_path / name))

    said = []
    lat = cfg("lat", "latency")
    s = train_to_target(lat, goals_for(lat, f"{prof}:0.8x"), verify_max_time_s=0.3,
                        trim_options=fast, say=said.append)
    assert s["trim"]["dir"] == str(tmp_path / "lat" / "trim-0.8x")
    saved = json.loads((tmp_path / "lat" / "summary.json").read_text())
    assert saved["trim"]["measured_ms"] == s["trim"]["measured_ms"]
    assert any("trimming the learned network" in line for line in said)
    assert json.loads((tmp_path / "lat" / "final.json").read_text())["network"] == "trim-0.8x"
    flops = cfg("flops", "flops")
    s = train_to_target(flops, goals_for(flops, f"{prof}:0.8x"), verify_max_time_s=0.3,
                        trim_options=fast)
    assert "trim" not in s and not list((tmp_path / "flops").glob("trim-*"))
    # untrimmed, the deployed network is the one delivered, judged as verify.json measured it
    final = json.loads((tmp_path / "flops" / "final.json").read_text())
    ver = json.loads((tmp_path / "flops" / "verify.json").read_text())
    assert final == s["delivered"] and final["network"] == "deployed"
    assert final["verdict"] == ver["verdict"] and final["measured"]["valid"] == ver["valid"]
    assert final["knn_top1"]["gated"] == s["deployed"]["eval"]["knn_top1_gated"]


def test_width_gated_trimming_caps_widths_from_the_top():
    from hwbench.nets import create_net

    torch.manual_seed(3)
    net = create_net("resnet18", stem="cifar", gate="width:16").eval()
    random_gate_heads(net, spread=3.0)
    x = calib_images(32)
    pattern = summarise(net, [x])
    assert pattern.gate.kind == "width" and any(lp.dynamic for lp in pattern.layers)
    cands = ranking(pattern, Predictor(synthetic_profile()))
    assert cands and all(c.channel > 0 and c.channel % 16 == 0 for c in cands)
    for i in range(len(pattern.layers)):  # within a block the higher group always goes first
        mine = [c.channel for c in cands if c.block == i]
        assert mine == sorted(mine, reverse=True)
    for n in (1, len(cands) // 3, len(cands)):
        trimmed = copy.deepcopy(net)
        switch_off(trimmed, cands[:n])
        got, want = summarise(trimmed, [x]), trimmed_pattern(pattern, cands[:n])
        first = min(c.block for c in cands[:n])
        for i, (lg, lw) in enumerate(zip(got.layers, want.layers)):
            gone = [c.channel for c in cands[:n] if c.block == i]
            if gone:
                assert lg.channels - lg.always_off <= min(gone)  # capped below the lowest
                assert lw.channels - lw.always_off <= min(gone)
            if i <= first:  # later gates see the changed features: the stand-in is a guess
                assert lg.width_hist == pytest.approx(lw.width_hist)


# --- runtimes ---------------------------------------------------------------------------------


def test_trim_names_a_missing_runtime_extra_before_reading_the_run(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    # a folder without a checkpoint: the runtime is checked first, so its line is the one said
    line = one_line_error(run_cli("trim", tmp_path, "--target-latency", "5ms", "--runtime",
                                  "onnxruntime"))
    assert "pip install 'hwbench[onnx]'" in line and "checkpoint" not in line


@pytest.mark.slow
def test_trim_run_takes_its_runtimes_profile_and_measures_on_it(tiny_run, tmp_path,
                                                                 monkeypatch):
    pytest.importorskip("onnxruntime")
    from tests.deploy.test_verify import fake_measurement, runtime_profile
    from tests.profile.test_locate import local_profile

    eager = atomic_write_json(tmp_path / "eager.json", local_profile())
    with pytest.raises(UsageError, match="runtime eager, not onnxruntime"):
        trim_run(tiny_run, trim_goal_for(tiny_run, "0.9x", eager, runtime="onnxruntime"))
    onnx = atomic_write_json(tmp_path / "onnx.json", runtime_profile("onnxruntime"))
    with pytest.raises(UsageError, match="runtime onnxruntime, not eager"):
        trim_run(tiny_run, trim_goal_for(tiny_run, "0.9x", onnx))
    timed = []

    def fake_time_network(net, pattern, inputs, dev, *a, runtime="eager", threads=None, **kw):
        timed.append(runtime)
        return fake_measurement(4.0, 8.0), ["static"] * 8

    monkeypatch.setattr("hwbench.deploy.verify.time_network", fake_time_network)
    said = []
    goal = trim_goal_for(tiny_run, "0.9x", onnx, runtime="onnxruntime")
    s = trim_run(tiny_run, goal, max_time_s=0.1, min_runs=10,
                 verify_max_time_s=0.1, knn=False, calib_samples=32, max_measurements=2,
                 out=tmp_path / "trimmed", say=said.append)
    assert timed == ["onnxruntime"] * 3  # two candidates, then the trimmed network anew
    rec = json.loads((tmp_path / "trimmed" / "trim.json").read_text())
    assert rec["runtime"]["runtime"] == "onnxruntime" and "onnxruntime graph" in rec["protocol"]
    ver = json.loads((tmp_path / "trimmed" / "verify.json").read_text())
    assert ver["runtime"]["runtime"] == s["runtime"]["runtime"] == "onnxruntime"
    assert ver["profile"] == str(onnx) and any("(onnxruntime)" in line for line in said)
