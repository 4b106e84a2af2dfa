import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from hwbench.measure.stats import (
    Warn,
    ci_ranks,
    drift,
    median_ci,
    outlier_mask,
    quantile_ci,
    summarise,
)
from hwbench.measure.timer import ci_met


def test_median_ci_contains_the_median_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.normal(10, 1, 50), rng.normal(10, 1, 5000)
    lo, hi = median_ci(small)
    assert lo <= np.median(small) <= hi
    blo, bhi = median_ci(big)
    assert (bhi - blo) < (hi - lo)


def test_ranks_are_the_exact_binomial_ones():
    # n = 100, median: P(B <= 39) = 0.0176 <= 0.025 < P(B <= 40) = 0.0284, so the lower rank is
    # x_(40) (0-based 39); symmetric above: x_(61) (0-based 60). Coverage 1 - 2 * 0.0176.
    assert ci_ranks(100, 0.5) == (39, 60)
    assert quantile_ci(list(range(100)), 0.5) == (39.0, 60.0)
    lo, hi = ci_ranks(100, 0.9)
    assert binom.cdf(lo, 100, 0.9) <= 0.025 < binom.cdf(lo + 1, 100, 0.9)
    assert binom.cdf(hi, 100, 0.9) >= 0.975 > binom.cdf(hi - 1, 100, 0.9)


def test_no_interval_where_the_sample_is_too_small_for_the_quantile():
    # 0.9 ** 35 = 2.5% + a hair: a p90 needs 36 samples, a p99 368 (0.99 ** 367 > 0.025)
    assert ci_ranks(35, 0.9) is None and ci_ranks(36, 0.9) is not None
    assert ci_ranks(367, 0.99) is None and ci_ranks(368, 0.99) is not None
    lo, hi = quantile_ci(np.arange(200.0), 0.99)
    assert math.isnan(lo) and math.isnan(hi)  # never clamped to the maximum


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [20, 50, 200, 1000])
def test_coverage_by_simulation(q, n):
    """The interval's construction at a fixed n of i.i.d. samples: skewed latencies (lognormal,
    sigma 0.5, like a jittery CPU), the '95%' interval covers the true quantile in >= 94% of
    2,000 draws wherever an interval exists. The rule the product uses (cycled inputs, a look
    every 16 rounds, stop at the first success) is simulated in tests/measure/test_timer.py."""
    sigma = 0.5
    true = math.exp(sigma * norm.ppf(q))
    rng = np.random.default_rng(int(q * 1000) + n)
    draws = rng.lognormal(0.0, sigma, size=(2000, n))
    if ci_ranks(n, q) is None:
        assert all(math.isnan(quantile_ci(d, q)[0]) for d in draws[:5])
        return
    lo, hi = ci_ranks(n, q)
    a = np.sort(draws, axis=1)
    covered = (a[:, lo] <= true) & (true <= a[:, hi])
    assert covered.mean() >= 0.94


def test_summary_decides_on_the_quantile_asked_for():
    rng = np.random.default_rng(0)
    tight_body_wild_tail = list(np.r_[rng.normal(5, 0.01, 160), rng.uniform(5, 9, 40)])
    med = summarise(tight_body_wild_tail, ci_target=0.02, quantile=0.5)
    p90 = summarise(tight_body_wild_tail, ci_target=0.02, quantile=0.9)
    assert med.valid and med.ci95_lo_ms <= med.p50_ms <= med.ci95_hi_ms
    assert not p90.valid and "CI_NOT_MET" in p90.warnings
    assert p90.quantile == 0.9 and p90.ci95_lo_ms <= p90.p90_ms <= p90.ci95_hi_ms
    # a p99 from 200 samples has no interval: never valid, whatever the target
    p99 = summarise([5.0] * 200, ci_target=1.0, quantile=0.99)
    assert not p99.valid and math.isinf(p99.ci95_rel_halfwidth)
    assert summarise([5.0] * 400, ci_target=0.02, quantile=0.99).valid


def test_a_p90_stopping_rule_waits_for_the_tail():
    rng = np.random.default_rng(0)
    tight_body_wild_tail = list(np.r_[rng.normal(5, 0.01, 160), rng.uniform(5, 9, 40)])
    assert ci_met({"x": tight_body_wild_tail}, 0.02, 0.5)
    assert not ci_met({"x": tight_body_wild_tail}, 0.02, 0.9)
    assert not ci_met({"x": [5.0] * 20}, 0.5, 0.9)  # 20 samples: no p90 interval at all


def test_outliers_by_modified_z_score():
    x = list(np.linspace(9.0, 11.0, 30)) + [30.0]  # MAD 0.5: z(30) = 0.6745 * 20 / 0.5 = 27
    mask = outlier_mask(x)
    assert mask.sum() == 1 and mask[30]
    assert not outlier_mask([5.0] * 10).any()  # MAD 0: nothing flagged


def test_summary_of_known_samples_and_warnings():
    s = summarise([1.0, 2.0, 3.0, 4.0, 100.0], ci_target=0.01, first_ms=1000.0)
    assert s.p50_ms == 3.0 and s.iqr_ms == 2.0 and s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.mean_ms == 22.0 and s.outliers == 1
    assert set(s.warnings) == {"CI_NOT_MET", "HIGH_CV", "OUTLIERS", "SLOW_FIRST_RUN"}
    assert s.valid is False
    steady = summarise([5.0] * 64, ci_target=0.02, first_ms=5.0)
    assert steady.valid and steady.warnings == [] and steady.ci95_rel_halfwidth == 0.0


def test_drift_and_advice():
    assert drift([10.0] * 10 + [12.0] * 10) == pytest.approx(0.2)
    assert all(w.advice for w in Warn)


# --- how long an invalid measurement would need ------------------------------------------------


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_the_fewest_samples_for_a_ci_are_where_it_first_exists(q):
    from hwbench.measure.stats import ci_ranks, min_samples_for_ci

    n = min_samples_for_ci(q)
    assert ci_ranks(n, q) is not None and ci_ranks(n - 1, q) is None
    assert {0.5: 6, 0.9: 36, 0.99: 368}[q] == n


def test_time_needed_projects_from_the_width_and_the_rate():
    from hwbench.measure.stats import ci_rel_halfwidth, time_needed

    rng = np.random.default_rng(0)
    xs = list(10 + rng.exponential(1.0, 200))  # a skewed latency
    h = ci_rel_halfwidth(xs, 0.9)
    got = time_needed(xs, 0.9, h / 2, spent_s=10.0)  # twice as tight: about 4x the samples
    assert got["needed_n"] in (800, 801)  # ceil of 200 x 2**2, up to rounding
    assert got["needed_s"] == math.ceil(10.0 / 200 * got["needed_n"])
    assert got["ci_rel_halfwidth"] == pytest.approx(h)
    # already tight enough: no more samples than it has
    assert time_needed(xs, 0.9, h * 2, 10.0)["needed_n"] == 200
    # too few for any p90 CI: the fewest for which one exists, at the same rate
    few = time_needed(xs[:20], 0.9, 0.02, spent_s=2.0)
    assert few["ci_rel_halfwidth"] is None and few["needed_n"] == 36 and few["needed_s"] == 4
