"""A network of one mode compiled by a graph runtime (``RuntimeNet``), and ``runnable``: the one
way hwbench builds something to time (the package docstring says what each mode is on a runtime).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hwbench.engine.deployable import Deployable, DeployBlock, deployable
from hwbench.engine.fold import fold_bn
from hwbench.engine.graphs import DEFAULT_EXECUTION
from hwbench.engine.kinds import BY_WIDTH, engine_kind
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, get
from hwbench.engine.runtimes.session import Session, compile_module
from hwbench.errors import UsageError
from hwbench.measure.protocol import TUNING, Inputs, measure
from hwbench.nets.resnet import GatedResNet
from hwbench.pattern.gate_pattern import GatePattern
from hwbench.pattern.layer import pattern_kind

POLICIES = ("auto", "static", BY_WIDTH)


class _Stem(nn.Module):
    def __init__(self, d: Deployable):
        super().__init__()
        self.conv, self.maxpool = d.stem, d.maxpool

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return torch.nn.functional.max_pool2d(x, 3, 2, 1) if self.maxpool else x


class _Head(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class DeployWidth(nn.Module):
    """A width gate's decision as a number: (B, C, H, W) -> (B,) channels kept (k * G, k the
    leading groups whose logit is >= 0: a triangular matmul, ONNX has no cumprod here), within
    the pattern's (always-on, always-on + dynamic), as the engine's width executor."""
    def __init__(self, gate, lo: int, hi: int):
        super().__init__()
        w1, b1 = fold_bn(gate.fc1.weight.flatten(1), gate.bn)
        w2, b2 = gate.fc2.weight.detach().flatten(1), gate.fc2.bias.detach()
        self.fc1, self.fc2 = nn.Linear(*w1.shape[::-1]), nn.Linear(*w2.shape[::-1])
        with torch.no_grad():
            for fc, w, b in ((self.fc1, w1, b1), (self.fc2, w2, b2)):
                fc.weight.copy_(w)
                fc.bias.copy_(b)
        k = w2.shape[0]
        self.register_buffer("upto", torch.triu(torch.ones(k, k)))  # upto[j, i] = 1[j <= i]
        self.step, self.lo, self.hi = float(gate.spec.step), float(lo), float(hi)

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        off_before = torch.matmul((z < 0).to(x.dtype), self.upto)
        w = (off_before < 0.5).to(x.dtype).sum(dim=1) * self.step
        return torch.clamp(w, self.lo, self.hi)


class _Segment(nn.Module):
    """``pre`` (stem, or a width block at one width), then ``blocks``, then either the next
    width block's gate (outputs: activation, width) or the head (outputs: features)."""
    def __init__(self, pre: nn.Module, blocks: list[nn.Module], gate: nn.Module | None):
        super().__init__()
        self.pre, self.blocks, self.gate = pre, nn.Sequential(*blocks), gate

    def forward(self, x):
        h = self.blocks(self.pre(x))
        if self.gate is None:
            return h.mean(dim=(2, 3))
        return h, self.gate(h)


def masked_pattern(net: GatedResNet, size: int) -> GatePattern:
    """The masked mode as a pattern: every channel of every block dynamic (full-width convs,
    each channel multiplied by its gate's decision)."""
    geom, kind, step = net.geometry((size, size)), pattern_kind(net.gate_spec), net.gate_spec.step
    layers = [kind.mixed(b.name, b.width, 0, b.width // step, 0.5, step) for b in geom.blocks]
    return GatePattern(net.arch, net.stem, size, layers, gate=net.gate_spec)


def width_bounds(net: GatedResNet, pattern: GatePattern | None) -> list[int]:
    """The blocks a width-gated network is cut at (those with dynamic channels)."""
    return engine_kind(net.gate_spec).cut_blocks(pattern)


# --------------------------------------------------------------------------- networks


def _to_np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class RuntimeNet:
    """A network of one mode compiled by ``runtime`` for inputs of ``example``'s shape. Call it
    on a (B, 3, S, S) tensor: (B, num_features) features. Members shared with the engine's
    executables: ``mode``, ``plan`` (per block: ``static`` or ``width``), ``tile`` (1),
    ``backend`` (the runtime), ``execution`` (``eager``), ``setup_s`` (export + compile, s),
    ``engine`` (itself); ``late_compiles``, ``reads`` (host reads of a width), ``last_path``."""
    def __init__(self, net: GatedResNet, mode: str, pattern: GatePattern | None, runtime: str,
                 example: torch.Tensor, threads: int | None = None, policy: str = "auto",
                 tune_inputs: list[torch.Tensor] | None = None):
        if policy not in POLICIES:
            raise UsageError(f"--dynamic-policy {policy} has no meaning on a runtime; known: "
                             f"{', '.join(POLICIES)}")
        t0 = time.perf_counter()
        self.net, self.mode, self.runtime = net.eval(), mode, runtime
        self.threads = threads or torch.get_num_threads()
        self.example = example.detach().to("cpu", torch.float32).contiguous()
        self.batch_size = self.example.shape[0]
        self.pattern = masked_pattern(net, self.example.shape[-1]) if mode == "masked" \
            else (None if mode == "dense" else pattern)
        if mode in ("static", "dynamic") and pattern is None:
            raise UsageError(f"mode {mode!r} needs a gate pattern")
        self.module = deployable(net, self.pattern)
        self.tile, self.backend, self.execution, self.engine = 1, runtime, DEFAULT_EXECUTION, self
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.batch_strategy = "one graph over the batch (dynamic channels masked)"
        self.kept = None if pattern is None or mode in ("dense", "masked") else \
            pattern.kept_channels()
        self.bounds = width_bounds(net, pattern) if mode == "dynamic" else []
        self.whole = self._compile(self.module, self.example)
        self.graphs: dict = {}
        self.late_compiles = self.reads = 0
        self.last_path: list = []
        self.pieces: list[Session] | None = None
        use_width = bool(self.bounds) and self.batch_size == 1 and policy != "static"
        if use_width:
            self._compile_buckets()
            for x in tune_inputs or []:  # the widths the inputs to be timed take: compiled now,
                self._run_by_width(_to_np(x))  # never inside a timed call
            if policy == "auto":
                use_width = self._width_faster(tune_inputs or [self.example])
            self.reads = 0
        self.by_width = use_width
        blocks = len(self.module.blocks)
        self.plan = [BY_WIDTH if use_width and i in self.bounds else "static"
                     for i in range(blocks)]
        if not use_width:
            self.graphs = {}
        self.setup_s = time.perf_counter() - t0

    def _compile(self, module: nn.Module, example: torch.Tensor, outputs: int = 1) -> Session:
        return compile_module(module, example, self.runtime, self.threads, outputs)

    # ----------------------------------------------------------- one graph per width bucket

    def _segment(self, key) -> _Segment:
        """``None``: stem to the first width block's gate; ``(j, w)``: width block j at width w,
        then up to the next width block's gate, or the head."""
        d, bounds, blocks = self.module, self.bounds, list(self.net.blocks())
        j = -1 if key is None else key[0]
        start = 0 if key is None else bounds[j] + 1
        end = bounds[j + 1] if j + 1 < len(bounds) else len(d.blocks)
        if key is None:
            pre: nn.Module = _Stem(d)
        else:
            pre = DeployBlock(blocks[bounds[j]][1], torch.arange(key[1]), key[1], "gated")
        lp = self.pattern.layers[end] if end < len(d.blocks) else None
        gate = None if lp is None else DeployWidth(blocks[end][1].gate, lp.always_on,
                                                   lp.always_on + lp.dynamic)
        return _Segment(pre, list(d.blocks[start:end]), gate).eval()

    def _segment_input(self, key) -> torch.Tensor:
        """An input of the segment's shape: the activation entering its first block."""
        if key is None:
            return self.example
        with torch.no_grad():
            h = _Stem(self.module)(self.example)
            for blk in list(self.module.blocks)[: self.bounds[key[0]]]:
                h = blk(h)
        return h

    def _bucket(self, key) -> Session:
        if key not in self.graphs:
            seg = self._segment(key)
            last = key is not None and key[0] == len(self.bounds) - 1
            self.graphs[key] = self._compile(seg, self._segment_input(key), 1 if last else 2)
        return self.graphs[key]

    def _compile_buckets(self) -> None:
        self._bucket(None)
        for j, i in enumerate(self.bounds):
            for w, _ in self.pattern.layers[i].widths():
                self._bucket((j, w))

    def _run_by_width(self, x: np.ndarray) -> np.ndarray:
        outs = self.graphs[None](x)
        path: list = [None]
        for j in range(len(self.bounds)):
            key = (j, int(round(float(outs[1][0]))))
            self.reads += 1
            if key not in self.graphs:
                self.late_compiles += 1
            outs = self._bucket(key)(outs[0])
            path.append(key)
        self.last_path = path
        return outs[0]

    def _width_faster(self, xs: list[torch.Tensor]) -> bool:
        """Time the single masked graph and the per-width graphs on ``xs`` (the tuning
        protocol, interleaved); True when the per-width graphs are faster."""
        arrays = [_to_np(x) for x in xs]
        fns = {"static": lambda a: self.whole(a), BY_WIDTH: self._run_by_width}
        m = measure(fns, Inputs(arrays), TUNING, self.device, reference=None)
        self.tuning = {k: v["p50_ms"] for k, v in m.results.items()}
        return m.results[BY_WIDTH]["p50_ms"] < m.results["static"]["p50_ms"]

    # ----------------------------------------------------------- calls

    def run_np(self, x: np.ndarray) -> np.ndarray:
        return self._run_by_width(x) if self.by_width else self.whole(x)[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(self.example.shape):
            raise UsageError(f"compiled for inputs {tuple(self.example.shape)}, got "
                             f"{tuple(x.shape)}")
        return torch.from_numpy(self.run_np(_to_np(x)))

    def _pieces(self) -> list[Session]:
        """Stem, each block, head: one graph each, for ``segment_times``."""
        if self.pieces is None:
            d, h = self.module, self.example
            mods = [_Stem(d), *d.blocks, _Head()]
            sessions = []
            with torch.no_grad():
                for m in mods:
                    sessions.append(self._compile(m, h))
                    h = m(h)
            self.pieces = sessions
        return self.pieces

    def segment_times(self, x: torch.Tensor) -> list[float]:
        """One pass piece by piece (each piece its own compiled graph, on the previous piece's
        output): [stem, block 1..L, head] in ms, as ``CompactEngine.segment_times``."""
        h, out = _to_np(x), []
        for s in self._pieces():
            t = time.perf_counter_ns()
            h = s(h)[0]
            out.append((time.perf_counter_ns() - t) / 1e6)
        return out


def runnable(net: GatedResNet, mode: str, pattern: GatePattern | None = None, *,
             runtime: str = DEFAULT_RUNTIME, execution: str = DEFAULT_EXECUTION,
             example: torch.Tensor, threads: int | None = None,
             dynamic_policy: str = "auto", tune_inputs=None, **engine_kw) -> Callable:
    """What hwbench times: the compact engine run as ``execution`` (the default runtime;
    ``engine_kw`` to ``build_engine``: device, dtype, batch_size, backend, tile) or the mode
    compiled by ``runtime`` (``RuntimeNet``; ``dynamic_policy``: auto, static or width)."""
    if not get(runtime).graph:
        from hwbench.engine import build_engine  # engine.graphs imports compact: not at load
        from hwbench.engine.graphs import executable  # as above

        engine = build_engine(net, mode, pattern, dynamic_policy=dynamic_policy,
                              tune_inputs=tune_inputs, **engine_kw)
        return executable(engine, execution, example)
    xs = None if tune_inputs is None else (
        [tune_inputs] if isinstance(tune_inputs, torch.Tensor) else list(tune_inputs))
    return RuntimeNet(net, mode, pattern, runtime, example, threads, dynamic_policy, xs)
