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
    executable,
)
from hwbench.errors import UsageError
from hwbench.patterns import mixed_pattern

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
    assert engine_policy("eager", "gather-gemm", "channel", 1) == "gather-gemm"
    assert engine_policy("graphs", "auto", "channel", 1) == "static"
    assert engine_policy("graphs", "auto", "width", 1) == "auto"
    assert engine_policy("graphs", "auto", "width", 8) == "static"
    for bad in ("gather-conv", "gather-gemm"):
        with pytest.raises(UsageError, match="cannot run in CUDA graphs"):
            engine_policy("graphs", bad, "channel", 1)


@pytest.mark.parametrize("mode", ["dense", "masked", "static", "dynamic"])
def test_graphed_modes_equal_eager_on_a_channel_gated_net(channel_net, mode):
    p, net = channel_net
    policy = engine_policy("graphs", "auto", p.gate.kind, 1)
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
