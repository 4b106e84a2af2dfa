import pytest

from hwbench.errors import UsageError
from hwbench.units import parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("5ms", 0.005), ("5 ms", 0.005), ("0.005s", 0.005), ("500us", 0.0005), ("500µs", 0.0005),
    ("2s", 2.0), (" 1.5 ms ", 0.0015), ("1e3us", 0.001),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "ms", "5 min", "-5ms", "0ms", "five ms", "5msec", ""])
def test_bad_durations(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_targets_are_durations_or_fractions_of_dense():
    from hwbench.units import parse_target

    assert parse_target("5ms") == (pytest.approx(0.005), None)
    assert parse_target("0.65x") == (None, 0.65) and parse_target(" 1 x") == (None, 1.0)
    for bad in ("1.5x", "0x", "fast", "5"):
        with pytest.raises(UsageError):
            parse_target(bad)
