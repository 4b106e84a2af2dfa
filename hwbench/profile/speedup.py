"""``hwbench speedup``: latency of every execution mode of one gate pattern, measured in one run.

Protocol: the network is realised from the pattern (seeded), one engine per mode is built, and
all modes are timed **interleaved** (``hwbench.measure.protocol.measure``) on the same cycle of
synthetic inputs, so machine drift hits every mode alike. Each mode reports p50/p90 latency,
its raw samples, its expected per-sample MACs, ``speedup`` = dense p50 / mode p50 and
``efficiency`` = speedup / (dense MACs / mode MACs): 1.0 means time falls exactly as MACs do.

MACs per mode (expected per sample): dense = the dense network; masked = every conv at full
width plus the gates; static = the kept (always-on + dynamic) channels plus the gates;
dynamic = the pattern's expected MACs (dynamic channels at their on-rate).

Execution (``--exec``, ``hwbench.engine.graphs``): every mode, dense included, runs eagerly,
replayed from CUDA graphs or compiled, so a ratio compares like with like; ``run_speedups``
times several executions in one interleaved measurement, each with ratios to *its own* dense.
Under ``graphs`` and ``compile`` the dynamic mode runs the graphable executors only
(``engine_policy``).
Runtime (``--runtime``, ``hwbench.engine.runtimes``): ``eager`` is the compact engine;
``onnxruntime`` and ``openvino`` time each mode's deployable network compiled by that runtime
(CPU, fp32, its threads pinned to ``--threads``), dense included, so a ratio is to the same
runtime's dense; ``run_runtimes`` times several runtimes in one interleaved measurement. On a
runtime the dynamic mode of channel gates is the static graph (a graph cannot skip a channel per
input), and of width gates at batch 1 one graph per width bucket or the single masked graph,
whichever the runtime ran faster (``dynamic_plan``).
``--tile N`` pads every block's kept channels up to a multiple of N with zero channels (tensor
cores): those are computed too, so each mode also reports ``macs_executed`` (padding included;
efficiency stays on the pattern's MACs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from hwbench.engine import MODES, realise, synthetic_inputs
from hwbench.engine.graphs import DEFAULT_EXECUTION, engine_policy
from hwbench.engine.runtimes import POLICIES, runnable, runtime_record
from hwbench.engine.runtimes.deployment import deploy_engine_on
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, is_graph
from hwbench.engine.tiling import executed_macs
from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint, torch_threads
from hwbench.measure.protocol import Inputs, Protocol, measure
from hwbench.pattern.gate_pattern import GatePattern, check_tile, load_pattern
from hwbench.pattern.macs import pattern_report

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SpeedupConfig:
    pattern: str
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = None
    dtype: str = "fp32"
    warmup: int = 10
    min_runs: int = 50
    max_time_s: float = 8.0
    inputs: int = 16  # distinct input batches cycled through (dynamic decisions vary)
    seed: int = 0
    dynamic_policy: str = "auto"
    backend: str = "auto"  # engine kernels: auto, mkldnn (CPU fp32), aten
    execution: str = DEFAULT_EXECUTION  # eager, graphs (CUDA), compile: hwbench.engine.graphs
    tile: int | None = None  # tensor-core tile (None: the pattern's; 8 or 16 suit tensor cores)
    runtime: str = DEFAULT_RUNTIME  # what runs the networks: hwbench.engine.runtimes.RUNTIMES


@dataclass
class ModeResult:
    p50_ms: float
    p90_ms: float
    samples: int
    macs: float
    speedup: float
    efficiency: float
    samples_ms: list[float] = field(repr=False)
    macs_executed: float | None = None  # per sample, tile padding included


@dataclass
class SpeedupResult:
    flops_ratio: float
    modes: dict[str, ModeResult]
    device: dict
    batch_size: int
    dtype: str
    dynamic_batch_strategy: str
    dynamic_plan: list[str]
    pattern: dict
    config: dict
    inputs: dict = field(default_factory=dict)  # which inputs were timed
    execution: str = DEFAULT_EXECUTION
    setup_s: dict[str, float] = field(default_factory=dict)  # per mode: capture/compile, s
    runtime: str = DEFAULT_RUNTIME  # what ran the networks: hwbench.engine.runtimes.RUNTIMES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unit"] = ("latency in ms (wall clock per batch); MACs per sample; setup_s: seconds "
                     "of capture (graphs), compilation (compile) or export + runtime compile "
                     "per mode")
        return d


def mode_macs(pattern: GatePattern) -> dict[str, float]:
    g = pattern.geometry()
    gates = sum(b.gate_macs() for b in g.blocks)
    static = g.stem_macs + sum(b.gated_macs(k) for b, k in zip(g.blocks, pattern.kept_channels()))
    return {"dense": float(g.dense_macs()), "masked": float(g.dense_macs() + gates),
            "static": float(static), "dynamic": float(pattern_report(pattern).gated_macs)}


def validate(cfg: SpeedupConfig) -> torch.device:
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.tile is not None:
        check_tile(cfg.tile)
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {cfg.dtype!r}; known: {', '.join(DTYPES)}")
    # the command's one check of where and how it runs
    device = deploy_engine_on(cfg.device, cfg.runtime, cfg.execution, cfg.dtype).torch_device
    if is_graph(cfg.runtime) and (cfg.tile or 1) > 1:
        raise UsageError(f"--tile pads channels for tensor cores in hwbench's engine; --runtime "
                         f"{cfg.runtime} runs the exported graph unpadded")
    if is_graph(cfg.runtime) and cfg.backend != "auto":
        raise UsageError(f"--backend {cfg.backend} picks hwbench's conv kernels; --runtime "
                         f"{cfg.runtime} runs its own")
    if is_graph(cfg.runtime) and cfg.dynamic_policy not in POLICIES:
        raise UsageError(f"--dynamic-policy {cfg.dynamic_policy} gathers per input, which a "
                         f"graph on --runtime {cfg.runtime} cannot; known: {', '.join(POLICIES)}")
    gate = load_pattern(cfg.pattern).gate
    if not is_graph(cfg.runtime):
        engine_policy(cfg.execution, cfg.dynamic_policy, gate, cfg.batch_size)
    return device


def run_speedup(cfg: SpeedupConfig, progress=None) -> SpeedupResult:
    """Measure dense/masked/static/dynamic latency of ``cfg.pattern`` on ``cfg.device``."""
    return _variants(cfg, [cfg], progress)[_label(cfg)]


def run_speedups(cfg: SpeedupConfig, executions: tuple[str, ...],
                 progress=None) -> dict[str, SpeedupResult]:
    """``run_speedup`` for each of ``executions`` (``cfg.execution`` ignored), every
    (execution, mode) timed in one interleaved measurement; ratios to the same execution's
    dense."""
    if not executions:
        raise UsageError("no execution to measure")
    return _variants(cfg, [replace(cfg, execution=ex) for ex in executions], progress)


def run_runtimes(cfg: SpeedupConfig, runtimes: tuple[str, ...],
                 progress=None) -> dict[str, SpeedupResult]:
    """``run_speedup`` on each of ``runtimes`` (``cfg.runtime`` ignored; eager engines run as
    ``cfg.execution``), every (runtime, mode) timed in one interleaved measurement; ratios to
    the same runtime's dense. Keyed by runtime (eager: by ``cfg.execution``)."""
    if not runtimes:
        raise UsageError("no runtime to measure")
    return _variants(cfg, [replace(cfg, runtime=rt) for rt in dict.fromkeys(runtimes)], progress)


def _label(cfg: SpeedupConfig) -> str:
    return cfg.execution if not is_graph(cfg.runtime) else cfg.runtime


def _variants(cfg: SpeedupConfig, variants: list[SpeedupConfig], progress) -> dict:
    device = [validate(v) for v in variants][0]
    with torch_threads(cfg.threads):
        return _run_speedups(cfg, variants, device, progress)


def _build(v: SpeedupConfig, net, pattern: GatePattern, device, pool) -> dict:
    """The four modes of one variant (runtime, execution), as they are timed."""
    dtype, bsz = DTYPES[v.dtype], v.batch_size
    policy = engine_policy(v.execution, v.dynamic_policy, pattern.gate, bsz) \
        if not is_graph(v.runtime) else v.dynamic_policy
    return {m: runnable(net, m, pattern, runtime=v.runtime, execution=v.execution,
                        example=pool.batches[0], threads=v.threads or torch.get_num_threads(),
                        dynamic_policy=policy, tune_inputs=pool.batches, device=device,
                        dtype=dtype, batch_size=bsz, backend=v.backend, tile=v.tile)
            for m in MODES}


def _run_speedups(cfg: SpeedupConfig, variants: list[SpeedupConfig], device, progress) -> dict:
    pattern = load_pattern(cfg.pattern)
    net = realise(pattern, seed=cfg.seed)
    pool = synthetic_inputs(cfg.inputs, pattern.input_size, cfg.batch_size,
                            seed=cfg.seed + 7).to(device, DTYPES[cfg.dtype])
    runs, fns = {}, {}
    for v in variants:
        runs[_label(v)] = (v, _build(v, net, pattern, device, pool))
        fns.update({f"{_label(v)}:{m}": f for m, f in runs[_label(v)][1].items()})
    # a comparison of medians: no CI target, a fixed time (hyperfine's --min-runs/--runs)
    protocol = Protocol(quantile=0.5, ci_target=None, min_runs=cfg.min_runs,
                        max_time_s=cfg.max_time_s, warmup=cfg.warmup, seed=cfg.seed)
    res = measure(fns, pool, protocol, device, reference=f"{_label(variants[0])}:dense",
                  progress=progress)
    return {label: _result(v, label, exes, res, pattern, device)
            for label, (v, exes) in runs.items()}


def _result(cfg: SpeedupConfig, ex: str, exes: dict, res, pattern: GatePattern,
            device) -> SpeedupResult:
    """One variant's modes (``ex``: its label), as ratios to the same variant's dense."""
    macs, dynamic = mode_macs(pattern), exes["dynamic"].engine
    tile = exes["static"].engine.tile
    done = {**macs, "static": executed_macs(pattern, "static", tile),
            "dynamic": executed_macs(pattern, "dynamic", tile, dynamic.plan)}
    modes = {}
    for m in MODES:
        r = res[f"{ex}:{m}"]
        speedup = res.at(f"{ex}:dense") / r["p50_ms"]
        modes[m] = ModeResult(r["p50_ms"], r["p90_ms"], r["n"], macs[m], speedup,
                              speedup / (macs["dense"] / macs[m]), r["samples_ms"], done[m])
    bsz = cfg.batch_size
    return SpeedupResult(
        flops_ratio=macs["dynamic"] / macs["dense"], modes=modes,
        device={**fingerprint(device, cfg.threads), "backend": exes["static"].engine.backend,
                "execution": cfg.execution, **runtime_record(cfg.runtime, cfg.threads)},
        batch_size=bsz, dtype=cfg.dtype,
        dynamic_batch_strategy="per sample" if bsz == 1 else dynamic.batch_strategy,
        dynamic_plan=dynamic.plan,
        pattern={"path": cfg.pattern, "arch": pattern.arch, "stem": pattern.stem,
                 "input_size": pattern.input_size, "t_d": pattern.t_d, "tile": tile},
        inputs=res.inputs, config=asdict(cfg), execution=cfg.execution,
        setup_s={m: e.setup_s for m, e in exes.items()}, runtime=cfg.runtime)


def layer_times(engines: dict, x: torch.Tensor, min_runs: int = 30) -> dict[str, list[float]]:
    """Median ms of the stem and of each block, per mode, each block on its own real input,
    modes interleaved. Where the time goes; the sum is a little below the end-to-end p50."""
    protocol = Protocol(quantile=0.5, ci_target=None, min_runs=min_runs, max_time_s=0.0,
                        warmup=3, min_warmup_s=0.0)
    one = Inputs([x], {"source": "one batch, its activations per block"})
    inputs = {}
    with torch.inference_mode():
        for m, e in engines.items():
            h = e._stem(x)
            inputs[m] = [h]
            for blk in e.blocks:
                h = blk(h)
                inputs[m].append(h)
        stems = measure({m: e._stem for m, e in engines.items()}, one, protocol, reference=None)
        out = {m: [stems[m]["p50_ms"]] for m in engines}
        for i in range(len(next(iter(engines.values())).blocks)):
            # each mode's block runs on that mode's own activation, not the shared input
            fns = {m: (lambda _x, b=e.blocks[i], h=inputs[m][i]: b(h))
                   for m, e in engines.items()}
            s = measure(fns, one, protocol, reference=None)
            for m in engines:
                out[m].append(s[m]["p50_ms"])
    return out
