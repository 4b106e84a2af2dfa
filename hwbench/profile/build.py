"""``hwbench profile``: measure gate patterns on one device and write a device profile.

Phases (all timings of the compact engine, or of a runtime's networks under ``runtime``;
``dynamic`` mode unless named):
1. latency table: the static executor at a grid of kept-channel fractions, with and without a
   gate, every network timed piece by piece in context (``segment_times``) through
   ``measure.protocol.measure_segments`` (``table_protocol``): rounds interleave all grid
   networks and the dense reference on the input pool, so drift hits every grid point alike,
   until each pass's median CI is within ``ci_target`` (after ``table_rounds`` rounds) or
   ``max_time_s`` runs out; networks that miss it are listed in ``table.invalid``, every
   pass's pieces are kept (``table.entries``);
2. references and sweep: dense, masked and the prior pattern of every t_d, interleaved, each
   through ``measure.protocol.measure``, each until its median's 95% CI half-width is within
   ``ci_target`` or ``max_time`` runs out (then it is marked INVALID); inputs are synthetic:
   a profile times priors and realised patterns, never a trained network;
3. validation: random mixed patterns, measured end to end (with dense interleaved) and compared
   with the table's prediction;
4. user patterns (``--patterns``), measured and predicted the same way;
5. energy (optional): idle power measured first; then per setting (dense, each t_d) a
   cool-down (``energy_cooldown_s`` idle seconds, also before the idle window; default 2 s on
   CUDA, 0 on the CPU), a calibration, and one window of >= 1 s of back-to-back inferences
   (``measure.energy.energy_per_inference``); energy per image = window energy / images
   (batch x inferences), in total and above idle, each number labelled measured or estimated.

``execution`` (``--exec``): phases 2-5 time every engine, dense included, eagerly, replayed from
CUDA graphs or compiled (``hwbench.engine.graphs``; the dynamic mode under ``graphs`` runs its
graphable executors, and ``dynamic_plan`` says which). The latency table (phase 1) stays eager
block-by-block timing (a block alone is not a graph); the calibration scale, fitted on end-to-end
runs of the chosen execution, carries the table over. The fingerprint records the execution,
so a profile taken with graphs never matches a request for eager latencies.

``runtime`` (``--runtime``; ``hwbench.engine.runtimes``): what runs the networks. ``eager`` is
the compact engine above. ``onnxruntime`` and ``openvino`` (CPU, fp32, ``--exec eager``) time
the runtime's compiled networks in every phase instead, dense included: each is built by
``runnable`` (the one way hwbench builds something to time), with its intra-op threads pinned to
the profile's thread count; the latency table times the runtime's graphs piece by piece (stem,
each block, head: ``RuntimeNet.segment_times``), and the sweep, calibration, validation, user
patterns and energy phases time the whole graph of each mode, interleaved with the same
runtime's dense network, so the predictor is fitted and validated per runtime. The dynamic mode
on a runtime is the static graph for channel gates (a graph cannot skip a channel per input) and
for width gates at batch 1 whichever of the masked graph and the per-width graphs times faster
(the probe's ``dynamic_plan`` says which). The fingerprint records the runtime, its version, its
execution provider, its thread count and settings (``runtime_record``): a profile of one runtime
never matches a request for another (``hwbench.profile.locate``). A missing runtime is a one-line
error naming the extra to install, before any measuring.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from hwbench.engine import realise, synthetic_inputs
from hwbench.engine.graphs import DEFAULT_EXECUTION, engine_policy
from hwbench.engine.runtimes import runnable, runtime_record
from hwbench.engine.runtimes.deployment import deploy_engine_on
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, is_graph
from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint, torch_threads
from hwbench.measure.energy import COOLDOWN_S, energy_per_inference, idle_power_w, select_meter
from hwbench.measure.load import snapshot as load_snapshot
from hwbench.measure.load import window as load_window
from hwbench.measure.protocol import Inputs, Protocol, measure, measure_segments
from hwbench.measure.stats import Warn
from hwbench.measure.timer import timer_overhead_ms
from hwbench.nets.gate import CHANNEL
from hwbench.nets.geometry import arch_spec, check_stem, net_geometry
from hwbench.pattern.gate_pattern import (
    GatePattern,
    LayerPattern,
    check_tile,
    load_pattern,
    mixed_pattern,
    round_to_tile,
    synthesise,
)
from hwbench.pattern.macs import pattern_report
from hwbench.profile.predictor import SCHEMA, Predictor, fit_calibration

DEFAULT_T_D = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class ProfileConfig:
    device: str = "cpu"
    arch: str = "resnet18"
    stem: str = "cifar"
    input_size: int = 32
    batch_size: int = 1
    dtype: str = "fp32"
    threads: int | None = None
    t_d: tuple[float, ...] = DEFAULT_T_D
    patterns: tuple[str, ...] = ()
    energy: bool = True
    energy_method: str | None = None
    max_time_s: float = 60.0  # per measured group (sweep, validation)
    min_runs: int = 64
    warmup: int = 10
    min_warmup_s: float = 1.0
    ci_target: float = 0.02
    grid: int = 32  # kept-channel fractions j/grid, j = 0..grid
    table_rounds: int = 15
    validation: int = 20
    calibration: int = 8  # mixed patterns (MACs spread evenly) the predictor is calibrated on
    energy_window_s: float = 1.0
    energy_cooldown_s: float | None = None  # idle s before each energy setting (None: by device)
    seed: int = 0
    execution: str = DEFAULT_EXECUTION  # eager, graphs (CUDA), compile: hwbench.engine.graphs
    tile: int = 1  # tensor-core tile: kept channels rounded up to a multiple (patterns, engine)
    runtime: str = DEFAULT_RUNTIME  # what runs the networks: hwbench.engine.runtimes.RUNTIMES


def _validate(cfg: ProfileConfig) -> torch.device:
    arch_spec(cfg.arch)
    check_stem(cfg.stem)
    if cfg.input_size < 1 or cfg.batch_size < 1:
        raise UsageError("--input-size and --batch-size must be >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {cfg.threads}")
    bad = [t for t in cfg.t_d if not 0 < t <= 1]
    if bad or not cfg.t_d:
        raise UsageError(f"--t-d values must be in (0, 1], got {list(cfg.t_d)}")
    if cfg.dtype not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown dtype {cfg.dtype!r}")
    check_tile(cfg.tile)
    if cfg.energy_cooldown_s is not None and cfg.energy_cooldown_s < 0:
        raise UsageError(f"energy cool-down must be >= 0 s, got {cfg.energy_cooldown_s}")
    # the command's one check of where and how it runs
    device = deploy_engine_on(cfg.device, cfg.runtime, cfg.execution, cfg.dtype).torch_device
    net_geometry(cfg.arch, cfg.stem, cfg.input_size)
    return device


def _cpu_clock() -> dict:
    info = {}
    for key, path in (("governor", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
                      ("cur_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")):
        try:
            with open(path, encoding="utf-8") as fh:
                info[key] = fh.read().strip()
        except OSError:
            info[key] = None
    return info


def _gpu_state(device: torch.device) -> dict:
    try:
        import pynvml  # only on a GPU, from nvidia-ml-py

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return {"sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "driver": pynvml.nvmlSystemGetDriverVersion()}
    except Exception as exc:  # recorded, not fatal: the reading is optional
        return {"unreadable": str(exc)}


def _uniform_pattern(cfg: ProfileConfig, frac: float, gated: bool) -> GatePattern:
    """Every block keeps round(frac * width) channels (rounded up to the tile); ``gated``: half
    of them dynamic."""
    layers = []
    for b in net_geometry(cfg.arch, cfg.stem, cfg.input_size).blocks:
        k = round_to_tile(int(round(frac * b.width)), cfg.tile, b.width)
        d = (k + 1) // 2 if gated and k else 0
        layers.append(LayerPattern(b.name, b.width, k - d, b.width - k, d, 0.5))
    return GatePattern(cfg.arch, cfg.stem, cfg.input_size, layers, tile=cfg.tile)


def _percentile_ratios(sweep: list[dict]) -> dict:
    """p90 / p50 and p99 / p50 of the sweep's measurements, each the median over its t_d: how
    the predictor's p50 becomes a p90 or p99."""
    return {q: float(np.median([m[f"{q}_ms"] / m["p50_ms"] for m in sweep]))
            for q in ("p90", "p99")}


def _sweep_point(t_d: float, pat: GatePattern, m: dict, dense: dict, pred: Predictor) -> dict:
    """One t_d of the sweep: its prior pattern, measured (``m``) and predicted."""
    return {"t_d": t_d, "macs_ratio": pattern_report(pat).ratio, "mode": "dynamic",
            "pattern": pat.to_dict(), "measured": m, "valid": m["valid"],
            "ratio_to_dense": m["p50_ms"] / dense["p50_ms"],
            **{f"predicted_{q}_ms": pred.predict(pat, q) for q in ("p50", "p90", "p99")}}


def table_protocol(cfg: ProfileConfig) -> Protocol:
    """How the latency table is measured: every grid network's whole pass to the median's
    ``ci_target``, at least ``table_rounds`` rounds, at most ``max_time_s``; two warm-up passes
    each (the sweep's one-second warm-up, times 2 x grid + 2 networks, would be minutes)."""
    return Protocol(quantile=0.5, ci_target=cfg.ci_target, min_runs=cfg.table_rounds,
                    max_time_s=cfg.max_time_s, warmup=2, min_warmup_s=0.0, seed=cfg.seed)


def _entry(gated: bool, frac: float) -> str:
    """A latency-table network's name: ``plain@0.5`` (every block keeps half its channels),
    ``gated@0.5`` (the same, half of them behind a gate)."""
    return f"{'gated' if gated else 'plain'}@{frac:g}"


def _table_entry(r: dict) -> dict:
    """What the profile keeps of one table network: its pass summary's validity and CI, and
    the raw pieces of every sampled pass (ms, to 0.1 us)."""
    return {"valid": r["valid"], "n": r["n"], "p50_ms": r["p50_ms"],
            "ci95_rel_halfwidth": r["ci95_rel_halfwidth"], "segment_ci_ms": r["segment_ci_ms"],
            "segments_ms": [[round(v, 4) for v in row] for row in r["segments_ms"]]}


def _grouped(warnings: list[dict], where: str, total: int) -> list[dict]:
    """One warning per code for a phase of many networks (``where``), saying how many of
    ``total`` it concerns, instead of one per network (DRIFT stays as it is)."""
    out: dict[str, dict] = {}
    for w in warnings:
        name = w["where"].split(":", 1)[-1]
        g = out.setdefault(w["code"], {**w, "networks": []})
        if w["code"] != Warn.DRIFT.value:
            g["networks"].append(name)
    for g in out.values():
        if g["networks"]:
            g["where"] = f"{where} ({len(g['networks'])} of {total} networks)"
    return list(out.values())


class Profiler:
    def __init__(self, cfg: ProfileConfig, progress: Callable[[str, float], None] | None = None,
                 meter=None):
        self.cfg = cfg
        self.meter = meter  # an EnergyMeter to use instead of the best one found (tests, fakes)
        self.sleep = time.sleep  # the energy cool-downs (tests record them)
        self.device = _validate(cfg)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                      "fp16": torch.float16}[cfg.dtype]
        self.progress = progress or (lambda phase, frac: None)
        self.warnings: list[dict] = []
        # the profile decides on medians: the predictor is a p50 model, and p90/p99 come from
        # the sweep's measured ratios; decisions on a p90 are verified by ``verify`` itself
        self.protocol = Protocol(quantile=0.5, ci_target=cfg.ci_target, min_runs=cfg.min_runs,
                                 max_time_s=cfg.max_time_s, warmup=cfg.warmup,
                                 min_warmup_s=cfg.min_warmup_s, seed=cfg.seed)
        self.pool = self._inputs(8, cfg.seed + 7)
        self.user_patterns = [(p, load_pattern(p)) for p in dict.fromkeys(cfg.patterns)]
        for path, pat in self.user_patterns:
            if (pat.arch, pat.stem, pat.input_size) != (cfg.arch, cfg.stem, cfg.input_size):
                raise UsageError(f"{path} is for {pat.arch}/{pat.stem}/{pat.input_size}px, the "
                                 f"profile for {cfg.arch}/{cfg.stem}/{cfg.input_size}px")

    def _warn(self, code: Warn, where: str) -> None:
        self.warnings.append({"code": code.value, "where": where, "advice": code.advice})

    def _inputs(self, n: int, seed: int) -> Inputs:
        """Synthetic inputs: a profile times priors and realised patterns, never a trained net."""
        return synthetic_inputs(n, self.cfg.input_size, self.cfg.batch_size, seed).to(
            self.device, self.dtype)

    def _threads(self) -> int:
        """The profile's intra-op thread count (inside ``run``: what ``torch_threads`` set)."""
        return self.cfg.threads or torch.get_num_threads()

    def _engine(self, net, mode, pattern=None, execution: str | None = None, **kw):
        """What the profile times end to end (``runnable``): the engine run as
        ``cfg.execution`` (``execution`` overrides), or the mode compiled by ``cfg.runtime``."""
        cfg = self.cfg
        gate = pattern.gate if pattern is not None else CHANNEL
        policy = kw.pop("dynamic_policy", "auto")
        if not is_graph(cfg.runtime):  # the dynamic policy the execution allows
            policy = engine_policy(cfg.execution, policy, gate, cfg.batch_size)
        return runnable(net, mode, pattern, runtime=cfg.runtime,
                        execution=execution or cfg.execution, example=self.pool.batches[0],
                        threads=self._threads(), dynamic_policy=policy, device=self.device,
                        dtype=self.dtype, batch_size=cfg.batch_size, tile=cfg.tile, **kw)

    def _built(self, net, mode, pattern=None, **kw):
        """The network itself, as the latency table times it piece by piece
        (``segment_times``) and as the probe's ``plan`` is read: the eager engine, or the
        runtime's network (its own ``engine``)."""
        return self._engine(net, mode, pattern, execution=DEFAULT_EXECUTION, **kw).engine

    def _measure(self, fns: dict, where: str) -> dict[str, dict]:
        """Interleaved, CI-driven measurement (``measure``); summaries with raw samples."""
        m = measure(fns, self.pool, self.protocol, self.device, where=where)
        self.warnings += m.warnings
        return m.results

    def run(self) -> dict:
        with torch_threads(self.cfg.threads):
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        started = dt.datetime.now(dt.timezone.utc)
        before = load_snapshot()
        base = realise(synthesise(cfg.arch, cfg.stem, cfg.input_size, 1.0), seed=cfg.seed)
        overhead = timer_overhead_ms(self.device)
        profile = self._header(base, started, overhead)

        # 2. references + sweep
        self.progress("sweep", 0.25)
        sweep_patterns = [synthesise(cfg.arch, cfg.stem, cfg.input_size, t, tile=cfg.tile)
                          for t in cfg.t_d]
        pool = self.pool.batches
        fns = {"dense": self._engine(base, "dense"), "masked": self._engine(base, "masked")}
        for t, pat in zip(cfg.t_d, sweep_patterns):
            fns[f"t_d={t:g}"] = self._engine(base, "dynamic", pat, tune_inputs=pool)
        res = self._measure(fns, "sweep")
        dense = res["dense"]
        profile["references"] = {"dense": res["dense"], "masked": res["masked"]}
        profile["percentile_ratios"] = _percentile_ratios([res[f"t_d={t:g}"] for t in cfg.t_d])
        # 3. calibration + validation (+ 4. user patterns), measured together with dense
        self.progress("validation", 0.5)
        rng = random.Random(cfg.seed + 11)

        def mixed(i: int, lo: float, hi: float) -> GatePattern:
            return mixed_pattern(cfg.arch, cfg.stem, cfg.input_size,
                                 round(rng.uniform(lo, hi), 3), seed=cfg.seed + 100 + i,
                                 tile=cfg.tile)

        # calibration patterns spread evenly over the MACs range (stratified: an affine fit
        # needs leverage at both ends); validation patterns drawn at random
        n = cfg.calibration
        calib = [(f"calibration[{i}]", mixed_pattern(
            cfg.arch, cfg.stem, cfg.input_size, round(0.15 + 0.8 * (i + 0.5) / n, 3),
            seed=cfg.seed + 100 + i, tile=cfg.tile)) for i in range(n)]
        val = [(f"random[{i}]", mixed(1000 + i, 0.15, 0.95)) for i in range(cfg.validation)]
        user = [(str(path), pat) for path, pat in self.user_patterns]
        res3 = self._measure_patterns(calib + val + user, pool, base, "validation")
        profile["calibration"] = self._calibration(profile, calib, res3, dense["p50_ms"])
        pred = Predictor(profile)
        profile["sweep"] = [_sweep_point(t, pat, res[f"t_d={t:g}"], dense, pred)
                            for t, pat in zip(cfg.t_d, sweep_patterns)]
        profile["validation"] = self._points(val, res3, pred, dense["p50_ms"])
        profile["patterns"] = self._points(user, res3, pred, dense["p50_ms"])["points"]

        # 5. energy
        self.progress("energy", 0.8)
        profile["energy"] = self._energy(base, sweep_patterns, pool, profile, fns) if cfg.energy \
            else {"method": "none", "reason": "--no-energy"}
        if min(s["measured"]["min_ms"] for s in profile["sweep"]) * 0.01 < overhead:
            self._warn(Warn.TIMER_OVERHEAD, "sweep")
        profile["warnings"] = self.warnings
        profile["valid"] = all(s["valid"] for s in profile["sweep"])
        # how busy the machine was (others' CPU time, steal): hwbench.measure.load
        profile["load"] = load_window(before, load_snapshot())
        profile["duration_s"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        self.progress("done", 1.0)
        return profile

    def _calibration(self, profile: dict, calib: list, res3: dict, dense_ms: float) -> dict:
        """Table sums to latency (``predictor.fit_calibration``), fitted in units of the dense
        probe measured in the same phase, then expressed in ms of the sweep's dense reference
        (``dense_ms``): drift between phases (seen: 11%) cancels."""
        table_only = Predictor(profile)
        dense3 = res3["dense"]["p50_ms"] if calib else dense_ms
        tables = [table_only.table_ms(pat) for _, pat in calib]
        ratios = [res3[name]["p50_ms"] / dense3 for name, _ in calib]
        nothing = [torch.zeros((), dtype=torch.float64)] * len(table_only.blocks)
        floor = float(table_only.table_sum(nothing, [False] * len(nothing)))
        fit = fit_calibration(tables, ratios, floor)
        return {
            "model": fit["model"],
            "scale": fit["s"] * dense_ms if fit["s"] is not None else 1.0,
            "offset_ms": fit["offset_ms"], "loo_error": fit["loo_error"],
            "table_ms": tables, "ratio_to_dense": ratios,
            "per_pattern_ratio_per_table_ms": [r / t for r, t in zip(ratios, tables)],
            "dense_reference_ms": dense_ms,
            "definition": "predicted p50 ms = scale * (table sum + offset_ms); model 'scale' "
                          "(offset 0) or 'affine', whichever has the smaller leave-one-out "
                          "error on the calibration patterns",
            "fit_on": f"{len(calib)} mixed patterns at MACs ratios spread evenly over "
                      "0.15-0.95, measured with the validation set (not part of it), as "
                      "ratios to the dense probe of that phase"}

    def _header(self, base, started, overhead: float) -> dict:
        """Phase 1 and what the profile says of itself: fingerprint, protocol, latency table,
        the dynamic engine's plan on a probe pattern."""
        cfg = self.cfg
        fp = {**fingerprint(self.device, cfg.threads), "dtype": cfg.dtype,
              "batch_size": cfg.batch_size, "tile": cfg.tile, "input_size": cfg.input_size,
              "arch": cfg.arch, "stem": cfg.stem, "execution": cfg.execution,
              **runtime_record(cfg.runtime, self._threads()),
              "clock": _cpu_clock() if self.device.type == "cpu" else _gpu_state(self.device)}
        x0 = self._inputs(1, cfg.seed + 1).batches[0]
        self.progress("latency table", 0.0)
        table = self._table(base)
        plan_probe = mixed_pattern(cfg.arch, cfg.stem, cfg.input_size, 0.5, seed=cfg.seed + 3,
                                   tile=cfg.tile)
        probe = self._built(realise(plan_probe, seed=cfg.seed), "dynamic", plan_probe,
                            tune_inputs=x0)
        executes = ["kept" if p == "static" else "expected" for p in probe.plan]
        return {"schema": SCHEMA, "created": started.isoformat(timespec="seconds"),
                "fingerprint": fp, "config": asdict(cfg),
                "protocol": {**self.protocol.to_dict(), "reference_probe": "dense",
                             "inputs": self.pool.record, "timer_overhead_ms": overhead,
                             "timing": "CUDA synchronise + perf_counter_ns"
                             if self.device.type == "cuda" else "perf_counter_ns"},
                "table": table, "dynamic_plan": probe.plan, "dynamic_executes": executes,
                "percentile_ratios": {"p90": 1.0, "p99": 1.0}}

    def _table(self, net) -> dict:
        """Phase 1: every grid network (and the dense reference) timed piece by piece through
        ``measure_segments`` under ``table_protocol``; each block's entry is the median of its
        in-context times. Entries whose pass median misses the CI are marked (``invalid``)."""
        cfg = self.cfg
        fracs = [j / cfg.grid for j in range(cfg.grid + 1)]
        engines = {"dense": self._built(net, "dense")}
        for f in fracs:
            for gated in (False, True):
                if not (gated and f == 0):
                    engines[_entry(gated, f)] = self._built(net, "static",
                                                            _uniform_pattern(cfg, f, gated))
        m = measure_segments({k: e.segment_times for k, e in engines.items()}, self.pool,
                             table_protocol(cfg), self.device, where="table",
                             progress=lambda r: self.progress(
                                 "latency table", 0.25 * min(1.0, r / cfg.table_rounds)))
        self.warnings += _grouped(m.warnings, "table", len(engines))
        med = {k: m[k]["segment_p50_ms"] for k in engines}
        geom = net_geometry(cfg.arch, cfg.stem, cfg.input_size)
        fixed = [np.median([med[k][0] for k in med]), np.median([med[k][-1] for k in med])]
        blocks = []
        for i, b in enumerate(geom.blocks):
            grid, plain, gated = [], [], []
            for f in fracs:
                k = round_to_tile(int(round(f * b.width)), cfg.tile, b.width)  # as measured
                if grid and k <= grid[-1]:
                    continue
                grid.append(k)
                plain.append(float(med[_entry(False, f)][i + 1]))
                gated.append(float(med[_entry(True, f)][i + 1]) if f > 0 else plain[-1])
            blocks.append({"name": b.name, "channels": b.width, "grid": grid,
                           "plain_ms": plain, "gated_ms": gated})
        invalid = [k for k in engines if not m[k]["valid"]]
        return {"unit": "ms, median of in-context block times", "rounds": m["dense"]["n"],
                "protocol": m.protocol, "stem_ms": float(fixed[0]), "head_ms": float(fixed[1]),
                "blocks": blocks, "dense_blocks_ms": [float(v) for v in med["dense"]],
                "valid": not invalid, "invalid": invalid,
                "entries": {k: _table_entry(m[k]) for k in engines}}

    def _measure_patterns(self, named: list, pool, base, where: str) -> dict:
        """Each pattern realised and run by the dynamic engine, with the dense probe (the same
        network as the sweep's) interleaved."""
        fns = {"dense": self._engine(base, "dense")} if named else {}
        for name, pat in named:
            net = realise(pat, seed=self.cfg.seed)
            fns[name] = self._engine(net, "dynamic", pat, tune_inputs=pool)
        return self._measure(fns, where) if fns else {}

    @staticmethod
    def _points(named: list, res: dict, pred: Predictor, dense_ref_ms: float) -> dict:
        """Predicted vs measured. ``error`` compares ratios to the dense probe of each phase
        (drift-corrected); ``error_abs`` compares milliseconds across phases as they are."""
        points = []
        for name, pat in named:
            m, p50 = res[name], pred.predict(pat, "p50")
            ratio = m["p50_ms"] / res["dense"]["p50_ms"]
            points.append({"pattern": name, "t_d": pat.t_d,
                           "macs_ratio": pattern_report(pat).ratio, "measured": m,
                           "valid": m["valid"], "ratio_to_dense": ratio,
                           "predicted_p50_ms": p50,
                           "predicted_p90_ms": pred.predict(pat, "p90"),
                           "predicted_ratio_to_dense": p50 / dense_ref_ms,
                           "error": (p50 / dense_ref_ms) / ratio - 1.0,
                           "error_abs": p50 / m["p50_ms"] - 1.0})
        errors = np.abs([p["error"] for p in points])
        errors_abs = np.abs([p["error_abs"] for p in points])

        def share(e, lim):
            return float(np.mean(e <= lim)) if len(points) else None

        return {"n": len(points), "errors": [p["error"] for p in points],
                "within_5pct": share(errors, 0.05), "within_10pct": share(errors, 0.10),
                "within_5pct_abs": share(errors_abs, 0.05),
                "within_10pct_abs": share(errors_abs, 0.10),
                "error_definition": "predicted/measured - 1 of the p50 as ratios to the dense "
                                    "probe of each phase (error_abs: of the p50 in ms)",
                "dense": res.get("dense"), "points": points}

    def _energy(self, base, patterns: list[GatePattern], pool, profile,
                engines: dict | None = None) -> dict:
        """Energy per image of dense and each pattern. ``engines``: the sweep's, keyed "dense"
        and "t_d=<t>", reused (the engines that were timed; under --exec compile or graphs a
        rebuild would compile or capture every network again); built where absent."""
        cfg, engines = self.cfg, engines or {}
        meter = self.meter or select_meter(self.device, cfg.energy_method)
        cooldown = cfg.energy_cooldown_s if cfg.energy_cooldown_s is not None else \
            COOLDOWN_S.get(self.device.type, 0.0)
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" \
            else None
        try:
            if cooldown > 0:
                self.sleep(cooldown)  # the sweep just ran: idle power of a cooled device
            idle = idle_power_w(meter, 1.0)
            out = {"method": meter.method, "measured": meter.measured, "idle_w": idle,
                   "unit": "J per inference (per image)", "cooldown_s": cooldown,
                   "window_min_s": cfg.energy_window_s, "points": [],
                   "protocol": "per setting: cool-down, calibration, one window of >= "
                               f"{cfg.energy_window_s:g} s of back-to-back inferences; J per "
                               "image = window J / (batch x inferences)"}
            if meter.method == "none":
                out["reason"] = "no energy source available (see `hwbench env`)"
                return out
            if not meter.measured:
                self._warn(Warn.ENERGY_ESTIMATED, "energy")
            settings = [("dense", None, lambda: engines.get("dense")
                         or self._engine(base, "dense"))] + [
                ("dynamic", p.t_d, lambda p=p: engines.get(f"t_d={p.t_d:g}")
                 or self._engine(base, "dynamic", p, tune_inputs=pool)) for p in patterns]
            for mode, t_d, make in settings:
                engine, calls = make(), [0]

                def run(engine=engine, calls=calls):
                    engine(pool[calls[0] % len(pool)])
                    calls[0] += 1

                e = energy_per_inference(meter, run, cfg.batch_size, cfg.energy_window_s,
                                         cooldown, sync, sleep=self.sleep)
                if e["short_window"]:
                    self._warn(Warn.ENERGY_WINDOW_SHORT, f"energy:{mode}:{t_d}")
                w_j = e["energy_j_window"]
                net_j = None if (w_j is None or idle is None) else \
                    (w_j - idle * e["window_s"]) / e["images"]
                out["points"].append({
                    "mode": mode, "t_d": t_d, "window_s": e["window_s"],
                    "inferences": e["calls"], "images": e["images"],
                    "cooldown_s": e["cooldown_s"], "energy_j_window": w_j,
                    "energy_j_total": e["energy_j_per_image"], "energy_j_above_idle": net_j,
                    "method": e["method"], "measured": e["measured"], "label": e["label"]})
            return out
        finally:
            meter.close()


def run_profile(cfg: ProfileConfig, progress=None, meter=None) -> dict:
    return Profiler(cfg, progress, meter).run()


def summary_rows(profile: dict) -> list[dict]:
    energy = {(p["mode"], p["t_d"]): p for p in profile.get("energy", {}).get("points", [])}
    rows = []
    for s in profile["sweep"]:
        e = energy.get(("dynamic", s["t_d"]), {})
        rows.append({"t_d": s["t_d"], "macs_ratio": s["macs_ratio"],
                     "p50_ms": s["measured"]["p50_ms"], "p90_ms": s["measured"]["p90_ms"],
                     "p99_ms": s["measured"]["p99_ms"], "predicted_p50_ms": s["predicted_p50_ms"],
                     "ratio_to_dense": s["ratio_to_dense"], "valid": s["valid"],
                     "energy_j": e.get("energy_j_total")})
    return rows

