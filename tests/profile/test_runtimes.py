"""Profiles on a deployment runtime (``--runtime``): an ONNX Runtime profile end to end, its
fingerprint, matching by runtime, predict/pick refusing another runtime in one line, and a
missing runtime named with its extra."""

import json
import sys

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint
from hwbench.pattern.gate_pattern import synthesise
from hwbench.profile.build import ProfileConfig, run_profile
from hwbench.profile.locate import Conditions, find_profile
from hwbench.profile.predictor import load_profile, profile_filename, save_profile
from tests.conftest import one_line_error
from tests.conftest import run_cli as run

FAST = dict(input_size=16, t_d=(0.5, 1.0), max_time_s=1.0, min_runs=8, warmup=1,
            min_warmup_s=0.0, grid=4, table_rounds=2, validation=2, calibration=2,
            energy=False, threads=1)


@pytest.fixture(scope="module")
def ort_profile(tmp_path_factory):
    """One small ONNX Runtime profile, saved under its own name in a fresh folder."""
    pytest.importorskip("onnxruntime")
    prof = run_profile(ProfileConfig(runtime="onnxruntime", **FAST))
    folder = tmp_path_factory.mktemp("profiles")
    return prof, save_profile(prof, folder / profile_filename(prof["fingerprint"]))


@pytest.mark.slow
def test_an_onnxruntime_profile_records_its_runtime_and_times_the_runtime(ort_profile):
    import onnxruntime as ort

    prof, path = ort_profile
    fp = prof["fingerprint"]
    assert fp["runtime"] == "onnxruntime" and fp["runtime_version"] == ort.__version__
    assert fp["provider"] == "CPUExecutionProvider" and fp["runtime_threads"] == 1
    assert fp["settings"]["intra_op_num_threads"] == 1 and fp["threads"] == 1
    assert fp["execution"] == "eager" and path.name.endswith("_onnxruntime.json")
    # a graph cannot skip a channel per input: the runtime's dynamic mode is the static graph
    assert prof["dynamic_plan"] == ["static"] * 8
    assert prof["dynamic_executes"] == ["kept"] * 8
    table = prof["table"]
    assert table["stem_ms"] > 0 and table["head_ms"] > 0
    assert len(table["dense_blocks_ms"]) == 10 and all(v > 0 for v in table["dense_blocks_ms"])
    for b in table["blocks"]:
        assert b["grid"] == [0, b["channels"] // 4, b["channels"] // 2, 3 * b["channels"] // 4,
                             b["channels"]]
        assert all(v > 0 for v in b["plain_ms"] + b["gated_ms"])
    assert [s["t_d"] for s in prof["sweep"]] == [0.5, 1.0]
    for s in prof["sweep"]:
        assert s["measured"]["n"] >= 8 and s["predicted_p50_ms"] > 0
    assert prof["references"]["dense"]["p50_ms"] > 0 and prof["validation"]["n"] == 2
    assert prof["calibration"]["scale"] > 0
    assert load_profile(path)["fingerprint"]["runtime"] == "onnxruntime"


@pytest.mark.slow
def test_a_runtime_profile_matches_only_its_runtime(ort_profile):
    import onnxruntime as ort

    prof, path = ort_profile
    here = fingerprint(torch.device("cpu"), 1)

    def cond(runtime, version=None):
        return Conditions("resnet18", "cifar", 16, 1, "fp32", 1, runtime=runtime,
                          runtime_version=version)

    misses: list = []
    assert find_profile(here, cond("eager"), path.parent, misses) is None
    assert misses == [(path, "runtime onnxruntime, not eager")]
    assert find_profile(here, cond("openvino", "2026.4"), path.parent) is None
    assert find_profile(here, cond("onnxruntime", "0.0.1"), path.parent) is None  # version
    found = find_profile(here, cond("onnxruntime", ort.__version__), path.parent)
    assert found is not None and found[0] == path


@pytest.mark.slow
def test_predict_and_pick_name_the_runtime_and_refuse_another(ort_profile, tmp_path):
    _, path = ort_profile
    pat = synthesise("resnet18", "cifar", 16, 0.5).save(tmp_path / "p.json")
    d = json.loads(run("predict", "--profile", path, "--pattern", pat, "--json").output)
    assert d["runtime"] == "onnxruntime" and d["p50_ms"] > 0
    r = run("predict", "--profile", path, "--pattern", pat, "--runtime", "onnxruntime")
    assert r.exit_code == 0 and "runtime onnxruntime" in r.output
    r = run("pick", "--profile", path, "--target-latency", "10s")
    assert r.exit_code == 0 and "runtime onnxruntime" in r.output, r.output
    d = json.loads(run("pick", "--profile", path, "--target-latency", "10s", "--runtime",
                       "onnxruntime", "--json").output)
    assert d["t_d"] == 1.0 and d["runtime"] == "onnxruntime"
    line = one_line_error(run("pick", "--profile", path, "--target-latency", "10s",
                              "--runtime", "openvino"))
    assert "measured on runtime onnxruntime, not openvino" in line
    line = one_line_error(run("predict", "--profile", path, "--pattern", pat, "--runtime",
                              "eager"))
    assert "not eager" in line


@pytest.mark.slow
def test_profile_cli_passes_the_runtime_and_names_it(ort_profile, tmp_path, monkeypatch):
    """The CLI's part: --runtime reaches the profiler's config and the summary names it (the
    measuring itself is the library's, timed above)."""
    from hwbench.profile.build import Profiler

    prof, _ = ort_profile
    seen = []

    def fake_run(self):
        seen.append(self.cfg.runtime)
        return prof

    monkeypatch.setattr(Profiler, "run", fake_run)
    out = tmp_path / "p.json"
    r = run("profile", "--runtime", "onnxruntime", "--input-size", "16", "--no-energy",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert seen == ["onnxruntime"] and "runtime onnxruntime" in r.output
    d = json.loads(run("profile", "--runtime", "onnxruntime", "--input-size", "16", "--out",
                       tmp_path / "q.json", "--json").output)
    assert d["runtime"].startswith("onnxruntime")
    assert "invalid value for '--runtime'" in one_line_error(
        run("profile", "--runtime", "tensorrt", "--out", out)).lower()


def test_a_missing_runtime_is_named_with_its_extra_before_any_work(tmp_path, monkeypatch):
    from hwbench.profile.build import Profiler

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    monkeypatch.setattr(Profiler, "run", lambda self: pytest.fail("measured"))
    out = tmp_path / "p.json"
    line = one_line_error(run("profile", "--runtime", "onnxruntime", "--out", out))
    assert "pip install 'hwbench[onnx]'" in line and "onnxruntime" in line
    assert not out.exists()
    with pytest.raises(UsageError, match=r"hwbench\[onnx\]"):  # the library refuses too
        Profiler(ProfileConfig(runtime="onnxruntime"))


def test_a_runtime_needs_the_eager_exec_and_a_known_name():
    from hwbench.profile.build import Profiler

    with pytest.raises(UsageError, match="--exec eager"):
        Profiler(ProfileConfig(runtime="onnxruntime", execution="compile"))
    with pytest.raises(UsageError, match="unknown runtime"):
        Profiler(ProfileConfig(runtime="tvm"))


@pytest.mark.slow
def test_an_openvino_profile_runs_and_records_openvino():
    ov = pytest.importorskip("openvino")
    cfg = dict(FAST, t_d=(1.0,), grid=1, validation=0, calibration=0, max_time_s=0.5)
    prof = run_profile(ProfileConfig(runtime="openvino", **cfg))
    fp = prof["fingerprint"]
    assert fp["runtime"] == "openvino" and fp["runtime_version"] == ov.__version__
    assert fp["provider"] == "CPU" and fp["settings"]["INFERENCE_NUM_THREADS"] == 1
    assert prof["table"]["stem_ms"] > 0
    assert all(v > 0 for b in prof["table"]["blocks"] for v in b["plain_ms"])
    assert prof["sweep"][0]["measured"]["p50_ms"] > 0
