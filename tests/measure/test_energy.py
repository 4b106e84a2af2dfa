"""Energy meters against fake counters that step by known amounts: exact arithmetic."""

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.measure.energy import (
    CodecarbonMeter,
    EnergyMeter,
    NvmlCounterMeter,
    RaplMeter,
    detect_sources,
    idle_power_w,
    rapl_zones,
    select_meter,
)


class FakeNvml:
    """Energy counter in mJ that advances 1500 mJ per read; power 250 W."""

    def __init__(self, counter=True):
        self.mj, self.counter, self.reads = 10_000, counter, 0

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise RuntimeError("NVMLError_NotSupported")
        self.reads += 1
        self.mj += 1500
        return self.mj

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # mW


def test_nvml_counter_window_is_the_counter_difference():
    syncs = []
    meter = NvmlCounterMeter(FakeNvml(), 0, sync=lambda: syncs.append(1))
    meter.begin_window("a")
    w = meter.end_window("a")
    assert w.energy_j == 1.5 and w.method == "nvml-counter" and w.measured
    assert len(syncs) == 2  # both ends synchronise the device


def test_nested_windows_by_key():
    meter = NvmlCounterMeter(FakeNvml(), 0)
    meter.begin_window("outer")
    meter.begin_window("inner")
    assert meter.end_window("inner").energy_j == 1.5
    assert meter.end_window("outer").energy_j == 4.5  # three steps between its reads


def _fake_rapl(tmp_path, energies, ranges=(1_000_000,)):
    for i, (e, r) in enumerate(zip(energies, ranges)):
        z = tmp_path / f"intel-rapl:{i}"
        z.mkdir()
        (z / "energy_uj").write_text(str(e))
        (z / "max_energy_range_uj").write_text(str(r))
    return sorted(str(p) for p in tmp_path.glob("intel-rapl:*"))


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    zones = _fake_rapl(tmp_path, [999_000, 5_000], ranges=(1_000_000, 1_000_000))
    meter = RaplMeter(zones)
    meter.begin_window("w")
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("1000")  # wrapped: +2000 uJ
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("8000")  # +3000 uJ
    w = meter.end_window("w")
    assert w.energy_j == pytest.approx(0.005) and w.method == "rapl" and w.measured


def test_rapl_unreadable_counter_says_which_file_and_how(tmp_path):
    _fake_rapl(tmp_path, [1])
    path = tmp_path / "intel-rapl:0" / "energy_uj"
    # As recent kernels ship it: the file exists, readable by root only (CI runs as root, so
    # the permission check is injected rather than set with chmod).
    zones, reason = rapl_zones(str(tmp_path), can_read=lambda p: False)
    assert zones == [] and str(path) in reason and "chmod" in reason
    assert rapl_zones(str(tmp_path))[0] == [str(tmp_path / "intel-rapl:0")]


def test_no_rapl_here_falls_back_to_a_labelled_estimate(tmp_path):
    status = {s.method: s for s in detect_sources(torch.device("cpu"), rapl_root=str(tmp_path))}
    assert not status["rapl"].available and "no RAPL zones" in status["rapl"].reason
    meter = select_meter(torch.device("cpu"), rapl_root=str(tmp_path))
    assert meter.method == "codecarbon-estimate" and meter.measured is False
    with pytest.raises(UsageError, match="'rapl' is not available"):
        select_meter(torch.device("cpu"), prefer="rapl", rapl_root=str(tmp_path))
    assert select_meter(torch.device("cpu"), prefer="none").method == "none"


def test_gpu_selection_with_fake_nvml():
    dev = torch.device("cuda", 0)
    meter = select_meter(dev, nvml_loader=FakeNvml, rapl_root="/nonexistent")
    assert meter.method == "nvml-counter"
    old = select_meter(dev, nvml_loader=lambda: FakeNvml(counter=False))
    try:
        assert old.method == "nvml-power"
    finally:
        old.close()


def test_codecarbon_window_converts_kwh_to_joules():
    class Tracker:
        def start(self):
            pass

        def stop(self):
            self.final_emissions_data = type("D", (), {"energy_consumed": 2e-6})()

    meter = CodecarbonMeter(factory=Tracker)
    meter.begin_window("w")
    w = meter.end_window("w")
    assert w.energy_j == pytest.approx(7.2) and w.method == "codecarbon-estimate"
    assert w.measured is False


def test_null_meter_and_idle_power():
    meter = EnergyMeter()
    assert idle_power_w(meter, 0.01) is None
    nv = NvmlCounterMeter(FakeNvml(), 0)
    assert idle_power_w(nv, 0.01) == pytest.approx(1.5 / 0.01, rel=0.5)


class _CC:
    """A stand-in for codecarbon's tracker: fixed kWh per component, its hardware list."""

    def __init__(self, cpu_mode="cpu_load", gpu=False, fail=False):
        if fail:
            raise RuntimeError("no codecarbon here")
        self.started = self.stopped = False
        hw = [type("CPU", (), {"_mode": cpu_mode})(), type("RAM", (), {})()]
        if gpu:
            hw.append(type("GPU", (), {})())
        self._hardware = hw
        self.final_emissions_data = type("D", (), dict(
            cpu_energy=0.002, gpu_energy=0.005 if gpu else 0.0, ram_energy=0.001,
            energy_consumed=0.008 if gpu else 0.003, emissions=0.0012))()

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


@pytest.mark.parametrize("cpu_mode,gpu,label,cpu_method", [
    ("cpu_load", False, "estimated", "estimated (codecarbon cpu_load model)"),
    ("constant", False, "estimated", "estimated (codecarbon constant model)"),
    ("intel_rapl", False, "partly measured", "measured (rapl)"),  # RAM is always a model
    ("cpu_load", True, "partly measured", "estimated (codecarbon cpu_load model)"),
])
def test_training_energy_labels_each_component_by_codecarbons_backend(tmp_path, cpu_mode, gpu,
                                                                      label, cpu_method):
    from hwbench.measure.energy import TrainingEnergy

    meter = TrainingEnergy(tmp_path, "FRA", factory=lambda: _CC(cpu_mode, gpu))
    meter.start()
    seg = meter.stop()
    assert seg["label"] == label and seg["methods"]["cpu"] == cpu_method
    assert seg["methods"]["ram"].startswith("estimated")
    assert seg["methods"]["gpu"] == ("measured (nvml)" if gpu else "none (no GPU tracked)")
    assert seg["energy_kwh"] == pytest.approx(0.008 if gpu else 0.003)
    assert seg["cpu_kwh"] == 0.002 and seg["country"] == "FRA" and seg["duration_s"] >= 0


def test_training_energy_without_codecarbon_says_none_and_totals_take_the_weakest_label(tmp_path):
    from hwbench.measure.energy import TrainingEnergy, total_energy

    meter = TrainingEnergy(tmp_path, factory=lambda: _CC(fail=True))
    meter.start()
    none = meter.stop()
    assert none["label"] == "none" and "no codecarbon here" in none["reason"]
    a = {"duration_s": 1.0, "energy_kwh": 0.001, "cpu_kwh": 0.001, "label": "measured"}
    b = {"duration_s": 2.0, "energy_kwh": 0.002, "cpu_kwh": 0.002, "label": "estimated"}
    tot = total_energy([a, b])
    assert tot["label"] == "estimated" and tot["segments"] == 2
    assert tot["energy_kwh"] == pytest.approx(0.003) and tot["energy_j"] == pytest.approx(10800)
    assert total_energy([a])["label"] == "measured"


def test_a_tracker_failing_at_the_end_never_loses_the_run(tmp_path):
    from hwbench.measure.energy import TrainingEnergy

    class Breaks(_CC):
        def stop(self):
            raise RuntimeError("scheduler died")

    meter = TrainingEnergy(tmp_path, factory=Breaks)
    meter.start()
    seg = meter.stop()
    assert seg["label"] == "none" and "scheduler died" in seg["reason"]
