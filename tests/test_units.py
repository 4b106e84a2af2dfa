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
