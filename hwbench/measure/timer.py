"""Latency sampling: every inference timed on its own, every raw sample kept.

Protocol (``time_interleaved``): warm up each callable (at least ``warmup`` calls and
``min_warmup_s`` seconds in all), then run rounds; in each round every callable runs once, in a
fresh random order, so machine drift (frequency, other load) hits all of them alike. Stop when
each has ``min_runs`` samples and ``max_time_s`` has passed, or at ``max_runs``.
On CUDA each sample is bracketed by synchronisations (the device's queue is empty before the
clock starts and the work is done before it stops); on CPU ``perf_counter_ns`` brackets the call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
                     progress: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Raw per-call latencies in milliseconds, keyed like ``fns`` (see the module docstring)."""
    device = torch.device(device)
    names = list(fns)
    t_end = time.perf_counter() + min_warmup_s
    n = 0
    while n < warmup or time.perf_counter() < t_end:
        for name in names:
            time_once(fns[name], device)
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
        if rounds >= min_runs and time.perf_counter() - start >= max_time_s:
            break
    return samples


@dataclass
class Summary:
    """Derived from raw samples (milliseconds)."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarise_ms(samples: list[float]) -> Summary:
    a = np.asarray(samples, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Summary(len(a), float(p50), float(p90), float(p99), float(a.mean()),
                   float(a.std(ddof=1)) if len(a) > 1 else 0.0, float(a.min()))
