"""The energy protocol of one setting (cool-down, calibration, a >= 1 s window, J per image)
against a fake clock and meter, and the profiler's energy phase around it."""

import math

import pytest

from hwbench.engine import realise
from hwbench.errors import UsageError
from hwbench.measure.energy import EnergyMeter, energy_per_inference
from hwbench.pattern.gate_pattern import synthesise
from hwbench.profile.build import ProfileConfig, Profiler
from tests.measure.test_energy import gpu_meter

WATTS = 300.0


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeCounter(EnergyMeter):
    """A counter reading WATTS x the fake clock's seconds; logs window ends in ``events``."""

    method, measured = "nvml-counter", True

    def __init__(self, clock, events):
        super().__init__(clock=clock)
        self.events = events

    def _read(self):
        return WATTS * self._clock()

    def _energy(self, start, end, duration_s):
        return end - start

    def begin_window(self, key):
        self.events.append("begin")
        super().begin_window(key)

    def end_window(self, key):
        self.events.append("end")
        return super().end_window(key)


def setting(seconds_per_call: float, cooldown_s: float = 2.0, images: int = 256):
    clock, events = Clock(), []

    def run():
        clock.t += seconds_per_call
        events.append("run")

    def sleep(s):
        clock.t += s
        events.append(("sleep", s))

    meter = FakeCounter(clock, events)
    e = energy_per_inference(meter, run, images, window_s=1.0, cooldown_s=cooldown_s,
                             sleep=sleep, clock=clock, calibrate_s=0.1)
    return e, events


@pytest.mark.parametrize("seconds_per_call", [0.3, 0.004, 2.5])
def test_a_window_holds_at_least_one_second_of_repetitions(seconds_per_call):
    e, events = setting(seconds_per_call)
    in_window = events[events.index("begin") + 1:events.index("end")]
    assert set(in_window) == {"run"} and len(in_window) == e["calls"]
    assert e["calls"] * seconds_per_call >= 1.0  # the window is filled with work
    assert e["window_s"] == pytest.approx(e["calls"] * seconds_per_call)
    assert e["calls"] == max(1, math.ceil(1.0 / seconds_per_call))  # calibrated count
    assert not e["short_window"]


def test_cooldown_first_then_calibration_then_the_window():
    e, events = setting(0.3, cooldown_s=2.0)
    assert events[0] == ("sleep", 2.0)
    assert events[1] == "run" and events.index("begin") == 1 + e["calibration_calls"]
    assert e["cooldown_s"] == 2.0
    _, none = setting(0.3, cooldown_s=0.0)
    assert not [ev for ev in none if isinstance(ev, tuple)]  # no cool-down asked: no sleep


def test_energy_per_image_divides_by_batch_times_calls():
    e, _ = setting(0.3, images=256)
    assert e["images"] == 256 * e["calls"]
    assert e["energy_j_window"] == pytest.approx(WATTS * e["window_s"])
    assert e["energy_j_per_image"] == pytest.approx(WATTS * e["window_s"] / e["images"])
    assert e["label"] == "measured (nvml-counter)" and e["measured"] is True


class EstimateMeter(FakeCounter):
    method, measured = "codecarbon-estimate", False


def test_estimates_are_labelled_estimated():
    clock = Clock()
    e = energy_per_inference(EstimateMeter(clock, []), lambda: setattr(clock, "t", clock.t + 0.5),
                             1, clock=clock)
    assert e["label"] == "estimated (codecarbon-estimate)" and e["measured"] is False


@pytest.mark.slow
def test_profiler_cools_down_between_settings_and_counts_images():
    cfg = ProfileConfig(input_size=16, batch_size=2, t_d=(0.5, 1.0), energy_window_s=0.05,
                        energy_cooldown_s=2.0, tile=8)
    prof = Profiler(cfg, meter=gpu_meter())
    sleeps, windows = [], []
    prof.sleep = sleeps.append
    meter = prof.meter
    begin = meter.begin_window
    meter.begin_window = lambda key: (windows.append((key, len(sleeps))), begin(key))
    base = realise(synthesise("resnet18", "cifar", 16, 1.0), seed=0)
    pats = [synthesise("resnet18", "cifar", 16, t, tile=8) for t in cfg.t_d]
    out = prof._energy(base, pats, prof.pool.batches, {})
    assert out["cooldown_s"] == 2.0 and len(out["points"]) == 3
    assert sleeps == [2.0] * 4  # before the idle window and before each of the 3 settings
    # every window opens after its own cool-down: idle after 1 sleep, setting i after i + 2
    assert windows == [("idle", 1), ("energy", 2), ("energy", 3), ("energy", 4)]
    for pt in out["points"]:
        assert pt["images"] == 2 * pt["inferences"]
        assert pt["energy_j_total"] == pytest.approx(1.5 / pt["images"])  # the fake: 1.5 J
        assert pt["label"] == "measured (nvml-counter)" and pt["cooldown_s"] == 2.0


def test_profiler_energy_reuses_the_sweeps_engines():
    cfg = ProfileConfig(input_size=16, batch_size=2, t_d=(0.5, 1.0), energy_window_s=0.05,
                        energy_cooldown_s=0.0)
    prof = Profiler(cfg, meter=gpu_meter())
    calls = {k: 0 for k in ("dense", "t_d=0.5", "t_d=1")}

    def counting(key):
        return lambda x: calls.__setitem__(key, calls[key] + 1)

    prof._engine = lambda *a, **k: pytest.fail("an engine was rebuilt for the energy phase")
    pats = [synthesise("resnet18", "cifar", 16, t) for t in cfg.t_d]
    out = prof._energy(None, pats, prof.pool.batches, {}, {k: counting(k) for k in calls})
    assert len(out["points"]) == 3 and all(n > 0 for n in calls.values())


def test_profile_config_checks_tile_and_cooldown():
    with pytest.raises(UsageError, match="--tile must be a positive integer"):
        Profiler(ProfileConfig(input_size=16, tile=0))
    with pytest.raises(UsageError, match="cool-down"):
        Profiler(ProfileConfig(input_size=16, energy_cooldown_s=-1.0))
