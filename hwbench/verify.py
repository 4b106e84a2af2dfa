"""``hwbench verify``: measure a learned gate pattern on the deployment device.

The network is the run's checkpoint (or, without one, the pattern realised on an untrained net),
executed by the compact engine in ``dynamic`` mode at batch 1, timed per inference with the
profile protocol (interleaved with the dense reference). Reports target vs predicted (from the
matching profile, when there is one) vs measured, and whether the target was met.
"""

from __future__ import annotations

import itertools

import torch

from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.errors import UsageError
from hwbench.flops import pattern_report
from hwbench.locate import measuring_profile, profile_threads
from hwbench.measure.device import fingerprint, parse_device, torch_threads
from hwbench.measure.stats import summarise
from hwbench.measure.timer import time_interleaved
from hwbench.patterns import load_pattern
from hwbench.profiles import Predictor, Unattainable, pick_t_d


def load_backbone(checkpoint: str, arch: str, stem: str):
    from hwbench.evaluate import load_run

    net, cfg, _ = load_run(checkpoint)
    if (cfg.get("arch"), net.stem) != (arch, stem):
        raise UsageError(f"{checkpoint} is a {cfg.get('arch')}/{net.stem} checkpoint; the pattern "
                         f"is {arch}/{stem}")
    return net


def run_verify(pattern_path: str, target_s: float, device: str = "cpu",
               checkpoint: str | None = None, percentile: str = "p90",
               profile_path: str | None = None, max_time_s: float = 10.0,
               allow_foreign: bool = False) -> dict:
    """``allow_foreign``: compare with a profile of another device (refused otherwise: its
    prediction says nothing about this one). Measures at the profile's CPU thread count."""
    dev = parse_device(device)
    pattern = load_pattern(pattern_path)
    prof, profile_path = measuring_profile(dev, pattern.arch, pattern.stem, pattern.input_size,
                                           profile_path, allow_foreign)
    net = load_backbone(checkpoint, pattern.arch, pattern.stem) if checkpoint else \
        realise(pattern)
    with torch_threads(profile_threads(prof)):
        samples, plan = time_network(net, pattern, dev, max_time_s, 64, percentile)
    measured = summarise(samples["dynamic"], 0.02).to_dict()
    measured["samples_ms"] = samples["dynamic"]
    predicted, suggestion = None, None
    if prof is not None:
        pred = Predictor(prof)
        pred.check(pattern, pattern_path)
        predicted = {p: pred.predict(pattern, p) for p in ("p50", "p90", "p99")}
        predicted = {f"{k}_ms": v for k, v in predicted.items()}
    met = measured[f"{percentile}_ms"] <= target_s * 1e3
    if not met and prof is not None:
        try:
            suggestion = pick_t_d(prof, target_s, percentile).t_d
        except Unattainable:
            suggestion = None
    dense_p50 = summarise(samples["dense"]).p50_ms
    gated = sum(lp.channels for lp in pattern.layers)
    share = sum(lp.dynamic for lp in pattern.layers) / gated
    return {"target_ms": target_s * 1e3, "percentile": percentile, "met": met,
            "measured": measured, "predicted": predicted, "profile": profile_path,
            "dense_p50_ms": dense_p50, "latency_ratio_p50": measured["p50_ms"] / dense_p50,
            "macs_ratio": pattern_macs_ratio(pattern), "dynamic_share": share,
            "mode": "dynamic", "plan": plan,
            "suggested_t_d": suggestion, "advice": _advice(met, suggestion, pattern.t_d, share),
            "device": fingerprint(dev)["name"], "checkpoint": checkpoint,
            "pattern": pattern_path}


def time_network(net, pattern, dev: torch.device, max_time_s: float = 10.0, min_runs: int = 64,
                 percentile: str = "p90") -> tuple[dict[str, list[float]], list[str]]:
    """The verify protocol: ``net`` compiled by the compact engine in ``dynamic`` mode at batch
    1 (and the dense reference), timed per inference, interleaved, on 8 fixed inputs, until the
    ``percentile``'s 95% CI is within 2% or ``max_time_s`` runs out. Raw samples (ms) per
    engine, and the engine's plan per block."""
    pool = [x.to(dev).contiguous(memory_format=torch.channels_last)
            for x in pattern_inputs(8, pattern.input_size, seed=21).split(1)]
    engines = {"dynamic": build_engine(net, "dynamic", pattern, device=dev, tune_inputs=pool[0]),
               "dense": build_engine(net, "dense", pattern, device=dev)}

    def cyc(e):
        it = itertools.cycle(pool)
        return lambda: e(next(it))

    samples = time_interleaved({k: cyc(e) for k, e in engines.items()}, device=dev,
                               max_time_s=max_time_s, ci_target=0.02, min_runs=min_runs,
                               ci_quantile=int(percentile[1:]) / 100)
    return samples, list(engines["dynamic"].plan)


def pattern_macs_ratio(pattern) -> float:
    return pattern_report(pattern).ratio


def _advice(met: bool, suggestion: float | None, t_d: float | None, share: float) -> str:
    if met:
        return ""
    if suggestion is None:
        return "no t_d in the profile's range meets this target on this device"
    if t_d is not None and suggestion >= t_d - 1e-9:
        return (f"the profile's prior patterns already pick t_d {suggestion:g}, yet this learned "
                f"pattern is slower than its prior: {share:.0%} of its gated channels are "
                "data-dependent, and only channels that are off for the whole input can be "
                "skipped cheaply here; train longer (more always-off channels) or lower t_d")
    return f"the profile now suggests t_d {suggestion:g} for this target"
