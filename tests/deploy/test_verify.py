import json
import sys

import numpy as np
import pytest
import torch

from hwbench.io import atomic_write_json
from hwbench.pattern.gate_pattern import mixed_pattern
from tests.conftest import measuring_goal_for, one_line_error, run_cli
from tests.profile.test_locate import local_profile


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained[1], tiny_trained[2]


def fake_measurement(gated_p90, dense_p90, n=400, spread=0.002, quantile=0.9):
    """Samples whose p90 is (about) the given ms: a tight body, 10% tail at the p90."""
    from hwbench.measure.protocol import Inputs, Measurement, Protocol
    from hwbench.measure.stats import summarise

    def samples(p90):
        body = list(np.linspace(p90 * (1 - 2 * spread), p90 * (1 - spread), int(n * 0.9)))
        return body + list(np.linspace(p90, p90 * (1 + spread), n - len(body)))

    res = {}
    for name, p90 in (("dynamic", gated_p90), ("dense", dense_p90)):
        xs = samples(p90)
        res[name] = {**summarise(xs, 0.02, quantile=quantile).to_dict(), "samples_ms": xs}
    return Measurement(res, Protocol(quantile=quantile).to_dict(),
                       Inputs([], {"source": "fake"}).record)


@pytest.mark.parametrize("target,met", [("5ms", True), ("4.95ms", False),
                                        ("0.7x", True), ("0.69x", False)])
def test_met_is_decided_near_the_target_in_the_targets_own_terms(target, met):
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    m = fake_measurement(4.98, 7.12)  # p90 ratio 0.6994
    d = decide(m, LatencyTarget.parse(target), None)
    assert d["valid"] and d["met"] is met
    assert d["score"] == pytest.approx(m.at("dynamic") / (
        5.0 if target == "5ms" else 4.95 if target == "4.95ms" else
        float(target[:-1]) * m.at("dense")))


@pytest.mark.parametrize("target,verdict", [("5.52ms", "MET"), ("5.53ms", "UNDERSHOT"),
                                            ("4.97ms", "MISSED"), ("0.777x", "MET"),
                                            ("0.778x", "UNDERSHOT")])
def test_far_under_the_target_is_undershot_not_met(target, verdict):
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    m = fake_measurement(4.98, 7.12)  # p90 4.971 ms: 0.9005 x 5.52 ms, 0.8989 x 5.53 ms,
    # 1.0002 x 4.97 ms; ratio 0.6994 to dense: 0.9002 x 0.777, 0.8990 x 0.778
    d = decide(m, LatencyTarget.parse(target), None)
    assert d["verdict"] == verdict and d["met"] is (verdict == "MET") and d["band"] == [0.9, 1]
    if verdict == "UNDERSHOT":
        assert "% of the latency budget unused" in d["verdict_message"]


def test_a_narrower_band_is_decided_as_given():
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    m = fake_measurement(4.98, 7.12)  # p90 4.971 ms: 0.938 x 5.3 ms
    d = decide(m, LatencyTarget.parse("5.3ms"), None, band=(0.95, 1.0))
    assert (d["verdict"], d["band"]) == ("UNDERSHOT", [0.95, 1.0])
    assert decide(m, LatencyTarget.parse("5.3ms"), None)["verdict"] == "MET"


def test_a_relative_target_is_immune_to_drift_an_absolute_one_is_not():
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    fast, slow = fake_measurement(4.9, 7.0), fake_measurement(4.9 * 1.2, 7.0 * 1.2)  # +20%
    rel = LatencyTarget.parse("0.71x")
    assert decide(fast, rel, None)["met"] and decide(slow, rel, None)["met"]
    ab = LatencyTarget.parse("5ms")
    assert decide(fast, ab, None)["met"] and not decide(slow, ab, None)["met"]


def test_no_valid_measurement_no_decision_and_a_stale_profile_is_said():
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    wide = fake_measurement(4.0, 7.0, spread=0.05)  # p90 CI far wider than 2%
    d = decide(wide, LatencyTarget.parse("10ms"), None)
    assert not d["valid"] and not d["met"] and "no valid p90 for dynamic" in d["reason"]
    few = fake_measurement(4.0, 7.0, n=30)  # no p90 interval exists with 30 samples
    assert not decide(few, LatencyTarget.parse("10ms"), None)["valid"]
    prof = {"references": {"dense": {"p90_ms": 6.0}}}
    d = decide(fake_measurement(4.9, 7.0), LatencyTarget.parse("5ms"), prof)
    stale = d["profile_stale"]
    dense_now = d["ratio_to_dense"]["value"] and fake_measurement(4.9, 7.0).at("dense")
    assert stale["dense_now_vs_profile"] == pytest.approx(dense_now / 6.0 - 1)
    assert f"{5 / dense_now:.3f}x of the dense p90 now" in stale["note"]
    assert "0.833x when profiled" in stale["note"]
    assert "profile_stale" not in decide(fake_measurement(4.9, 6.3), LatencyTarget.parse("5ms"),
                                         prof)


@pytest.mark.slow
def test_verify_a_checkpoint_on_real_test_images(trained, tmp_path):
    pattern, ckpt = trained
    prof = atomic_write_json(tmp_path / "p.json", local_profile())
    r = run_cli("verify", "--pattern", pattern, "--checkpoint", ckpt, "--target-latency", "10s",
                "--profile", prof, "--max-time", "0.5", "--json")
    d = json.loads(r.output)
    assert d["inputs"]["source"] == "synthetic:test" and d["inputs"]["n"] == 64
    assert sum(d["inputs"]["class_counts"].values()) == 64
    assert d["predicted"]["p90_ms"] > 0 and d["measured"]["quantile"] == 0.9
    assert len(d["measured"]["samples_ms"]) == d["measured"]["n"] >= 64
    # exit code follows the verdict: a network measured in ms is far under a 10 s target
    assert d["verdict"] in ("UNDERSHOT", "NO DECISION") and not d["met"]
    assert r.exit_code == {"UNDERSHOT": 4, "NO DECISION": 5}[d["verdict"]], r.output
    assert d["band"] == [0.9, 1.0]
    r = run_cli("verify", "--pattern", pattern, "--checkpoint", ckpt, "--target-latency", "1us",
                "--profile", prof, "--max-time", "0.2")
    assert (r.exit_code, "MISSED" in r.output or "NO DECISION" in r.output) in \
        ((4, True), (5, True)), r.output
    assert ("NO DECISION" in r.output) == (r.exit_code == 5), r.output


@pytest.mark.slow
def test_verify_without_checkpoint_realises_the_pattern(tmp_path):
    pattern = mixed_pattern("resnet18", "cifar", 16, 0.4, seed=1).save(tmp_path / "p.json")
    r = run_cli("verify", "--pattern", pattern, "--target-latency", "10s", "--max-time", "0.5",
                "--json")
    d = json.loads(r.output)
    assert d["predicted"] is None  # no 16-px profile exists
    assert d["inputs"]["source"] == "synthetic" and d["checkpoint"] is None
    assert r.exit_code == {"MET": 0, "UNDERSHOT": 4, "MISSED": 4, "NO DECISION": 5}[
        d["verdict"]], r.output


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
    from hwbench.deploy.verify import _advice

    assert _advice("MET", 0.3, 0.5, 0.9) == "" == _advice("NO DECISION", None, 0.5, 0.9)
    assert "no t_d" in _advice("MISSED", None, 0.5, 0.9)
    slow = _advice("MISSED", 0.5, 0.5, 0.99)
    assert "already pick t_d 0.5" in slow and "99% of its gated channels" in slow
    assert _advice("MISSED", 0.3, 0.5, 0.2) == "the profile now suggests t_d 0.3 for this target"
    fast = _advice("UNDERSHOT", 0.7, 0.5, 0.2)
    assert "faster than the target needs" in fast and "hwbench trim" in fast
    assert "suggests t_d 0.7" in fast and "suggests" not in _advice("UNDERSHOT", 0.4, 0.5, 0.2)


# --- runtimes ---------------------------------------------------------------------------------


def runtime_profile(runtime="onnxruntime"):
    """This machine's synthetic profile, fingerprinted as measured on ``runtime``."""
    from hwbench.engine.runtimes import runtime_record

    prof = local_profile()
    rec = runtime_record(runtime, prof["fingerprint"]["threads"])
    prof["fingerprint"] = {**prof["fingerprint"], **rec}
    return prof


@pytest.mark.slow
def test_verify_on_a_runtime_times_its_graphs_and_records_it(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from hwbench.engine import runtimes
    from hwbench.measure.device import torch_threads

    built = []

    class Spy(runtimes.RuntimeNet):
        def __init__(self, net, mode, *a, **kw):
            built.append(mode)
            super().__init__(net, mode, *a, **kw)

    monkeypatch.setattr(runtimes.net, "RuntimeNet", Spy)  # what runnable builds
    pattern = mixed_pattern("resnet18", "cifar", 16, 0.4, seed=1).save(tmp_path / "p.json")
    with torch_threads(1):
        r = run_cli("verify", "--pattern", pattern, "--target-latency", "10s", "--max-time",
                    "0.2", "--runtime", "onnxruntime", "--json")
        assert r.exit_code in (4, 5), r.output  # under a 10 s target, or no valid p90
        d = json.loads(r.output)
        assert sorted(built) == ["dense", "dynamic"]  # what was timed is the runtime's
        rt = d["runtime"]
        assert rt["runtime"] == "onnxruntime" and rt["runtime_threads"] == 1
        assert rt["provider"] == "CPUExecutionProvider" and rt["runtime_version"]
        # channel gates on a graph: the static graph for every block (nothing skips per input)
        assert d["plan"] == ["static"] * 8 and len(d["measured"]["samples_ms"]) >= 64
    # the verdict names the runtime (printing only: the measured result is reused)
    monkeypatch.setattr("hwbench.deploy.verify.run_verify", lambda *a, **kw: d)
    head = run_cli("verify", "--pattern", pattern, "--target-latency", "10s").output
    assert f"(dynamic mode on onnxruntime {rt['runtime_version']}, batch 1" in head, head
    d = {**d, "runtime": {"runtime": "eager", "runtime_version": torch.__version__}}
    head = run_cli("verify", "--pattern", pattern, "--target-latency", "10s").output
    assert "(dynamic engine, batch 1" in head and "eager" not in head, head


def test_verify_refuses_a_profile_of_another_runtime_with_one_line(tmp_path):
    pytest.importorskip("onnxruntime")
    pattern = mixed_pattern("resnet18", "cifar", 32, 0.4, seed=1).save(tmp_path / "p.json")
    eager = atomic_write_json(tmp_path / "eager.json", local_profile())
    onnx = atomic_write_json(tmp_path / "onnx.json", runtime_profile("onnxruntime"))
    line = one_line_error(run_cli("verify", "--pattern", pattern, "--target-latency", "5ms",
                                  "--profile", eager, "--runtime", "onnxruntime"))
    assert "runtime eager, not onnxruntime" in line and str(eager) in line
    line = one_line_error(run_cli("verify", "--pattern", pattern, "--target-latency", "5ms",
                                  "--profile", onnx))
    assert "runtime onnxruntime, not eager" in line and "--runtime onnxruntime" in line


@pytest.mark.parametrize("module,runtime,extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                  ("openvino", "openvino", "openvino")])
def test_verify_names_a_missing_runtime_extra_before_any_work(tmp_path, monkeypatch, module,
                                                              runtime, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    # a pattern file that does not exist: the runtime is checked before anything is read
    line = one_line_error(run_cli("verify", "--pattern", tmp_path / "none.json",
                                  "--target-latency", "5ms", "--runtime", runtime))
    assert f"pip install 'hwbench[{extra}]'" in line and module in line


def test_no_decision_says_what_would_decide_it():
    from hwbench.deploy.verify import decide
    from hwbench.units import LatencyTarget

    m = fake_measurement(4.98, 7.12, n=30)  # 30 samples: no p90 CI exists yet
    m.protocol["max_time_s"] = 3.0
    d = decide(m, LatencyTarget.parse("0.7x"), None)
    assert not d["valid"] and d["verdict"] == "NO DECISION"
    assert "30 samples in 3 s" in d["reason"] and "no CI exists yet" in d["reason"]
    assert "about 36 samples, ~4 s: rerun with --max-time 4" in d["reason"]
    assert "idle machine" in d["reason"] and "\n" not in d["reason"]
    assert d["needs"]["dynamic"]["needed_n"] == 36


@pytest.mark.parametrize("quick", [True, False])
def test_a_stale_profile_is_acted_on_a_quick_one_marked_a_full_one_left_with_advice(
        tmp_path, monkeypatch, quick):
    from hwbench.deploy.verify import run_verify

    prof = local_profile()  # its dense p90: 33 ms
    prof["quick"] = quick
    path = atomic_write_json(tmp_path / "p.json", prof)
    before = path.read_bytes()
    pattern = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=1).save(tmp_path / "pat.json")
    now = fake_measurement(30.0, 40.0)  # dense measures +21% now (outside the 10% tolerance)
    monkeypatch.setattr("hwbench.deploy.verify.time_network", lambda *a, **kw: (now, ["static"]))
    monkeypatch.setattr("hwbench.deploy.verify.realise", lambda pattern: None)  # timing is faked
    d = run_verify(str(pattern), measuring_goal_for(pattern, "0.8x", path))
    stale = d["profile_stale"]
    if quick:
        assert stale["marked"] == str(path) and "next run here measures a new" in stale["note"]
        rec = json.loads(path.read_text())["stale"]
        assert rec["dense_now_ms"] == now.at("dense") and rec["dense_profiled_ms"] == 33.0
    else:
        assert path.read_bytes() == before and "marked" not in stale
        assert "`hwbench profile --device cpu`" in stale["note"]
    # within the tolerance nothing is said or written
    monkeypatch.setattr("hwbench.deploy.verify.time_network",
                        lambda *a, **kw: (fake_measurement(30.0, 34.0), ["static"]))
    fresh = atomic_write_json(tmp_path / "q.json", prof)
    again = fresh.read_bytes()
    d = run_verify(str(pattern), measuring_goal_for(pattern, "0.9x", fresh))
    assert d["verdict"] == "MET" and "profile_stale" not in d
    assert fresh.read_bytes() == again
