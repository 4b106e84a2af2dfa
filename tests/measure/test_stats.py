import numpy as np
import pytest

from hwbench.measure.stats import Warn, drift, median_ci, outlier_mask, quantile_ci, summarise


def test_median_ci_contains_the_median_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.normal(10, 1, 50), rng.normal(10, 1, 5000)
    lo, hi = median_ci(small)
    assert lo <= np.median(small) <= hi
    blo, bhi = median_ci(big)
    assert (bhi - blo) < (hi - lo)
    # order-statistic ranks for n=100: 50 -+ 9.8 -> sorted[40] and sorted[59]
    assert median_ci(list(range(100))) == (40.0, 59.0)


def test_quantile_ci_is_the_order_statistic_interval():
    assert quantile_ci(list(range(100)), 0.5) == median_ci(list(range(100)))
    assert quantile_ci(list(range(100)), 0.9) == (84.0, 95.0)  # ranks 90 -/+ 1.96 * 3
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 0.5, 4000)
    lo, hi = quantile_ci(x, 0.9)
    assert lo <= np.quantile(x, 0.9) <= hi


def test_a_p90_stopping_rule_waits_for_the_tail():
    from hwbench.measure.timer import _ci_met

    rng = np.random.default_rng(0)
    tight_body_wild_tail = list(np.r_[rng.normal(5, 0.01, 160), rng.uniform(5, 9, 40)])
    assert _ci_met({"x": tight_body_wild_tail}, 0.02, 0.5)
    assert not _ci_met({"x": tight_body_wild_tail}, 0.02, 0.9)


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
