"""engine/runtimes: a mode compiled by ONNX Runtime or OpenVINO computes the engine's function."""

import sys

import pytest
import torch

from hwbench.engine import build_engine, realise, synthetic_inputs
from hwbench.engine.runtimes import (
    RuntimeNet,
    check_runtime,
    runnable,
    runtime_record,
)
from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import mixed_pattern
from hwbench.profile.locate import Conditions, mismatch
from tests.conftest import random_gate_heads

RUNTIMES = ("onnxruntime", "openvino")
TOL = 1e-4  # relative, fp32: the export's tolerance


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def channel():
    pat = mixed_pattern("resnet18", "cifar", 16, 0.5, seed=3)
    net = realise(pat, seed=0)
    torch.manual_seed(5)
    random_gate_heads(net)
    return net, pat, synthetic_inputs(6, 16, 1, seed=1).batches


@pytest.fixture(scope="module")
def width():
    pat = mixed_pattern("resnet18", "cifar", 16, 0.5, seed=3, gate="width:16")
    net = realise(pat, seed=0)
    torch.manual_seed(5)
    random_gate_heads(net, spread=2.0)
    return net, pat, synthetic_inputs(8, 16, 1, seed=1).batches


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("mode", ["dense", "masked", "static", "dynamic"])
def test_every_mode_on_a_runtime_is_the_engines_function(channel, runtime, mode):
    net, pat, xs = channel
    r = runnable(net, mode, pat, runtime=runtime, example=xs[0], threads=1, tune_inputs=xs)
    e = build_engine(net, mode, pat, tune_inputs=xs)
    assert max(rel_err(r(x), e(x)) for x in xs) < TOL
    assert r.plan == ["static"] * 8 and r.backend == runtime and r.setup_s > 0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_graph_per_width_bucket_runs_each_input_at_its_width(width, runtime):
    net, pat, xs = width
    r = runnable(net, "dynamic", pat, runtime=runtime, example=xs[0], threads=1,
                 dynamic_policy="width")
    e = build_engine(net, "dynamic", pat)
    bounds = [i for i, lp in enumerate(pat.layers) if lp.dynamic > 0]
    assert [p == "width" for p in r.plan] == [i in bounds for i in range(8)]
    seen = set()
    for x in xs:
        assert rel_err(r(x), e(x)) < TOL
        # the bucket replayed at each width block is the width the engine's gate keeps
        h = e._stem(x)
        for j, i in enumerate(bounds):
            for blk in e.blocks[bounds[j - 1] + 1 if j else 0:i]:
                h = blk(h)
            assert r.last_path[j + 1] == (j, e.blocks[i].gate.width1(h))
            seen.add(r.last_path[j + 1])
            h = e.blocks[i](h)
    assert r.reads == len(xs) * len(bounds)
    assert len({w for _, w in seen}) > 1  # the inputs do take different widths


def test_a_width_never_compiled_is_compiled_once_on_first_use(width):
    net, pat, xs = width
    r = runnable(net, "dynamic", pat, runtime="onnxruntime", example=xs[0], threads=1,
                 dynamic_policy="width")
    r(xs[0])
    key, before = r.last_path[-1], r.late_compiles
    del r.graphs[key]
    ref = r(xs[0])
    assert r.late_compiles == before + 1 and key in r.graphs
    assert torch.equal(r(xs[0]), ref) and r.late_compiles == before + 1


@pytest.mark.slow
@pytest.mark.parametrize("policy,plan", [("static", {"static"}), ("auto", None)])
def test_width_policies(width, policy, plan):
    net, pat, xs = width
    r = runnable(net, "dynamic", pat, runtime="onnxruntime", example=xs[0], threads=1,
                 dynamic_policy=policy, tune_inputs=xs[:3])
    if plan is not None:
        assert set(r.plan) == plan and not r.graphs
    else:  # auto timed both and kept the faster; the record says what each took
        faster = "width" if r.tuning["width"] < r.tuning["static"] else "static"
        assert faster in r.plan and set(r.tuning) == {"width", "static"}
    e = build_engine(net, "dynamic", pat)
    assert max(rel_err(r(x), e(x)) for x in xs) < TOL


def test_segment_times_cover_stem_blocks_and_head(channel):
    net, pat, xs = channel
    r = RuntimeNet(net, "static", pat, "onnxruntime", xs[0], threads=1)
    t = r.segment_times(xs[0])
    assert len(t) == 10 and all(v > 0 for v in t)


def test_a_batch_compiled_network_refuses_another_shape(channel):
    net, pat, xs = channel
    r = RuntimeNet(net, "dense", pat, "onnxruntime", torch.cat(xs[:2]), threads=1)
    assert r(torch.cat(xs[2:4])).shape == (2, 512)
    with pytest.raises(UsageError, match="compiled for inputs"):
        r(xs[0])


@pytest.mark.parametrize("args,needle", [
    (("tensorflow",), "unknown runtime"),
    (("onnxruntime", "cuda"), "runs on the CPU"),
    (("openvino", "cpu", "compile"), "--exec compile"),
    (("onnxruntime", "cpu", "eager", "bf16"), "fp32 only"),
])
def test_bad_runtime_requests_are_one_line_errors(args, needle):
    with pytest.raises(UsageError, match=needle) as err:
        check_runtime(*args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("runtime,module,extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                  ("openvino", "openvino", "openvino")])
def test_a_missing_runtime_names_its_extra(monkeypatch, runtime, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    with pytest.raises(UsageError, match=rf"pip install 'hwbench\[{extra}\]'"):
        check_runtime(runtime)


def test_gathers_cannot_run_on_a_runtime(channel):
    net, pat, xs = channel
    with pytest.raises(UsageError, match="no meaning on a runtime"):
        runnable(net, "dynamic", pat, runtime="openvino", example=xs[0],
                 dynamic_policy="gather-conv")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_record_names_version_provider_and_threads(runtime):
    rec = runtime_record(runtime, 3)
    assert rec["runtime"] == runtime and rec["runtime_version"] and rec["provider"]
    assert rec["runtime_threads"] == 3 and 3 in rec["settings"].values()


def test_a_profile_of_one_runtime_never_matches_another():
    fp = {"type": "cpu", "name": "x", "cpu_count": 2, "arch": "resnet18", "stem": "cifar",
          "input_size": 32, "batch_size": 1, "dtype": "fp32", "threads": 1,
          **runtime_record("onnxruntime", 1)}
    device = {"type": "cpu", "name": "x", "cpu_count": 2}
    ort = Conditions.now("resnet18", "cifar", 32, runtime="onnxruntime")
    ort = Conditions(**{**ort.__dict__, "threads": 1})
    assert mismatch(fp, device, ort) is None
    assert "runtime" in mismatch(fp, device, Conditions(**{**ort.__dict__, "runtime": "eager",
                                                            "runtime_version": None}))
    assert "runtime version" in mismatch(fp, device, Conditions(**{**ort.__dict__,
                                                                   "runtime_version": "0.1"}))
    old = {k: v for k, v in fp.items() if not k.startswith("runtime")}  # before runtimes
    assert mismatch(old, device, Conditions(**{**ort.__dict__, "runtime": "eager",
                                               "runtime_version": None})) is None


def test_a_new_runtime_is_one_runtime_object_in_the_registry(monkeypatch):
    """What TensorRT would be: a ``Runtime`` that records itself and opens a graph; registered,
    it is checked, recorded and compiled through the same calls as the others."""
    import numpy as np

    from hwbench.engine.runtimes import (
        Runtime,
        check_runtime,
        compile_module,
        registry,
        runtime_record,
    )

    opened = []

    class Fake(Runtime):
        def record(self, threads):
            return {"runtime": self.name, "runtime_version": "0.1", "runtime_threads": threads}

        def open(self, model, threads):
            opened.append((len(model) > 0, threads))
            return (lambda x: [x * 2]), []

    monkeypatch.setitem(registry.REGISTRY, "fake", Fake("fake", modules=("math",)))
    assert check_runtime("fake") == "fake"
    with pytest.raises(UsageError, match="runs on the CPU"):
        check_runtime("fake", "cuda")
    assert runtime_record("fake", 3) == {"runtime": "fake", "runtime_version": "0.1",
                                         "runtime_threads": 3}
    x = torch.ones(1, 3, 4, 4)
    session = compile_module(torch.nn.Identity(), x, "fake", threads=2)
    assert opened == [(True, 2)] and np.array_equal(session(x.numpy())[0], 2 * x.numpy())
    assert registry.label({"runtime": "fake", "runtime_version": "0.1"}) == "fake 0.1"
    with pytest.raises(UsageError, match="unknown runtime 'nope'"):
        check_runtime("nope")
