"""How a built ``CompactEngine`` is executed: eagerly, replayed from CUDA graphs, or compiled.

At batch 1 on a GPU a ResNet-18 is launch-bound: every kernel costs a few microseconds of host
time however small it is, so a gated engine (gates, split convs) is slower than dense although
it computes less. Two ways to take the host out, applied to **every** mode, dense included, so
ratios compare like with like (``executable``):

- ``graphs`` (CUDA only): the forward pass is captured in CUDA graphs and replayed (one launch
  per graph). The input is copied into a static input buffer, the graphs replayed, the static
  output buffer **cloned** (one small copy per call) so that a result is never overwritten by
  the next call. Modes whose forward has no host sync (``dense``, ``masked``, ``static``, whose
  gates multiply by their mask on the device, and ``dynamic`` when every block runs ``static``)
  are one graph for the whole network. Width-gated ``dynamic`` at batch 1 (``WidthBlock``)
  needs one host decision per width block (which pre-packed width to run), and CUDA graphs
  here have no conditional nodes, so the network is **segmented at each width block**: one
  graph for the stem up to the first width block's gate, then one graph per (width block,
  width bucket) that runs that block at that width, everything after it up to and including the
  *next* width block's gate logits and width, and copies both into static buffers. Between
  graphs the host reads that one small device value (a pinned buffer, ``non_blocking`` copy,
  an event): **one device->host read per width block per forward**, nothing else. Buckets of
  the pattern's widths (the packs the engine built) are captured up front; a width never seen
  before is captured on first use (warm-up, capture, replay: a one-off stall of a few ms, counted
  in ``late_captures``), so the result is always the graphed execution, never a silent eager
  fallback. All graphs of one engine share one memory pool; every buffer that outlives a graph
  (input, boundaries, output) is allocated outside the captures, so any replay order is safe.
  Warm-up runs on a side stream before each capture (torch's documented recipe).
  Blocks that gather (``gather-conv``/``gather-gemm``: ``nonzero``, a host sync, and shapes that
  change per input) and width blocks at batch > 1 (grouped by width, ``unique``) cannot be
  graphed: ``executable`` refuses them, and ``engine_policy`` builds the dynamic mode under
  ``graphs`` with the ``static`` executor in their place (channel gates at any batch, width
  gates at batch > 1). Why replace rather than refuse: on a GPU at batch 1 a gather's host sync
  costs what the launches cost, so the static executor with its mask on the device is what a
  graphed deployment would run; the engine's ``plan`` records ``static`` for those blocks, so
  results say what ran.
- ``compile``: ``torch.compile`` of the engine's forward (``dynamic=False``). On CUDA mode
  ``reduce-overhead`` (Inductor's fusion plus its own CUDA graphs): it is torch's built-in
  answer to launch overhead, so ``compile`` beside ``graphs`` compares the hand capture with
  torch's; ``max-autotune-no-cudagraphs`` would leave the launches (the cost at issue) in place
  and autotunes for minutes per network. On the CPU the default mode with the engine's own
  kernels (``mkldnn`` or ``aten``; Inductor needs a C++ compiler). Width blocks graph-break at
  their host read and recompile per width: dynamo's recompile limits are raised by the number
  of frames each engine adds (its forward, its blocks, its width packs), so that neither a
  width nor the n-th engine of a run silently falls back to eager. ``setup_s`` is the
  first call on the example (compilation included, later widths compile on first use).

Tests run the capture logic on the CPU through ``GraphKit`` injection (``FakeKit`` in
tests/engine/test_graphs.py); ``NoHostSync`` makes any host sync inside a capture an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from hwbench.engine.compact import CompactEngine
from hwbench.engine.kinds import BY_WIDTH, engine_kind
from hwbench.engine.width import WidthBlock
from hwbench.errors import UsageError
from hwbench.nets.gate import GateSpec

DEFAULT_EXECUTION = "eager"  # the engine's Python as written: no graph capture, no compiler
EXECUTIONS = (DEFAULT_EXECUTION, "graphs", "compile")
COMPILE_MODE_CUDA = "reduce-overhead"
GRAPHABLE = ("dense", "masked", "static")  # executors without a host sync (plus width at B=1)
WARMUP_CALLS = 3  # eager calls on the side stream before each capture
# What reads a device value on the host (or sizes an output by one): never inside a graph.
HOST_SYNCS = frozenset({"tolist", "item", "__bool__", "__int__", "__float__", "__index__",
                        "nonzero", "unique", "unique_consecutive", "masked_select", "argwhere"})


class HostSyncError(RuntimeError):
    """A host sync inside a region that is captured into a CUDA graph."""


class NoHostSync(TorchFunctionMode):
    """Inside this context a torch call that reads a device value on the host (``tolist``,
    ``item``, ``nonzero`` ... : ``HOST_SYNCS``) raises ``HostSyncError``: a CUDA graph would
    freeze its value at capture time (or fail to capture)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_SYNCS:
            raise HostSyncError(f"host sync ({name}) inside a CUDA graph capture")
        return func(*args, **(kwargs or {}))


def check_execution(execution: str, device: torch.device) -> str:
    """A one-line UsageError for an unknown execution or ``graphs`` off CUDA."""
    if execution not in EXECUTIONS:
        raise UsageError(f"unknown execution {execution!r}; known: {', '.join(EXECUTIONS)}")
    if execution == "graphs" and torch.device(device).type != "cuda":
        raise UsageError("--exec graphs: CUDA graphs need a CUDA device")
    return execution


def engine_policy(execution: str, dynamic_policy: str, gate: GateSpec, batch_size: int) -> str:
    """The ``dynamic_policy`` to build an engine with under ``execution``: under ``graphs`` and
    ``compile`` the graphable executors only (width at batch 1, else static; see the module
    docstring). Under ``compile`` a gather would break the graph at its ``nonzero`` and
    recompile for every new count of channels on (``dynamic=False``), timing recompiles or,
    past dynamo's limit, eager code."""
    if execution == DEFAULT_EXECUTION:
        return dynamic_policy
    width1 = engine_kind(gate).graphable(batch_size)
    if dynamic_policy in ("gather-conv", "gather-gemm") or (dynamic_policy == BY_WIDTH
                                                           and not width1):
        raise UsageError(f"--dynamic-policy {dynamic_policy} gathers per input (a host sync) and "
                         f"cannot run under --exec {execution}; use auto or static")
    return dynamic_policy if width1 else "static"


class GraphKit:
    """CUDA side of capturing: a side stream, a shared pool, graph capture, the host read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(device)
        self.host = torch.empty(1, dtype=torch.long, pin_memory=True)
        self.event = torch.cuda.Event()

    def warmup(self, fn: Callable[[], None], calls: int) -> None:
        cur = torch.cuda.current_stream(self.device)
        self.side.wait_stream(cur)
        with torch.cuda.stream(self.side):
            for _ in range(calls):
                fn()
        cur.wait_stream(self.side)

    def capture(self, fn: Callable[[], None]):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), NoHostSync():
            fn()
        return graph

    def read(self, value: torch.Tensor) -> int:
        """One device->host read of a (1,) integer tensor: async copy, event, wait."""
        self.host.copy_(value, non_blocking=True)
        self.event.record(torch.cuda.current_stream(self.device))
        self.event.synchronize()
        return int(self.host[0])


def _refuse_host_syncs(engine: CompactEngine, batch_size: int) -> None:
    for i, p in enumerate(engine.plan):
        if p in GRAPHABLE or (p == BY_WIDTH and batch_size == 1):
            continue
        what = "groups its batch by width" if p == BY_WIDTH else "gathers"
        raise UsageError(f"block {i} runs {p!r}, which {what} (a host sync): it cannot be "
                         "captured in a CUDA graph (build the dynamic mode with engine_policy)")


class GraphedEngine:
    """A ``CompactEngine`` replayed from CUDA graphs (module docstring). Call it on inputs of
    the example's shape; returns a fresh (B, num_features) tensor.

    ``kit``: a ``GraphKit`` (default) or a stand-in with the same four members (tests).
    ``prepare``: capture every width bucket the engine has packs for now (else on first use).
    Counters: ``reads`` (host reads), ``late_captures``, ``last_path`` (the graphs the last
    call replayed: ``None`` for the first segment, then ``(width block, width)``)."""

    def __init__(self, engine: CompactEngine, example: torch.Tensor, kit=None,
                 prepare: bool = True):
        bsz = example.shape[0]
        _refuse_host_syncs(engine, bsz)
        self.engine, self.execution = engine, "graphs"
        self.kit = kit if kit is not None else GraphKit(engine.device)
        self.bounds = [i for i, b in enumerate(engine.blocks) if isinstance(b, WidthBlock)]
        self.graphs: dict = {}
        self.reads = self.late_captures = 0
        self.last_path: list = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            self._buffers(example)
            self.graphs[None] = self._capture(None)
            for j, i in enumerate(self.bounds if prepare else ()):
                for w in sorted(engine.blocks[i].packs):
                    self.graphs[(j, w)] = self._capture((j, w))
        self.setup_s = time.perf_counter() - t0

    def _buffers(self, example: torch.Tensor) -> None:
        """Static input, the input activation and width of every width block, the output:
        shaped by one eager pass, allocated outside every capture."""
        e = self.engine
        self.x = example.to(e.device, e.dtype, memory_format=torch.channels_last).clone()
        self.acts, self.widths = [], []
        h = e._stem(self.x)
        for i, blk in enumerate(e.blocks):
            if i in self.bounds:
                self.acts.append(torch.zeros_like(h))
                self.widths.append(torch.zeros_like(blk.gate.width(h)))
            h = blk(h)
        self.out = torch.zeros_like(h.mean(dim=(2, 3)))

    def _segment(self, key) -> Callable[[], None]:
        """The work of one graph: ``None`` = stem to the first width block's gate; ``(j, w)`` =
        width block j at width w, then up to the next width block's gate (or the head)."""
        e, bounds = self.engine, self.bounds
        j = -1 if key is None else key[0]
        end = bounds[j + 1] if j + 1 < len(bounds) else len(e.blocks)

        def run() -> None:
            if key is None:
                h, start = e._stem(self.x), 0
            else:
                h, start = e.blocks[bounds[j]].run_at(key[1], self.acts[j]), bounds[j] + 1
            for blk in e.blocks[start:end]:
                h = blk(h)
            if end < len(e.blocks):
                self.acts[j + 1].copy_(h)
                self.widths[j + 1].copy_(e.blocks[end].gate.width(h))
            else:
                self.out.copy_(h.mean(dim=(2, 3)))

        return run

    def _capture(self, key):
        run = self._segment(key)
        self.kit.warmup(run, WARMUP_CALLS)  # also packs a width's convs before any capture
        return self.kit.capture(run)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(self.x.shape):
            raise UsageError(f"graphs were captured for inputs {tuple(self.x.shape)}, got "
                             f"{tuple(x.shape)}")
        with torch.inference_mode():
            self.x.copy_(x)
            self.graphs[None].replay()
            path: list = [None]
            for j in range(len(self.bounds)):
                key = (j, self.kit.read(self.widths[j]))
                self.reads += 1
                if key not in self.graphs:
                    self.graphs[key] = self._capture(key)
                    self.late_captures += 1
                self.graphs[key].replay()
                path.append(key)
            self.last_path = path
            return self.out.clone()


def _raise_recompile_limit(frames: int) -> None:
    """Make room in dynamo's recompile limits for ``frames`` more compiled frames. Dynamo keys
    its cache by code object: every engine recompiles ``CompactEngine.forward`` and a width
    block's code per width, and past the limit (8 by default) a frame silently runs eager."""
    from torch._dynamo import config as cfg  # loaded only when compiling

    for names in (("recompile_limit", "cache_size_limit"),
                  ("accumulated_recompile_limit", "accumulated_cache_size_limit")):
        name = next((n for n in names if hasattr(cfg, n)), None)
        if name is not None:
            setattr(cfg, name, getattr(cfg, name) + frames)


def engine_tensors(obj, device: torch.device, seen: set | None = None):
    """Every tensor on ``device`` that an engine holds (weights, biases, packs, gate rows),
    found through the engine's own objects, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            yield obj
        return
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif type(obj).__module__.startswith("hwbench.engine") and hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return
    for v in items:
        yield from engine_tensors(v, device, seen)


class CompiledEngine:
    """``torch.compile`` of a ``CompactEngine``'s forward (module docstring). ``setup_s``: the
    first call on ``example`` (compilation and the run), seconds of wall clock."""

    def __init__(self, engine: CompactEngine, example: torch.Tensor, mode: str | None = None,
                 backend: str | None = None):
        self.engine, self.execution = engine, "compile"
        cuda = engine.device.type == "cuda"
        self.mode = mode if mode is not None else (COMPILE_MODE_CUDA if cuda else None)
        self.backend = backend or "inductor"
        packs = sum(len(b.packs) for b in engine.blocks if isinstance(b, WidthBlock))
        _raise_recompile_limit(1 + len(engine.blocks) + packs)
        self.graphs = self.mode == "reduce-overhead"
        if self.graphs:
            from torch._dynamo import mark_static_address  # loaded only when compiling

            # the engine's weights are plain attributes, not parameters: without this, Inductor's
            # CUDA graphs would copy every weight into their static inputs on every call
            for t in engine_tensors(engine, engine.device):
                mark_static_address(t)
        self.fn = torch.compile(engine.forward, mode=self.mode, backend=self.backend,
                                dynamic=False)
        t0 = time.perf_counter()
        self(example.to(engine.device, engine.dtype, memory_format=torch.channels_last))
        if cuda:
            torch.cuda.synchronize(engine.device)
        self.setup_s = time.perf_counter() - t0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.graphs:  # a new step: the previous call's graph outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            # reduce-overhead replays its graphs into the same buffers: hand back a copy
            return self.fn(x).clone()


class EagerEngine:
    """The engine as it is (``__call__``), with the same members as the others."""

    def __init__(self, engine: CompactEngine):
        self.engine, self.execution, self.setup_s = engine, DEFAULT_EXECUTION, 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x)


def executable(engine: CompactEngine, execution: str, example: torch.Tensor, **kw
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``engine`` run as ``execution`` (``EXECUTIONS``); ``example``: an input of the shape it
    will be called on (captures and compilation are done on it now). ``kw`` goes to
    ``GraphedEngine`` (``kit``, ``prepare``) or ``CompiledEngine`` (``mode``, ``backend``).
    The result has ``execution``, ``engine`` and ``setup_s`` (capture or compile seconds)."""
    check_execution(execution, "cuda" if kw.get("kit") is not None else engine.device)
    if execution == "graphs":
        return GraphedEngine(engine, example, **kw)
    if execution == "compile":
        return CompiledEngine(engine, example, **kw)
    return EagerEngine(engine)
