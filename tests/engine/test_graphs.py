"""Engine executions (``hwbench.engine.graphs``): the CUDA-graph capture logic run on the CPU
through a fake kit (a "graph" re-runs its captured callable on the static buffers), the
compiled forward, and the policy and refusals around them."""

import pytest
import torch

from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.engine.graphs import (
    EXECUTIONS,
    GraphedEngine,
    HostSyncError,
    NoHostSync,
    check_execution,
    engine_policy,
    engine_tensors,
    executable,
)
from hwbench.errors import UsageError
from hwbench.nets.gate import CHANNEL, GateSpec
from hwbench.pattern.gate_pattern import mixed_pattern

WIDTH16 = GateSpec.of("width", 16)

TOL = 1e-4
SIZE = 16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


class FakeGraph:
    """Records the captured callable; ``replay`` re-runs it (it writes its results into the
    static buffers with ``copy_``), with host syncs forbidden as in a real graph."""

    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self) -> None:
        self.replays += 1
        with NoHostSync():
            self.fn()


class FakeKit:
    """The four members of ``GraphKit`` on the CPU, counting what happens."""

    def __init__(self):
        self.graphs, self.reads, self.warmups = [], 0, 0

    def warmup(self, fn, calls: int) -> None:
        self.warmups += 1
        for _ in range(calls):
            fn()

    def capture(self, fn) -> FakeGraph:
        with NoHostSync():  # a capture records the work: no host read may happen inside
            fn()
        g = FakeGraph(fn)
        self.graphs.append(g)
        return g

    def read(self, value: torch.Tensor) -> int:
        self.reads += 1
        return int(value[0])


@pytest.fixture(scope="module")
def width_net():
    p = mixed_pattern("resnet18", "cifar", SIZE, 0.5, seed=2, gate="width:16")
    return p, realise(p, seed=1, calibration=32)


@pytest.fixture(scope="module")
def channel_net():
    p = mixed_pattern("resnet18", "cifar", SIZE, 0.5, seed=3)
    return p, realise(p, seed=1, calibration=16)


def widths_taken(net, x) -> list[int]:
    """Per width-gated block, the channels input x (batch 1) keeps, from the eager network."""
    return [int(m.sum()) for m in net.eval().forward_gated(x).masks]


def test_executions_and_cpu_refusal():
    assert EXECUTIONS == ("eager", "graphs", "compile")
    with pytest.raises(UsageError, match="CUDA graphs need a CUDA device"):
        check_execution("graphs", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown execution"):
        check_execution("jit", torch.device("cpu"))
    check_execution("compile", torch.device("cpu"))
    p, net = mixed_pattern("resnet18", "cifar", SIZE, 0.5, seed=3), None
    net = realise(p, seed=1, calibration=4)
    with pytest.raises(UsageError, match="CUDA graphs need a CUDA device"):
        executable(build_engine(net, "dense", p), "graphs", pattern_inputs(1, SIZE, seed=0))


def test_policy_under_graphs_replaces_gathers_with_static():
    assert engine_policy("eager", "gather-gemm", CHANNEL, 1) == "gather-gemm"
    assert engine_policy("graphs", "auto", CHANNEL, 1) == "static"
    assert engine_policy("graphs", "auto", WIDTH16, 1) == "auto"
    assert engine_policy("graphs", "auto", WIDTH16, 8) == "static"
    for bad in ("gather-conv", "gather-gemm"):
        with pytest.raises(UsageError, match="cannot run under --exec graphs"):
            engine_policy("graphs", bad, CHANNEL, 1)
    # compile too: a gather breaks the graph and recompiles for every count of channels on
    assert engine_policy("compile", "auto", CHANNEL, 1) == "static"
    assert engine_policy("compile", "auto", WIDTH16, 1) == "auto"
    with pytest.raises(UsageError, match="cannot run under --exec compile"):
        engine_policy("compile", "gather-conv", CHANNEL, 1)


@pytest.mark.parametrize("mode", ["dense", "masked", "static", "dynamic"])
def test_graphed_modes_equal_eager_on_a_channel_gated_net(channel_net, mode):
    p, net = channel_net
    policy = engine_policy("graphs", "auto", p.gate, 1)
    engine = build_engine(net, mode, p, dynamic_policy=policy)
    kit = FakeKit()
    exe = executable(engine, "graphs", pattern_inputs(1, SIZE, seed=0), kit=kit)
    assert len(kit.graphs) == 1 and exe.bounds == []  # one graph for the whole network
    for s in range(3):
        x = pattern_inputs(1, SIZE, seed=10 + s)
        assert rel_err(exe(x), engine(x)) <= TOL
    assert kit.reads == 0 and kit.graphs[0].replays == 3


def test_gathering_engine_is_refused_and_a_host_sync_in_a_capture_is_caught(channel_net):
    p, net = channel_net
    engine = build_engine(net, "dynamic", p, dynamic_policy="gather-conv")
    with pytest.raises(UsageError, match="cannot be captured in a CUDA graph"):
        executable(engine, "graphs", pattern_inputs(1, SIZE, seed=0), kit=FakeKit())
    with pytest.raises(HostSyncError, match="nonzero"):  # what the refusal protects from
        FakeKit().capture(lambda: engine(pattern_inputs(1, SIZE, seed=0)))


def test_width_dynamic_replays_one_graph_per_bucket_with_one_read_per_width_block(width_net):
    p, net = width_net
    engine = build_engine(net, "dynamic", p)
    nblocks = sum(plan == "width" for plan in engine.plan)
    assert nblocks >= 2
    kit = FakeKit()
    exe = executable(engine, "graphs", pattern_inputs(1, SIZE, seed=0), kit=kit)
    assert len(exe.bounds) == nblocks
    assert len(kit.graphs) == 1 + sum(len(engine.blocks[i].packs) for i in exe.bounds)
    masked = build_engine(net, "masked", p)
    paths = set()
    for s in range(8):
        x = pattern_inputs(1, SIZE, seed=20 + s)
        reads = kit.reads
        y = exe(x)
        assert kit.reads - reads == nblocks  # one host read per width block, no more
        assert rel_err(y, engine(x)) <= TOL and rel_err(y, masked(x)) <= TOL
        kept = widths_taken(net, x)
        want = [None] + [(j, kept[i]) for j, i in enumerate(exe.bounds)]
        assert exe.last_path == want  # the bucket graph of the width this input takes
        paths.add(tuple(exe.last_path))
    assert len(paths) >= 2  # the inputs took different widths


def test_a_width_not_captured_up_front_is_captured_on_first_use(width_net):
    p, net = width_net
    engine = build_engine(net, "dynamic", p)
    kit = FakeKit()
    exe = GraphedEngine(engine, pattern_inputs(1, SIZE, seed=0), kit=kit, prepare=False)
    assert len(kit.graphs) == 1
    x = pattern_inputs(1, SIZE, seed=31)
    y = exe(x)
    assert exe.late_captures == len(exe.bounds) == len(kit.graphs) - 1
    assert rel_err(y, engine(x)) <= TOL
    exe(x)
    assert exe.late_captures == len(exe.bounds)  # captured once, replayed after
    assert all(g.replays == 2 for g in kit.graphs)


def test_graphed_output_is_not_overwritten_by_the_next_call(width_net):
    p, net = width_net
    engine = build_engine(net, "static", p)
    exe = executable(engine, "graphs", pattern_inputs(1, SIZE, seed=0), kit=FakeKit())
    a, b = pattern_inputs(1, SIZE, seed=1), pattern_inputs(1, SIZE, seed=2)
    ya = exe(a)
    exe(b)
    assert rel_err(ya, engine(a)) <= TOL
    with pytest.raises(UsageError, match="captured for inputs"):
        exe(pattern_inputs(2, SIZE, seed=1))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "dynamic"])
def test_compiled_engine_equals_eager(width_net, mode):
    p, net = width_net
    engine = build_engine(net, mode, p, backend="aten")
    # the "eager" compile backend: dynamo traces (and breaks at host reads) as it would for
    # Inductor, in seconds rather than a minute of C++ compilation
    exe = executable(engine, "compile", pattern_inputs(1, SIZE, seed=0), backend="eager")
    assert exe.execution == "compile" and exe.setup_s > 0
    for s in range(3):
        x = pattern_inputs(1, SIZE, seed=40 + s)
        assert rel_err(exe(x), engine(x)) <= TOL


def test_eager_execution_is_the_engine(channel_net):
    p, net = channel_net
    engine = build_engine(net, "static", p)
    exe = executable(engine, "eager", pattern_inputs(1, SIZE, seed=0))
    x = pattern_inputs(1, SIZE, seed=5)
    assert exe.setup_s == 0.0 and torch.equal(exe(x), engine(x))


def test_compile_raises_dynamo_recompile_limit_per_engine(channel_net):
    import torch._dynamo

    p, net = channel_net
    before = torch._dynamo.config.cache_size_limit
    engine = build_engine(net, "static", p, backend="aten")
    executable(engine, "compile", pattern_inputs(1, SIZE, seed=0), backend="eager")
    # else the 9th engine compiled in one process (a profile builds dozens) runs eager
    assert torch._dynamo.config.cache_size_limit == before + 1 + len(engine.blocks)


def test_engine_tensors_finds_every_weight_reduce_overhead_must_not_copy(width_net):
    p, net = width_net
    engine = build_engine(net, "dynamic", p)
    found = {id(t) for t in engine_tensors(engine, engine.device)}
    assert id(engine.stem_conv.packed) in found and id(engine.stem_conv.bias) in found
    for blk in engine.blocks:
        if hasattr(blk, "packs"):
            assert all(id(c.packed) in found for convs in blk.packs.values() for c in convs)
            assert id(blk.gate.w1t) in found and id(blk.gate.w2t) in found
    assert not list(engine_tensors(engine, torch.device("meta")))


# --- wiring: speedup, profile, CLI, profile matching ------------------------------------------

FAST = ["--max-time", "0", "--min-runs", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "p.json"
    mixed_pattern("resnet18", "cifar", SIZE, 0.4, seed=1).save(path)
    return path


@pytest.mark.parametrize("command", ["speedup", "profile"])
def test_cli_refuses_graphs_without_cuda(pattern_file, command):
    from tests.conftest import one_line_error, run_cli

    args = ["--pattern", pattern_file] if command == "speedup" else ["--input-size", SIZE]
    line = one_line_error(run_cli(command, *args, "--exec", "graphs"))
    assert "CUDA graphs need a CUDA device" in line


@pytest.mark.slow
def test_speedup_times_executions_interleaved_with_ratios_to_their_own_dense(pattern_file,
                                                                             monkeypatch):
    import hwbench.profile.speedup as speedup
    from hwbench.engine import graphs

    real = graphs.executable

    def fast_compile(engine, execution, example, **kw):  # Inductor takes a minute on 2 cores
        kw = {**kw, "backend": "eager"} if execution == "compile" else kw
        return real(engine, execution, example, **kw)

    monkeypatch.setattr(graphs, "executable", fast_compile)  # what runnable builds with
    cfg = speedup.SpeedupConfig(pattern=str(pattern_file), min_runs=3, max_time_s=0.0,
                                warmup=1, inputs=2, dynamic_policy="static")
    res = speedup.run_speedups(cfg, ("eager", "compile"))
    assert set(res) == {"eager", "compile"}
    for ex, r in res.items():
        assert r.execution == r.config["execution"] == r.device["execution"] == ex
        assert r.modes["dense"].speedup == 1.0  # each execution's ratios are to its own dense
        assert set(r.setup_s) == set(r.modes)
    assert res["eager"].setup_s["dense"] == 0.0 < res["compile"].setup_s["dense"]
    assert res["eager"].modes["dense"].samples_ms != res["compile"].modes["dense"].samples_ms


@pytest.mark.slow
def test_profile_times_through_its_execution_and_matches_only_that_execution(tmp_path,
                                                                             monkeypatch):
    import hwbench.profile.build as profiler
    from hwbench.engine import graphs
    from hwbench.profile.locate import Conditions, find_profile
    from hwbench.profile.predictor import profile_filename, save_profile
    from tests.profile.test_predictor import TINY

    seen = []

    def spy(engine, execution, example, **kw):
        seen.append((engine.mode, execution))
        return graphs.EagerEngine(engine)  # the wiring is under test, not the compiler

    monkeypatch.setattr(graphs, "executable", spy)  # what runtimes.runnable calls
    small = {**TINY, "t_d": (0.5,), "grid": 2, "table_rounds": 1, "validation": 0,
             "calibration": 1, "energy": False, "min_warmup_s": 0.0}
    prof = profiler.run_profile(profiler.ProfileConfig(**small, execution="compile"))
    fp = prof["fingerprint"]
    assert fp["execution"] == "compile"
    # end to end (sweep: dense, masked, t_d 0.5; validation: dense, calibration[0]): compiled
    timed = sorted(mode for mode, ex in seen if ex == "compile")
    assert timed == ["dense", "dense", "dynamic", "dynamic", "masked"]
    # eager only block by block: the table (dense + grid 2: 2 plain + 2 gated static) and the
    # plan probe
    assert sorted(mode for mode, ex in seen if ex == "eager") == ["dense", "dynamic"] + \
        ["static"] * 5 and len(seen) == 12
    name = profile_filename(fp)
    assert name.endswith("_b1_fp32_compile.json")
    save_profile(prof, tmp_path / name)
    want = dict(arch=fp["arch"], stem=fp["stem"], input_size=fp["input_size"],
                threads=fp["threads"], dtype=fp["dtype"], batch_size=fp["batch_size"])
    assert find_profile(fp, Conditions(**want, execution="compile"), tmp_path) is not None
    assert find_profile(fp, Conditions(**want), tmp_path) is None  # eager: never this one
    assert find_profile(fp, Conditions(**want, execution="graphs"), tmp_path) is None


# --- on a CUDA device: the real capture (skipped elsewhere) --------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_equal_eager_for_every_mode_and_width_bucket(width_net, channel_net):
    for p, net in (channel_net, width_net):
        for mode in ("dense", "masked", "static", "dynamic"):
            policy = engine_policy("graphs", "auto", p.gate, 1)
            engine = build_engine(net, mode, p, device="cuda", dynamic_policy=policy)
            exe = executable(engine, "graphs", pattern_inputs(1, SIZE, seed=0))
            for s in range(6):
                x = pattern_inputs(1, SIZE, seed=50 + s).cuda()
                reads = exe.reads
                assert rel_err(exe(x), engine(x)) <= TOL, (p.gate.text, mode, s)
                assert exe.reads - reads == len(exe.bounds)
