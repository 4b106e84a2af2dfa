"""Statistics of raw latency samples and the closed set of measurement warnings.

Everything here is derived from raw samples, which are always kept alongside.
- CI of the median: distribution-free, from binomial order statistics (ranks
  n/2 -+ z * sqrt(n) / 2), so no normality is assumed.
- Outliers: modified z-score 0.6745 * (x - median) / MAD, |z| > 3.5 (Iglewicz & Hoaglin).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np

Z95 = 1.959964
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
    Warn.CI_NOT_MET: "the median's 95% CI is wider than the target: raise --max-time, close other "
                     "programs, or pin the process to idle cores; the result is INVALID",
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
    """Summary of latency samples in milliseconds."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    ci95_lo_ms: float
    ci95_hi_ms: float
    ci95_rel_halfwidth: float  # (hi - lo) / 2 / median
    cv: float
    outliers: int
    warnings: list[str] = field(default_factory=list)
    valid: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def median_ci(samples: np.ndarray | list[float], z: float = Z95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics."""
    return quantile_ci(samples, 0.5, z)


def quantile_ci(samples: np.ndarray | list[float], q: float,
                z: float = Z95) -> tuple[float, float]:
    """Distribution-free CI of the ``q`` quantile from order statistics: the ranks
    n*q -/+ z*sqrt(n*q*(1-q)) (the normal approximation of the binomial count below it)."""
    a = np.sort(np.asarray(samples, dtype=float))
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n * q * (1.0 - q))
    lo = max(0, int(math.floor(n * q - half)))
    hi = min(n - 1, int(math.ceil(n * q + half)) - 1)
    return float(a[lo]), float(a[max(lo, hi)])


def outlier_mask(samples: np.ndarray | list[float], z: float = OUTLIER_Z) -> np.ndarray:
    a = np.asarray(samples, dtype=float)
    med = np.median(a)
    mad = np.median(np.abs(a - med))
    if mad == 0:
        return np.zeros(len(a), dtype=bool)
    return np.abs(0.6745 * (a - med) / mad) > z


def summarise(samples: list[float], ci_target: float | None = None,
              first_ms: float | None = None) -> Stats:
    """Summaries and sample-level warnings. ``ci_target`` (e.g. 0.02): relative CI half-width
    the median must reach, else CI_NOT_MET and ``valid=False``. ``first_ms``: the first call's
    latency (for SLOW_FIRST_RUN)."""
    a = np.asarray(samples, dtype=float)
    p50, p90, p99, q1, q3 = np.percentile(a, [50, 90, 99, 25, 75])
    lo, hi = median_ci(a)
    mean = float(a.mean())
    stdev = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    rel = (hi - lo) / 2 / p50 if p50 > 0 else math.inf
    n_out = int(outlier_mask(a).sum())
    s = Stats(len(a), float(p50), float(p90), float(p99), mean, stdev, float(q3 - q1),
              float(a.min()), float(a.max()), lo, hi, float(rel),
              stdev / mean if mean > 0 else 0.0, n_out)
    if ci_target is not None and rel > ci_target:
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
