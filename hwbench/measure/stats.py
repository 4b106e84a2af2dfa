"""Statistics of raw latency samples and the closed set of measurement warnings.

Everything here is derived from raw samples, which are always kept alongside.
- CI of a quantile: distribution-free, from order statistics with *exact* binomial ranks
  (``quantile_ci``): the interval [x_(l), x_(u)] covers the true q-quantile with probability
  ``P(l <= B < u)``, B ~ Binomial(n, q), for any continuous distribution; l and u are the
  innermost ranks whose tails each hold at most (1 - level) / 2. Where no such rank exists at
  this n (a p99 from 200 samples: P(B = n) = 0.99**200 = 13% > 2.5%), there is no interval and
  the quantile cannot be declared measured: ``(nan, nan)``, never a clamp to the extremes.
- Validity (``summarise``): a summary is ``valid`` for the quantile it was asked to decide on
  when that quantile's CI exists and its relative half-width meets ``ci_target``.
- Outliers: modified z-score 0.6745 * (x - median) / MAD, |z| > 3.5 (Iglewicz & Hoaglin).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np
from scipy.stats import binom

LEVEL = 0.95
OUTLIER_Z = 3.5


class Warn(str, Enum):
    """The closed set of warnings; each text says what to do about it."""

    CI_NOT_MET = "CI_NOT_MET"
    HIGH_CV = "HIGH_CV"
    OUTLIERS = "OUTLIERS"
    SLOW_FIRST_RUN = "SLOW_FIRST_RUN"
    DRIFT = "DRIFT"
    ENERGY_WINDOW_SHORT = "ENERGY_WINDOW_SHORT"
    ENERGY_ESTIMATED = "ENERGY_ESTIMATED"
    TIMER_OVERHEAD = "TIMER_OVERHEAD"

    @property
    def advice(self) -> str:
        return _ADVICE[self]


_ADVICE = {
    Warn.CI_NOT_MET: "the decided quantile's 95% CI is wider than the target, or does not "
                     "exist at this sample count (a p90 needs >= 36 samples, a p99 >= 368): "
                     "raise --max-time, close other programs, or pin the process to idle "
                     "cores; the result is INVALID",
    Warn.HIGH_CV: "samples vary by more than 10% (stdev/mean): the machine is noisy; results "
                  "are kept but compare medians only",
    Warn.OUTLIERS: "more than 5% of samples are outliers (modified z-score > 3.5): something "
                   "else ran; rerun on a quiet machine",
    Warn.SLOW_FIRST_RUN: "the first call was more than 5x the median (lazy initialisation or cold "
                         "caches); warm-up absorbed it, but raise --warmup if it persists",
    Warn.DRIFT: "the dense reference probe changed by more than 10% during the run (frequency "
                "scaling, thermals or load): compare ratios to dense, not absolute times",
    Warn.ENERGY_WINDOW_SHORT: "an energy window lasted under 1 s, shorter than the counter's "
                              "update period allows: energy per inference is unreliable",
    Warn.ENERGY_ESTIMATED: "no energy counter is readable here; energy figures are codecarbon "
                           "ESTIMATES from a power model, not measurements",
    Warn.TIMER_OVERHEAD: "the timer's own cost exceeds 1% of the shortest latency: batch more "
                         "inferences per sample",
}


@dataclass
class Stats:
    """Summary of latency samples in milliseconds. ``quantile`` is the one decided on: the CI
    fields, ``valid`` and ``CI_NOT_MET`` are that quantile's (NaN CI: none exists at this n)."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    quantile: float
    ci95_lo_ms: float
    ci95_hi_ms: float
    ci95_rel_halfwidth: float  # (hi - lo) / 2 / (the quantile's estimate); inf without a CI
    cv: float
    outliers: int
    warnings: list[str] = field(default_factory=list)
    valid: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def at(self, q: float) -> float:
        """The estimate of quantile ``q`` (0.5, 0.9 or 0.99) in ms."""
        return {0.5: self.p50_ms, 0.9: self.p90_ms, 0.99: self.p99_ms}[q]


def quantile_of(percentile: str) -> float:
    """'p90' -> 0.9 (p50, p90, p99)."""
    return {"p50": 0.5, "p90": 0.9, "p99": 0.99}[percentile]


def ci_ranks(n: int, q: float, level: float = LEVEL) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) of the exact order-statistic CI of the ``q`` quantile from ``n``
    samples, or None where no two-sided interval at ``level`` exists. Coverage is
    ``binom.cdf(hi, n, q) - binom.cdf(lo, n, q)`` >= level (1-based ranks lo + 1, hi + 1)."""
    if n < 1 or not 0 < q < 1:
        return None
    tail = (1.0 - level) / 2.0
    cdf = binom.cdf(np.arange(n + 1), n, q)  # cdf[k] = P(B <= k)
    # x_(l) (1-based) lies above the quantile iff B < l: need P(B <= l - 1) <= tail
    lows = np.flatnonzero(cdf[:n] <= tail)  # candidates l - 1 = 0 .. n - 1
    # x_(u) lies below the quantile iff B >= u: need P(B <= u - 1) >= 1 - tail
    highs = np.flatnonzero(cdf[:n] >= 1.0 - tail)
    if len(lows) == 0 or len(highs) == 0:
        return None
    return int(lows[-1]), int(highs[0])


def quantile_ci(samples: np.ndarray | list[float], q: float,
                level: float = LEVEL) -> tuple[float, float]:
    """Distribution-free CI of the ``q`` quantile: order statistics at exact binomial ranks
    (``ci_ranks``). ``(nan, nan)`` where none exists at this sample size."""
    a = np.sort(np.asarray(samples, dtype=float))
    ranks = ci_ranks(len(a), q, level)
    if ranks is None:
        return math.nan, math.nan
    return float(a[ranks[0]]), float(a[ranks[1]])


def median_ci(samples: np.ndarray | list[float], level: float = LEVEL) -> tuple[float, float]:
    return quantile_ci(samples, 0.5, level)


def ci_rel_halfwidth(samples: np.ndarray | list[float], q: float) -> float:
    """(hi - lo) / 2 / estimate of the ``q`` quantile's CI; inf where no CI exists."""
    lo, hi = quantile_ci(samples, q)
    est = float(np.quantile(np.asarray(samples, dtype=float), q)) if len(samples) else 0.0
    if math.isnan(lo) or est <= 0:
        return math.inf
    return (hi - lo) / 2.0 / est


def min_samples_for_ci(q: float, level: float = LEVEL, limit: int = 100_000) -> int:
    """The fewest samples for which the ``q`` quantile's two-sided CI at ``level`` exists
    (``ci_ranks``): 36 for p90, 368 for p99, 6 for the median, at 95 %."""
    n = 1
    while ci_ranks(n, q, level) is None:
        n = n + 1 if n < 64 else int(n * 1.05) + 1
        if n > limit:
            return limit
    lo = max(1, int(n / 1.05) - 1) if n > 64 else n
    while lo < n and ci_ranks(lo, q, level) is None:
        lo += 1
    return lo


def time_needed(samples: list[float], q: float, ci_target: float, spent_s: float) -> dict:
    """How long a measurement that did not reach its precision would need: the samples a CI of
    the ``q`` quantile within ``ci_target`` needs (the CI's width falls as 1 / sqrt(n); where no
    CI exists yet, the fewest for which it does, then that rule from there) and the seconds
    they take at the rate of ``spent_s`` for ``len(samples)``. A projection, not a promise."""
    n = len(samples)
    h = ci_rel_halfwidth(samples, q) if n else math.inf
    need = max(n, min_samples_for_ci(q))
    if math.isfinite(h) and h > ci_target:
        need = max(need, math.ceil(n * (h / ci_target) ** 2))
    rate = spent_s / n if n else spent_s
    return {"n": n, "ci_rel_halfwidth": h if math.isfinite(h) else None,
            "ci_target": ci_target, "needed_n": need,
            "needed_s": math.ceil(rate * need) if n else None}


def outlier_mask(samples: np.ndarray | list[float], z: float = OUTLIER_Z) -> np.ndarray:
    a = np.asarray(samples, dtype=float)
    med = np.median(a)
    mad = np.median(np.abs(a - med))
    if mad == 0:
        return np.zeros(len(a), dtype=bool)
    return np.abs(0.6745 * (a - med) / mad) > z


def summarise(samples: list[float], ci_target: float | None = None,
              first_ms: float | None = None, quantile: float = 0.5) -> Stats:
    """Summaries and sample-level warnings, decided on ``quantile`` (0.5, 0.9 or 0.99).
    ``ci_target`` (e.g. 0.02): relative CI half-width that quantile must reach, else
    CI_NOT_MET and ``valid=False``; without a CI at this n the summary is never valid.
    ``first_ms``: the first call's latency (for SLOW_FIRST_RUN)."""
    a = np.asarray(samples, dtype=float)
    p50, p90, p99, q1, q3 = np.percentile(a, [50, 90, 99, 25, 75])
    lo, hi = quantile_ci(a, quantile)
    mean = float(a.mean())
    stdev = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    rel = ci_rel_halfwidth(a, quantile)
    n_out = int(outlier_mask(a).sum())
    s = Stats(len(a), float(p50), float(p90), float(p99), mean, stdev, float(q3 - q1),
              float(a.min()), float(a.max()), quantile, lo, hi, float(rel),
              stdev / mean if mean > 0 else 0.0, n_out)
    if math.isnan(lo) or (ci_target is not None and rel > ci_target):
        s.warnings.append(Warn.CI_NOT_MET.value)
        s.valid = False
    if s.cv > 0.10:
        s.warnings.append(Warn.HIGH_CV.value)
    if n_out > 0.05 * len(a):
        s.warnings.append(Warn.OUTLIERS.value)
    if first_ms is not None and first_ms > 5 * p50:
        s.warnings.append(Warn.SLOW_FIRST_RUN.value)
    return s


def drift(reference_samples: list[float]) -> float:
    """Relative change of the reference probe's median, last quarter vs first quarter."""
    a = np.asarray(reference_samples, dtype=float)
    q = max(1, len(a) // 4)
    first, last = np.median(a[:q]), np.median(a[-q:])
    return float(abs(last - first) / first) if first > 0 else 0.0
