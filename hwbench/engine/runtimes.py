"""Inference runtimes: a network of one mode run by ONNX Runtime or OpenVINO instead of the engine.

People deploy on a runtime, not on eager PyTorch, so a latency target is met on a (device,
runtime) pair (nn-Meter, HW-NAS-Bench). ``runnable`` is the one way hwbench builds something to
time: the compact engine (``runtime="eager"``, run as ``execution``: ``hwbench.engine.graphs``)
or a ``RuntimeNet``: the mode's ``deployable`` module exported to ONNX (in memory, fixed input
shape, opset 17) and compiled by the runtime on the CPU, with its intra-op threads pinned to the
run's thread count (``runtime_record`` says what ran; profiles and results carry it).

What each mode is on a runtime (the same functions as the engine's, fp32):

- ``dense``: the dense stream; ``static``: always-off channels removed, dynamic ones masked by
  their gate (one graph); ``masked``: every conv at full width, every channel multiplied by its
  gate's decision (the baseline a zero-masking deployment runs);
- ``dynamic``: a graph cannot skip a channel per input, so channel gates run the static graph
  (``plan`` says ``static``). Width gates at batch 1 have two implementations: the single graph
  with the nested masks (``static``: every kept channel computed), or **one graph per width
  bucket** (``width``): the network is cut at each width block, one graph for the stem up to the
  first width block's gate, then one graph per (width block, width) that runs the block at that
  width and everything up to the next width block's gate; between graphs the host reads the
  width (one small output) and picks the next graph. Only that skips work. ``auto`` times both on
  the tuning inputs and keeps the faster (the issue's "whichever the runtime runs faster:
  measure"); a width not seen before is compiled on first use (``late_compiles``).

``segment_times`` times a network piece by piece (stem, each block, head: each its own compiled
graph, run on the previous piece's output), as the engine's does: the profile's latency table.

Runtimes are extras (``pip install 'hwbench[onnx]'``, ``'hwbench[openvino]'``); asking for one
that is missing is a one-line error naming the extra, before any work.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hwbench.engine.deployable import Deployable, DeployBlock, deployable
from hwbench.engine.fold import fold_bn
from hwbench.engine.sigstack import keep_signal_stack
from hwbench.errors import UsageError
from hwbench.nets.resnet import GatedResNet
from hwbench.patterns import GatePattern, LayerPattern

RUNTIMES = ("eager", "onnxruntime", "openvino")
# runtime -> (extra, modules it needs)
EXTRAS = {"onnxruntime": ("onnx", ("onnx", "onnxruntime")),
          "openvino": ("openvino", ("onnx", "openvino"))}
OPSET = 17
POLICIES = ("auto", "static", "width")


def require_extra(what: str, extra: str, *modules: str) -> None:
    """A one-line UsageError naming the extra to install when one of ``modules`` cannot be
    imported (``what`` needs it)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"{what} needs {name}, which is not installed: "
                             f"pip install 'hwbench[{extra}]'") from None


def check_runtime(runtime: str, device: torch.device | str = "cpu", execution: str = "eager",
                  dtype: str = "fp32") -> str:
    """A one-line UsageError for an unknown runtime, a runtime off the CPU, a runtime with an
    engine execution other than eager, a dtype other than fp32, or a missing extra."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime == "eager":
        return runtime
    if torch.device(device).type != "cpu":
        raise UsageError(f"--runtime {runtime} runs on the CPU here (GPU runtimes such as "
                         "TensorRT are not built); use --device cpu")
    if execution != "eager":
        raise UsageError(f"--exec {execution} is how the engine runs; --runtime {runtime} runs "
                         "the exported graph (use --exec eager)")
    if dtype != "fp32":
        raise UsageError(f"--runtime {runtime} is measured in fp32 only, got {dtype}")
    extra, modules = EXTRAS[runtime]
    require_extra(f"--runtime {runtime}", extra, *modules)
    return runtime


def runtime_record(runtime: str, threads: int | None = None) -> dict:
    """What runs the network, for fingerprints: runtime, version, provider/device, threads."""
    n = threads or torch.get_num_threads()
    if runtime == "eager":
        return {"runtime": "eager", "runtime_version": torch.__version__}
    if runtime == "onnxruntime":
        import onnxruntime as ort

        return {"runtime": runtime, "runtime_version": ort.__version__,
                "provider": "CPUExecutionProvider", "runtime_threads": n,
                "settings": {"intra_op_num_threads": n, "inter_op_num_threads": 1,
                             "execution_mode": "sequential", "graph_optimization": "all",
                             "intra_op_allow_spinning": 0}}
    import openvino as ov

    return {"runtime": runtime, "runtime_version": ov.__version__, "provider": "CPU",
            "runtime_threads": n,
            "settings": {"INFERENCE_NUM_THREADS": n, "PERFORMANCE_HINT": "LATENCY",
                         "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}}


# --------------------------------------------------------------------------- compiled graphs


def onnx_bytes(module: nn.Module, example: torch.Tensor, outputs: int = 1) -> bytes:
    """``module`` exported to ONNX for inputs of ``example``'s shape (fixed: runtimes plan for
    it), opset 17, TorchScript-based exporter (``dynamo=False``: the dynamo one needs
    onnxscript). Inputs ``x``, outputs ``y0``..``y{outputs-1}``."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices
        torch.onnx.export(module.eval(), (example,), buf, opset_version=OPSET, dynamo=False,
                          input_names=["x"], output_names=[f"y{i}" for i in range(outputs)])
    return buf.getvalue()


# compiled graphs a forked child inherited from its parent: kept alive, never freed there
_INHERITED: list = []


class Session:
    """One compiled graph on a runtime: ``session(array) -> list of arrays`` (fresh copies)."""

    def __init__(self, model: bytes, runtime: str, threads: int):
        self.runtime = runtime
        if runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            # idle intra-op threads sleep: sessions timed interleaved must not spin on the cores
            # the session being timed needs (no effect at 1 thread: no pool)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sess = sess = ort.InferenceSession(model, opts,
                                                    providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            self.run = lambda x: sess.run(None, {name: x})  # no cycle through self
        elif runtime == "openvino":
            import openvino as ov

            # the plugin moves this thread's signal stack when it compiles and frees models:
            # keep ours (engine.sigstack says why a process died of SIGSEGV without it)
            with tempfile.TemporaryDirectory() as tmp, keep_signal_stack():
                path = os.path.join(tmp, "m.onnx")  # OpenVINO reads ONNX from a file
                with open(path, "wb") as fh:
                    fh.write(model)
                core = ov.Core()
                self.compiled = core.compile_model(core.read_model(path), "CPU", {
                    "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
                self.req = req = self.compiled.create_infer_request()
            n = len(self.compiled.outputs)

            def run(x):  # reads req, not self: no reference cycle, freed when dropped
                req.infer({0: x})
                return [req.get_output_tensor(i).data.copy() for i in range(n)]

            self.run = run
        else:
            raise UsageError(f"unknown runtime {runtime!r}")
        self.pid = os.getpid()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.run(x)

    def close(self) -> None:
        """Free the compiled graph now (an OpenVINO one with this thread's signal stack kept;
        also done when the session is collected). In a forked child (a DataLoader worker) the
        graph is kept, never freed: its runtime's threads live in the parent only, and freeing
        it here waits for them forever (seen: a worker hung in OpenVINO's executor destructor
        when the garbage collector met a session inherited from the parent)."""
        held = [self.__dict__.pop(name) for name in ("run", "req", "compiled", "sess")
                if name in self.__dict__]
        if getattr(self, "pid", os.getpid()) != os.getpid():
            _INHERITED.extend(held)
            return
        with keep_signal_stack():
            held.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def compile_module(module: nn.Module, example: torch.Tensor, runtime: str, threads: int,
                   outputs: int = 1) -> Session:
    return Session(onnx_bytes(module, example, outputs), runtime, threads)


# --------------------------------------------------------------------------- pieces


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
    geom = net.geometry((size, size))
    layers = [LayerPattern(b.name, b.width, 0, 0, b.width, 0.5) for b in geom.blocks]
    return GatePattern(net.arch, net.stem, size, layers, gate=net.gate_spec)


def width_bounds(net: GatedResNet, pattern: GatePattern | None) -> list[int]:
    """The blocks a width-gated network is cut at (those with dynamic channels)."""
    if pattern is None or net.gate_spec.kind != "width":
        return []
    return [i for i, lp in enumerate(pattern.layers) if lp.dynamic > 0]


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
        self.tile, self.backend, self.execution, self.engine = 1, runtime, "eager", self
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
        self.plan = ["width" if use_width and i in self.bounds else "static"
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
        from hwbench.measure.protocol import TUNING, Inputs, measure

        arrays = [_to_np(x) for x in xs]
        fns = {"static": lambda a: self.whole(a), "width": self._run_by_width}
        m = measure(fns, Inputs(arrays), TUNING, self.device, reference=None)
        self.tuning = {k: v["p50_ms"] for k, v in m.results.items()}
        return m.results["width"]["p50_ms"] < m.results["static"]["p50_ms"]

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
             runtime: str = "eager", execution: str = "eager",
             example: torch.Tensor, threads: int | None = None,
             dynamic_policy: str = "auto", tune_inputs=None, **engine_kw) -> Callable:
    """What hwbench times: the compact engine run as ``execution`` (``runtime="eager"``;
    ``engine_kw`` to ``build_engine``: device, dtype, batch_size, backend, tile) or the mode
    compiled by ``runtime`` (``RuntimeNet``; ``dynamic_policy``: auto, static or width)."""
    if runtime == "eager":
        from hwbench.engine import build_engine
        from hwbench.engine.graphs import executable

        engine = build_engine(net, mode, pattern, dynamic_policy=dynamic_policy,
                              tune_inputs=tune_inputs, **engine_kw)
        return executable(engine, execution, example)
    xs = None if tune_inputs is None else (
        [tune_inputs] if isinstance(tune_inputs, torch.Tensor) else list(tune_inputs))
    return RuntimeNet(net, mode, pattern, runtime, example, threads, dynamic_policy, xs)
