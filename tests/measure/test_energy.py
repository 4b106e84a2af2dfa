"""Energy meters against fake counters that step by known amounts: exact arithmetic. Zeus is
replaced by a fake monitor, and, for the GPU index mapping, run for real over a fake NVML."""

import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.measure import energy
from hwbench.measure.energy import (
    CodecarbonMeter,
    EnergyMeter,
    ZeusMeter,
    detect_sources,
    idle_power_w,
    nvml_index,
    rapl_zones,
    select_meter,
)


class FakeZeusMonitor:
    """Stands in for ``zeus.monitor.ZeusMonitor``. Counters step on every read by known amounts
    (GPU: ``gpu_step_mj``, default 1500 mJ; CPU package i: (i + 1) x 1000 mJ), are reported in
    J like Zeus does, and a window key may be open only once, as in Zeus."""

    def __init__(self, gpu_indices=(), cpu_indices=(), gpu_step_mj=1500, old_gpu=False):
        self.gpu_indices, self.cpu_indices = list(gpu_indices), list(cpu_indices)
        self.gpu_mj = {i: 987_654_321 + 7 * i for i in self.gpu_indices}
        self.cpu_mj = {i: 123_456.5 + i for i in self.cpu_indices}
        self.gpu_step_mj, self.windows, self.sync_args = gpu_step_mj, {}, []
        self.power_monitor = SimpleNamespace(stopped=False) if old_gpu else None
        if old_gpu:
            self.power_monitor.stop = lambda: setattr(self.power_monitor, "stopped", True)

    def _read(self):
        for i in self.gpu_mj:
            self.gpu_mj[i] += self.gpu_step_mj
        for i in self.cpu_mj:
            self.cpu_mj[i] += (i + 1) * 1000
        return dict(self.gpu_mj), dict(self.cpu_mj)

    def begin_window(self, key, sync_execution=True):
        if key in self.windows:
            raise ValueError(f"Measurement window '{key}' already exists")
        self.sync_args.append(sync_execution)
        self.windows[key] = (time.time(), *self._read())

    def end_window(self, key, sync_execution=True):
        try:
            t0, g0, c0 = self.windows.pop(key)
        except KeyError:
            raise ValueError(f"Measurement window '{key}' does not exist") from None
        self.sync_args.append(sync_execution)
        g1, c1 = self._read()
        return SimpleNamespace(time=time.time() - t0,
                               gpu_energy={i: (g1[i] - g0[i]) / 1000 for i in g0},
                               cpu_energy={i: (c1[i] - c0[i]) / 1000 for i in c0} or None)


def gpu_meter(index=0, **kw):
    return ZeusMeter(FakeZeusMonitor([index], **kw), "nvml-counter", gpu=index)


def test_zeus_gpu_window_is_the_counter_difference():
    syncs, mon = [], FakeZeusMonitor([0])
    meter = ZeusMeter(mon, "nvml-counter", gpu=0, sync=lambda: syncs.append(1))
    meter.begin_window("a")
    w = meter.end_window("a")
    assert w.energy_j == 1.5 and w.method == "nvml-counter" and w.measured
    assert len(syncs) == 2  # both ends synchronise the device, once:
    assert mon.sync_args == [False, False]  # Zeus is told not to synchronise again
    assert w.duration_s > 0 and not mon.windows


def test_nested_windows_by_key():
    meter = gpu_meter()
    meter.begin_window("outer")
    meter.begin_window("inner")
    assert meter.end_window("inner").energy_j == 1.5
    assert meter.end_window("outer").energy_j == 4.5  # three steps between its reads


def test_a_gpu_counter_that_did_not_tick_is_no_measurement_and_zeus_does_not_warn():
    meter = gpu_meter(gpu_step_mj=0)
    meter.begin_window("w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = meter.end_window("w")
    assert w.energy_j is None and w.method == "nvml-counter"

    class Warns(FakeZeusMonitor):  # what zeus 0.16 does on a zero window
        def end_window(self, key, sync_execution=True):
            warnings.warn("The energy consumption of one or more GPUs was measured as zero. "
                          "This means ...", stacklevel=1)
            return super().end_window(key, sync_execution)

    meter = ZeusMeter(Warns([0], gpu_step_mj=0), "nvml-counter", gpu=0)
    meter.begin_window("w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert meter.end_window("w").energy_j is None


def test_an_old_gpu_window_without_power_samples_is_none_and_close_stops_zeus_poller():
    class NoSample(FakeZeusMonitor):  # zeus 0.16 looks up an instant power it did not read
        def end_window(self, key, sync_execution=True):
            self.windows.pop(key)
            return {}[0]

    mon = NoSample([0], old_gpu=True)
    meter = ZeusMeter(mon, "nvml-power", gpu=0)
    meter.begin_window("w")
    w = meter.end_window("w")
    assert w.energy_j is None and w.method == "nvml-power" and w.duration_s >= 0
    meter.close()
    assert mon.power_monitor.stopped


def _fake_rapl(tmp_path, energies, ranges=None, names=None):
    for i, e in enumerate(energies):
        z = tmp_path / f"intel-rapl:{i if i < 3 else 10}"
        z.mkdir()
        (z / "energy_uj").write_text(str(e))
        (z / "max_energy_range_uj").write_text(str((ranges or [262_143_328_850] * 9)[i]))
        (z / "name").write_text((names or [f"package-{j}" for j in range(9)])[i] + "\n")
        (z / f"intel-rapl:{i}:0").mkdir()  # a subzone (core): not a package
    return str(tmp_path)


def test_rapl_sums_the_packages_zeus_reads():
    mon = FakeZeusMonitor(cpu_indices=[0, 1])
    meter = ZeusMeter(mon, "rapl", cpus=[0, 1])
    meter.begin_window("w")
    w = meter.end_window("w")
    assert w.energy_j == 3.0 and w.method == "rapl" and w.measured  # 1 J + 2 J
    assert mon.sync_args == [False, False]


def test_rapl_meter_asks_zeus_for_packages_in_its_order_without_psys(tmp_path):
    root = _fake_rapl(tmp_path, [5, 6, 7, 8], names=["package-0", "psys", "package-1", "dram"])
    asked = {}

    def factory(gpu_indices, cpu_indices):
        asked.update(gpu=gpu_indices, cpu=cpu_indices)
        return FakeZeusMonitor(cpu_indices=cpu_indices)

    zones = rapl_zones(root)[0]
    assert [z.rsplit(":", 1)[1] for z in zones] == ["0", "1", "2", "10"]  # by number, as Zeus
    meter = select_meter(torch.device("cpu"), rapl_root=root, monitor_factory=factory)
    assert meter.method == "rapl" and asked == {"gpu": [], "cpu": [0, 2, 3]}
    meter.begin_window("w")
    assert meter.end_window("w").energy_j == 1.0 + 3.0 + 4.0  # psys (index 1) left out


def test_rapl_unreadable_counter_says_which_file_and_how(tmp_path):
    root = _fake_rapl(tmp_path, [1])
    path = tmp_path / "intel-rapl:0" / "energy_uj"
    # As recent kernels ship it: the file exists, readable by root only (CI runs as root, so
    # the permission check is injected rather than set with chmod).
    zones, reason = rapl_zones(root, can_read=lambda p: False)
    assert zones == [] and str(path) in reason and "chmod" in reason
    assert rapl_zones(root)[0] == [str(tmp_path / "intel-rapl:0")]


def test_no_rapl_here_falls_back_to_a_labelled_estimate(tmp_path):
    status = {s.method: s for s in detect_sources(torch.device("cpu"), rapl_root=str(tmp_path))}
    assert not status["rapl"].available and "no RAPL zones" in status["rapl"].reason
    meter = select_meter(torch.device("cpu"), rapl_root=str(tmp_path))
    assert meter.method == "codecarbon-estimate" and meter.measured is False
    assert isinstance(meter, CodecarbonMeter)
    with pytest.raises(UsageError, match="'rapl' is not available: no RAPL zones"):
        select_meter(torch.device("cpu"), prefer="rapl", rapl_root=str(tmp_path))
    with pytest.raises(UsageError, match="'nvml-counter' is not available: not applicable"):
        select_meter(torch.device("cpu"), prefer="nvml-counter", rapl_root=str(tmp_path))
    with pytest.raises(UsageError, match="unknown energy method 'joules'"):
        select_meter(torch.device("cpu"), prefer="joules")
    assert select_meter(torch.device("cpu"), prefer="none").method == "none"


def test_this_machine_has_no_zeus_source_only_the_estimate():
    """This VM: no GPU, no RAPL. The default probe goes through Zeus for real."""
    status = {s.method: s for s in detect_sources(torch.device("cpu"))}
    if status["rapl"].available:
        pytest.skip("this machine has readable RAPL counters")
    assert select_meter(torch.device("cpu")).method == "codecarbon-estimate"


class FakeGPUs:
    """Zeus' GPU list (``zeus.device.gpu.GPUs``): Hopper (9) unless listed in ``old``."""

    def __init__(self, n=2, old=()):
        self.n, self.old = n, set(old)

    def __len__(self):
        return self.n

    def supports_get_total_energy_consumption(self, i):
        return i not in self.old


def test_gpu_selection_with_fake_zeus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(energy, "_torch_uuid", lambda i: None)
    asked = []

    def factory(gpu_indices, cpu_indices):
        asked.append((gpu_indices, cpu_indices))
        return FakeZeusMonitor(gpu_indices, old_gpu=bool(gpu_indices) and gpu_indices[0] == 1)

    new = select_meter(torch.device("cuda", 0), gpus_loader=lambda: FakeGPUs(old={1}),
                       monitor_factory=factory)
    assert new.method == "nvml-counter" and asked[-1] == ([0], [])
    old = select_meter(torch.device("cuda", 1), gpus_loader=lambda: FakeGPUs(old={1}),
                       monitor_factory=factory)
    assert old.method == "nvml-power" and asked[-1] == ([1], [])
    old.close()
    assert old.monitor.power_monitor.stopped
    with pytest.raises(UsageError, match="'nvml-power' is not available: .*has the energy"):
        select_meter(torch.device("cuda", 0), "nvml-power", gpus_loader=FakeGPUs,
                     monitor_factory=factory)
    with pytest.raises(UsageError, match="cuda:2 is not among the 2 GPU"):
        select_meter(torch.device("cuda", 2), "nvml-counter", gpus_loader=FakeGPUs)
    none = select_meter(torch.device("cuda", 0), gpus_loader=_raises("NVML unavailable"))
    assert none.method == "codecarbon-estimate"


def test_a_source_zeus_refuses_to_open_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(energy, "_torch_uuid", lambda i: None)
    with pytest.raises(UsageError, match="'nvml-counter' was detected but could not be opened: "
                                         "driver went away; use --no-energy"):
        select_meter(torch.device("cuda", 0), gpus_loader=FakeGPUs,
                     monitor_factory=_raises("driver went away"))


def _raises(msg):
    def f(*a, **kw):
        raise RuntimeError(msg)
    return f


@pytest.mark.parametrize("visible,index,nvml", [
    (None, 0, 0), (None, 3, 3), ("3", 0, 3), ("2,5", 0, 2), ("2,5", 1, 5), ("7, 1", 1, 1),
])
def test_torch_index_to_nvml_index(visible, index, nvml):
    assert nvml_index(index, visible) == nvml


@pytest.mark.parametrize("visible,index,match", [
    ("GPU-8f2e1c3a-5b7d-4e9f-a1b2-c3d4e5f6a7b8", 0, "names GPUs by 'GPU-8f2e.*integer"),
    ("MIG-4b1c2d3e-aaaa-bbbb-cccc-111122223333", 0, "names GPUs by 'MIG-"),
    ("2,GPU-8f2e1c3a", 0, "names GPUs by 'GPU-8f2e1c3a'"),
    ("2,5", 2, r"cuda:2 is not among the 2 GPU\(s\)"),
    ("", 0, "CUDA_VISIBLE_DEVICES is empty"),
])
def test_gpu_lists_zeus_cannot_map_are_a_clear_error(visible, index, match):
    with pytest.raises(UsageError, match=match):
        nvml_index(index, visible)


# ---- the mapping through the real Zeus, over a fake NVML -------------------------------------

@pytest.fixture
def fake_nvml(monkeypatch):
    """NVML with 8 GPUs: GPU i's counter starts at 10^9 + i mJ and steps (i + 1) x 1000 + 3 mJ
    per read, so a window's energy says which GPU was read. GPU 6 is a Pascal (no counter)."""
    import pynvml
    import zeus.device.gpu as zgpu
    from zeus.device.gpu.nvidia import nvml_is_available

    counters = {i: 10**9 + i for i in range(8)}
    reads = []

    def read_counter(handle):
        reads.append(handle.i)
        counters[handle.i] += (handle.i + 1) * 1000 + 3
        return counters[handle.i]

    def c2c(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    for name, fn in dict(
            nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 8,
            nvmlDeviceGetHandleByIndex=lambda i: SimpleNamespace(i=i),
            nvmlDeviceGetC2cModeInfoV=c2c,
            nvmlDeviceGetArchitecture=lambda h: (pynvml.NVML_DEVICE_ARCH_PASCAL if h.i == 6
                                                 else pynvml.NVML_DEVICE_ARCH_HOPPER),
            nvmlDeviceGetTotalEnergyConsumption=read_counter,
            nvmlDeviceGetUUID=lambda h: f"GPU-0000000{h.i}-aaaa-bbbb-cccc-ddddeeeeffff").items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setattr(zgpu, "_gpus", None)  # Zeus keeps its GPU list for the process
    monkeypatch.setattr(energy, "_torch_uuid", lambda i: None)  # CUDA stays untouched
    nvml_is_available.cache_clear()
    yield reads
    nvml_is_available.cache_clear()


@pytest.mark.parametrize("visible,index,nvml", [("3", 0, 3), ("2,5", 1, 5), (None, 4, 4)])
def test_zeus_reads_the_nvml_gpu_that_torch_calls_cuda_index(fake_nvml, monkeypatch, visible,
                                                              index, nvml):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    dev = torch.device("cuda", index)
    status = {s.method: s for s in detect_sources(dev)}
    assert status["nvml-counter"].available
    assert f"cuda:{index} is NVML GPU {nvml}" in status["nvml-counter"].reason
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", syncs.append)
    meter = select_meter(dev)
    assert meter.method == "nvml-counter" and meter.gpu == index
    meter.begin_window("w")
    w = meter.end_window("w")
    assert syncs == [dev, dev]  # torch's device is the one synchronised
    assert set(fake_nvml) == {nvml}  # no other GPU's counter was read
    # that GPU's step, to Zeus' float arithmetic (it turns each 10^9 mJ reading into J first)
    assert w.energy_j == pytest.approx(((nvml + 1) * 1000 + 3) / 1000, abs=1e-6)
    meter.close()


def test_zeus_polls_power_on_a_pre_volta_gpu(fake_nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,6")
    status = {s.method: s for s in detect_sources(torch.device("cuda", 1))}
    assert not status["nvml-counter"].available and "older than Volta" in \
        status["nvml-counter"].reason
    assert status["nvml-power"].available and "NVML GPU 6" in status["nvml-power"].reason


def test_uuid_gpu_lists_fall_back_to_the_estimate_or_fail_clearly(fake_nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000003-aaaa-bbbb-cccc-ddddeeeeffff")
    dev = torch.device("cuda", 0)
    assert select_meter(dev).method == "codecarbon-estimate"
    with pytest.raises(UsageError, match="'nvml-counter' is not available: CUDA_VISIBLE_DEVICES"
                                         "=.*integer GPU indices"):
        select_meter(dev, "nvml-counter")
    assert fake_nvml == []


def test_torch_and_nvml_disagreeing_on_a_gpu_is_refused(fake_nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    # CUDA fastest-first: torch's cuda:1 is the GPU NVML calls 2, not 5
    monkeypatch.setattr(energy, "_torch_uuid", lambda i: "00000002-AAAA-bbbb-cccc-ddddeeeeffff")
    with pytest.raises(UsageError, match="cuda:1 is GPU 00000002-.* but NVML GPU 5 .* is "
                                         "00000005-.*CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        select_meter(torch.device("cuda", 1), "nvml-counter")
    monkeypatch.setattr(energy, "_torch_uuid", lambda i: "00000005-AAAA-bbbb-cccc-ddddeeeeffff")
    assert select_meter(torch.device("cuda", 1)).method == "nvml-counter"  # same GPU: fine


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


def test_null_meter_and_idle_power(monkeypatch):
    class Clock:  # every reading 2 s after the last; sleeping takes no time
        t = 100.0

        def perf_counter(self):
            self.t += 2.0
            return self.t

        def sleep(self, s):
            pass

    monkeypatch.setattr(energy, "time", Clock())
    assert idle_power_w(EnergyMeter(), 1.0) is None
    assert idle_power_w(gpu_meter(), 1.0) == 1.5 / 2.0  # W: 1.5 J over one 2 s window


@pytest.mark.slow
def test_importing_hwbench_energy_does_not_import_zeus():
    code = ("import sys, hwbench.measure.energy, hwbench.cli, hwbench.profile.build; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'zeus'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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


@pytest.mark.slow
def test_a_broken_amdsmi_neither_corrupts_json_output_nor_invents_an_amd_gpu(tmp_path):
    """zeus requires amdsmi; without ROCm its import prints to stdout and raises KeyError (as
    the real one does on this machine): `hwbench env --json` must still print only JSON, and
    codecarbon must not warn about an AMD GPU."""
    import json
    import os
    from pathlib import Path

    import hwbench

    (tmp_path / "amdsmi.py").write_text(
        "print('/opt/rocm/lib/libamd_smi.so: cannot open shared object file')\n"
        "print('Unable to find libamd_smi.so library')\n"
        "raise KeyError('libamd_smi.so')\n")
    path = [str(tmp_path), str(Path(hwbench.__file__).parents[1]),
            os.environ.get("PYTHONPATH", "")]
    out = subprocess.run([sys.executable, "-m", "hwbench", "env", "--json"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(path)})
    assert out.returncode == 0, out.stderr
    assert "libamd_smi" not in out.stdout and json.loads(out.stdout)["zeus"]
    assert "AMD GPU" not in out.stderr
