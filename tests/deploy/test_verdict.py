"""The verdict on a delivered network: decided at the band's edges, DEGRADED over latency,
and one table of exit codes."""

import math

import pytest

from hwbench.deploy.verdict import (
    BAND,
    DEGRADED,
    EXIT_CODES,
    MET,
    MISSED,
    NO_DECISION,
    UNDERSHOT,
    band_of,
    exit_help,
    verdict,
)


@pytest.mark.parametrize("score,name", [
    (0.899, UNDERSHOT), (0.901, MET),  # the band's lower edge
    (1.0, MET), (1.001, MISSED),  # its upper edge: the target itself still lands
    (0.5, UNDERSHOT), (1.5, MISSED), (0.95, MET),
])
def test_the_band_decides_at_its_edges(score, name):
    v = verdict(score, True)
    assert v.name == name and v.exit_code == EXIT_CODES[name]


def test_an_undershoot_says_how_much_of_the_budget_is_unused():
    v = verdict(0.75, True)
    assert v.exit_code == 4 and "25.0 % of the latency budget unused" in v.message
    assert "+3.0 % over the target" in verdict(1.03, True).message


@pytest.mark.parametrize("score", [0.95, 2.0, math.nan, None])
def test_no_valid_measurement_is_no_decision(score):
    v = verdict(score, False)  # a score in the band or far out: not decided on
    assert v.name == NO_DECISION and v.exit_code == 5


def test_a_score_that_is_not_a_number_is_no_decision_even_if_called_valid():
    assert verdict(math.nan, True).name == NO_DECISION
    assert verdict(None, True).name == NO_DECISION


@pytest.mark.parametrize("score,valid", [(0.95, True), (0.5, True), (1.2, True), (0.95, False)])
def test_knn_just_below_random_init_is_degraded_whatever_the_latency(score, valid):
    v = verdict(score, valid, BAND, knn_delivered=48.4, knn_random=48.5)
    assert v.name == DEGRADED and v.exit_code == 6
    assert "48.4 %" in v.message and "48.5 %" in v.message


def test_knn_at_or_above_random_init_or_unknown_leaves_the_latency_verdict():
    assert verdict(0.95, True, BAND, 48.5, 48.5).name == MET
    assert verdict(0.95, True, BAND, 48.6, 48.5).name == MET
    assert verdict(1.2, True, BAND, None, 48.5).name == MISSED
    assert verdict(0.5, True, BAND, 10.0, None).name == UNDERSHOT


def test_a_narrower_band_from_a_tolerance():
    assert band_of(0.05) == pytest.approx((0.95, 1.0))
    assert verdict(0.93, True, band_of(0.05)).name == UNDERSHOT
    assert verdict(0.93, True).name == MET


def test_the_exit_codes_are_one_table():
    assert EXIT_CODES == {MET: 0, UNDERSHOT: 4, MISSED: 4, NO_DECISION: 5, DEGRADED: 6}
    text = exit_help()
    for line in ("0  MET", "4  UNDERSHOT", "MISSED", "5  NO DECISION", "6  DEGRADED",
                 "2  a usage error, or a target below the profile's fastest"):
        assert line in text
    assert "3  " not in text  # a target no network reaches is bad input: 2
    assert "6  DEGRADED" not in exit_help((0, 4, 5, 2))
