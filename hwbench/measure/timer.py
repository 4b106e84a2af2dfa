"""Latency sampling: every inference timed on its own, every raw sample kept.

Protocol (``time_interleaved``): warm up each callable (at least ``warmup`` calls and
``min_warmup_s`` seconds in all), then run rounds; in each round every callable runs once, in a
fresh random order, so machine drift (frequency, other load) hits all of them alike. Stop at
``max_runs``, or once each has ``min_runs`` samples and either ``max_time_s`` has passed or (with
``ci_target``) the 95% CI half-width of every median is within ``ci_target`` of it.
On CUDA each sample is bracketed by synchronisations (the device's queue is empty before the
clock starts and the work is done before it stops); on CPU ``perf_counter_ns`` brackets the call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """One call's wall time in milliseconds."""
    _sync(device)
    t0 = time.perf_counter_ns()
    fn()
    _sync(device)
    return (time.perf_counter_ns() - t0) / 1e6


def time_interleaved(fns: Mapping[str, Callable[[], object]], device: str | torch.device = "cpu",
                     warmup: int = 10, min_warmup_s: float = 0.5, min_runs: int = 50,
                     max_time_s: float = 10.0, max_runs: int = 100_000, seed: int = 0,
                     progress: Callable[[int], None] | None = None,
                     ci_target: float | None = None,
                     first_ms: dict[str, float] | None = None,
                     ci_quantile: float = 0.5) -> dict[str, list[float]]:
    """Raw per-call latencies in milliseconds, keyed like ``fns`` (see the module docstring).
    ``first_ms``, if given, receives each callable's first (cold) call latency. ``ci_target``
    stops early once the 95% CI of every callable's ``ci_quantile`` (the median by default;
    0.9 where a p90 is what is reported) is within that relative half-width."""
    device = torch.device(device)
    names = list(fns)
    t_end = time.perf_counter() + min_warmup_s
    n = 0
    while n < warmup or time.perf_counter() < t_end:
        for name in names:
            t = time_once(fns[name], device)
            if n == 0 and first_ms is not None:
                first_ms[name] = t
        n += 1
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs:
        order = names[:]
        rng.shuffle(order)
        for name in order:
            samples[name].append(time_once(fns[name], device))
        rounds += 1
        if progress is not None:
            progress(rounds)
        if rounds >= min_runs:
            if time.perf_counter() - start >= max_time_s:
                break
            if ci_target is not None and rounds % 16 == 0 and _ci_met(samples, ci_target,
                                                                       ci_quantile):
                break
    return samples


def _ci_met(samples: dict[str, list[float]], target: float, q: float = 0.5) -> bool:
    from hwbench.measure.stats import quantile_ci

    for v in samples.values():
        lo, hi = quantile_ci(v, q)
        mid = float(np.quantile(v, q))
        if mid <= 0 or (hi - lo) / 2 / mid > target:
            return False
    return True


def timer_overhead_ms(device: str | torch.device = "cpu", n: int = 1000) -> float:
    """Median cost of one empty timed call: the timer's own overhead, in ms."""
    device = torch.device(device)
    return float(np.median([time_once(lambda: None, device) for _ in range(n)]))
