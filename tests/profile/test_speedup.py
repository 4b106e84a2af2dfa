import json
import statistics

import pytest

from hwbench.pattern.gate_pattern import mixed_pattern
from tests.conftest import one_line_error as _one_line_error
from tests.conftest import run_cli as run

FAST = ["--max-time", "0", "--min-runs", "5", "--warmup", "1"]


@pytest.fixture(scope="module")
def small_pattern(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "p.json"
    mixed_pattern("resnet18", "cifar", 16, 0.4, seed=1).save(path)
    return path




def test_speedup_json_reports_every_mode_from_its_raw_samples(small_pattern):
    r = run("speedup", "--pattern", small_pattern, "--json", *FAST)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d["modes"]) == {"dense", "masked", "static", "dynamic"}
    assert d["batch_size"] == 1 and d["device"]["type"] == "cpu"
    assert d["dynamic_batch_strategy"] == "per sample" and len(d["dynamic_plan"]) == 8
    dense = d["modes"]["dense"]
    for m in d["modes"].values():
        assert m["samples"] == len(m["samples_ms"]) >= 5
        assert m["p50_ms"] == pytest.approx(statistics.median(m["samples_ms"]))
        assert m["speedup"] == pytest.approx(dense["p50_ms"] / m["p50_ms"])
        assert m["efficiency"] == pytest.approx(m["speedup"] * m["macs"] / dense["macs"])
    assert d["flops_ratio"] == pytest.approx(d["modes"]["dynamic"]["macs"] / dense["macs"])
    assert abs(d["flops_ratio"] - 0.4) < 0.01
    assert d["modes"]["masked"]["macs"] > dense["macs"] > d["modes"]["static"]["macs"]


@pytest.mark.slow
def test_speedup_text_and_batch_strategy(small_pattern):
    r = run("speedup", "--pattern", small_pattern, "--batch-size", "2", "--threads", "1", *FAST)
    assert r.exit_code == 0, r.output
    assert "efficiency" in r.output and "union" in r.output and "dynamic" in r.output




@pytest.mark.parametrize("args,needle", [
    (["--device", "tpu"], "unknown device"),
    (["--batch-size", "0"], "--batch-size"),
    (["--threads", "0"], "--threads"),
    (["--dtype", "bf16"], "fp32"),
])
def test_speedup_bad_input(small_pattern, args, needle):
    assert needle in _one_line_error(run("speedup", "--pattern", small_pattern, *args, *FAST))


def test_speedup_cuda_without_gpu(small_pattern, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _one_line_error(run("speedup", "--pattern", small_pattern, "--device", "cuda"))
    assert "no CUDA GPU" in line


def test_speedup_pattern_of_an_unknown_arch(tmp_path, small_pattern):
    d = json.loads(small_pattern.read_text())
    d["arch"] = "resnet101"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    line = _one_line_error(run("speedup", "--pattern", bad))
    assert "arch" in line and str(bad) in line


@pytest.mark.parametrize("args,needle", [
    (["--tile", "8"], "--tile pads channels"),
    (["--backend", "aten"], "--backend aten"),
    (["--dynamic-policy", "gather-conv"], "gathers per input"),
    (["--exec", "compile"], "--exec compile"),
])
def test_engine_options_on_a_runtime_are_refused_in_one_line(small_pattern, args, needle):
    line = _one_line_error(run("speedup", "--pattern", small_pattern, "--runtime",
                               "onnxruntime", *args, *FAST))
    assert needle in line
