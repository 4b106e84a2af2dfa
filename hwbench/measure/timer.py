"""Latency sampling: every inference timed on its own, every raw sample kept.

Protocol (``sample_interleaved``): warm up each callable (at least ``warmup`` calls and
``min_warmup_s`` seconds in all), then run rounds; in round r every callable runs once on
``inputs[r % len(inputs)]`` (the same input for all of them, so their samples are paired), in
a fresh random order, so machine drift (frequency, other load) hits all of them alike. Stop at
``max_runs``, or once each has ``min_runs`` samples and either ``max_time_s`` has passed or
(with ``ci_target``) the 95% CI of every callable's ``quantile`` exists and its relative
half-width is within ``ci_target``.
On CUDA each sample is bracketed by synchronisations (the device's queue is empty before the
clock starts and the work is done before it stops); on CPU ``perf_counter_ns`` brackets the call.
The timer is hand-written on purpose: a per-call, interleaved, input-cycling loop with a
quantile stopping rule is ~40 lines, and no benchmarking library offers that combination.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from hwbench.measure.stats import ci_rel_halfwidth


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[..., object], device: torch.device, *args: object) -> float:
    """One call's (``fn(*args)``) wall time in milliseconds."""
    _sync(device)
    t0 = time.perf_counter_ns()
    fn(*args)
    _sync(device)
    return (time.perf_counter_ns() - t0) / 1e6


def sample_interleaved(fns: Mapping[str, Callable[[object], object]], inputs: Sequence,
                       device: str | torch.device = "cpu", warmup: int = 10,
                       min_warmup_s: float = 0.5, min_runs: int = 50, max_time_s: float = 10.0,
                       max_runs: int = 100_000, seed: int = 0,
                       ci_target: float | None = None, quantile: float = 0.5,
                       first_ms: dict[str, float] | None = None,
                       progress: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Raw per-call latencies in milliseconds, keyed like ``fns`` (see the module docstring).
    Each ``fns[k]`` takes one input. ``first_ms``, if given, receives each callable's first
    (cold) call latency."""
    if not inputs:
        raise ValueError("sample_interleaved needs at least one input")
    device = torch.device(device)
    names = list(fns)
    t_end = time.perf_counter() + min_warmup_s
    n = 0
    while n < warmup or time.perf_counter() < t_end:
        x = inputs[n % len(inputs)]
        for name in names:
            t = time_once(fns[name], device, x)
            if n == 0 and first_ms is not None:
                first_ms[name] = t
        n += 1
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs:
        x = inputs[rounds % len(inputs)]
        order = names[:]
        rng.shuffle(order)
        for name in order:
            samples[name].append(time_once(fns[name], device, x))
        rounds += 1
        if progress is not None:
            progress(rounds)
        if rounds >= min_runs:
            if time.perf_counter() - start >= max_time_s:
                break
            if ci_target is not None and rounds % 16 == 0 and ci_met(samples, ci_target,
                                                                      quantile):
                break
    return samples


def ci_met(samples: dict[str, list[float]], target: float, q: float = 0.5) -> bool:
    """Whether every callable's ``q`` quantile has a CI within ``target`` (relative half-width)."""
    return all(ci_rel_halfwidth(v, q) <= target for v in samples.values())


def timer_overhead_ms(device: str | torch.device = "cpu", n: int = 1000) -> float:
    """Median cost of one empty timed call: the timer's own overhead, in ms."""
    device = torch.device(device)
    return float(np.median([time_once(lambda: None, device) for _ in range(n)]))
