"""``hwbench speedup``: latency of every execution mode of one gate pattern, measured in one run.

Protocol: the network is realised from the pattern (seeded), one engine per mode is built, and
all modes are timed **interleaved** (``hwbench.measure.timer``) on the same cycle of inputs, so
machine drift hits every mode alike. Each mode reports p50/p90 latency, its raw samples, its
expected per-sample MACs, ``speedup`` = dense p50 / mode p50 and
``efficiency`` = speedup / (dense MACs / mode MACs): 1.0 means time falls exactly as MACs do.

MACs per mode (expected per sample): dense = the dense network; masked = every conv at full
width plus the gates; static = the kept (always-on + dynamic) channels plus the gates;
dynamic = the pattern's expected MACs (dynamic channels at their on-rate).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch

from hwbench.engine import MODES, build_engine, pattern_inputs, realise
from hwbench.engine.compact import BATCH_STRATEGY
from hwbench.errors import UsageError
from hwbench.flops import pattern_report
from hwbench.measure.device import fingerprint, parse_device, torch_threads
from hwbench.measure.stats import summarise
from hwbench.measure.timer import time_interleaved
from hwbench.patterns import GatePattern, load_pattern

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


@dataclass
class ModeResult:
    p50_ms: float
    p90_ms: float
    samples: int
    macs: float
    speedup: float
    efficiency: float
    samples_ms: list[float] = field(repr=False)


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unit"] = "latency in ms (wall clock per batch); MACs per sample"
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
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {cfg.dtype!r}; known: {', '.join(DTYPES)}")
    device = parse_device(cfg.device)
    if device.type == "cpu" and cfg.dtype != "fp32":
        raise UsageError("on the CPU the engine runs fp32 only")
    return device


def run_speedup(cfg: SpeedupConfig, progress=None) -> SpeedupResult:
    """Measure dense/masked/static/dynamic latency of ``cfg.pattern`` on ``cfg.device``."""
    device = validate(cfg)
    with torch_threads(cfg.threads):
        return _run_speedup(cfg, device, progress)


def _run_speedup(cfg: SpeedupConfig, device, progress) -> SpeedupResult:
    pattern = load_pattern(cfg.pattern)
    dtype = DTYPES[cfg.dtype]
    net = realise(pattern, seed=cfg.seed)
    size, bsz = pattern.input_size, cfg.batch_size
    pool = [x.to(device, dtype).contiguous(memory_format=torch.channels_last)
            for x in pattern_inputs(cfg.inputs * bsz, size, seed=cfg.seed + 7).split(bsz)]
    engines = {m: build_engine(net, m, pattern, device=device, dtype=dtype, batch_size=bsz,
                               dynamic_policy=cfg.dynamic_policy, backend=cfg.backend,
                               tune_inputs=pool[0]) for m in MODES}

    def runner(engine):
        it = itertools.cycle(pool)
        return lambda: engine(next(it))

    samples = time_interleaved({m: runner(e) for m, e in engines.items()}, device=device,
                               warmup=cfg.warmup, min_runs=cfg.min_runs,
                               max_time_s=cfg.max_time_s, seed=cfg.seed, progress=progress)
    macs = mode_macs(pattern)
    dense_p50 = summarise(samples["dense"]).p50_ms
    modes = {}
    for m in MODES:
        s = summarise(samples[m])
        speedup = dense_p50 / s.p50_ms
        modes[m] = ModeResult(s.p50_ms, s.p90_ms, s.n, macs[m], speedup,
                              speedup / (macs["dense"] / macs[m]), samples[m])
    return SpeedupResult(
        flops_ratio=macs["dynamic"] / macs["dense"], modes=modes,
        device={**fingerprint(device, cfg.threads), "backend": engines["static"].backend},
        batch_size=bsz, dtype=cfg.dtype,
        dynamic_batch_strategy="per sample" if bsz == 1 else BATCH_STRATEGY,
        dynamic_plan=engines["dynamic"].plan,
        pattern={"path": cfg.pattern, "arch": pattern.arch, "stem": pattern.stem,
                 "input_size": size, "t_d": pattern.t_d},
        config=asdict(cfg))


def layer_times(engines: dict, x: torch.Tensor, min_runs: int = 30) -> dict[str, list[float]]:
    """Median ms of the stem and of each block, per mode, each block on its own real input,
    modes interleaved. Where the time goes; the sum is a little below the end-to-end p50."""
    inputs = {}
    with torch.inference_mode():
        for m, e in engines.items():
            h = e._stem(x)
            inputs[m] = [h]
            for blk in e.blocks:
                h = blk(h)
                inputs[m].append(h)
        out = {m: [] for m in engines}
        stems = time_interleaved({m: (lambda e=e: e._stem(x)) for m, e in engines.items()},
                                 warmup=3, min_warmup_s=0.0, min_runs=min_runs, max_time_s=0.0)
        for m in engines:
            out[m].append(summarise(stems[m]).p50_ms)
        for i in range(len(next(iter(engines.values())).blocks)):
            fns = {m: (lambda b=e.blocks[i], h=inputs[m][i]: b(h)) for m, e in engines.items()}
            s = time_interleaved(fns, warmup=3, min_warmup_s=0.0, min_runs=min_runs,
                                 max_time_s=0.0)
            for m in engines:
                out[m].append(summarise(s[m]).p50_ms)
    return out
