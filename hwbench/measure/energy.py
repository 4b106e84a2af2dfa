"""Energy meters behind one small window API: ``begin_window(key)`` / ``end_window(key)``.

Sources, best first, and the ``method`` label each number carries:
- ``nvml-counter``: the GPU's total-energy counter (mJ, Volta and newer), read at both ends.
- ``nvml-power``: GPU power (mW) polled every 20 ms on a thread and integrated (older GPUs).
- ``rapl``: Intel/AMD RAPL package counters under /sys/class/powercap (uJ, with wrap-around).
- ``codecarbon-estimate``: codecarbon's power MODEL (TDP/load tables), an estimate, not a
  measurement; ``measured`` is False.
- ``none``: no energy source.
Both ends of a window synchronise the device (``sync``) so the window holds the work. Counters
update every 20-100 ms: windows should last >= 1 s (``ENERGY_WINDOW_SHORT`` otherwise).
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from hwbench.errors import UsageError

METHODS = ("nvml-counter", "nvml-power", "rapl", "codecarbon-estimate", "none")
RAPL_ROOT = "/sys/class/powercap"


@dataclass
class EnergyWindow:
    key: str
    duration_s: float
    energy_j: float | None
    method: str
    measured: bool  # True for hardware counters, False for a model's estimate

    def to_dict(self) -> dict:
        return asdict(self)


class EnergyMeter:
    """Base and null object: times windows, reports no energy."""

    method = "none"
    measured = False

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync or (lambda: None)
        self._open: dict[str, tuple[float, object]] = {}

    def _read(self) -> object:  # a counter snapshot; subclasses override
        return None

    def _energy(self, start: object, end: object, duration_s: float) -> float | None:
        return None

    def begin_window(self, key: str) -> None:
        self._sync()
        self._open[key] = (time.perf_counter(), self._read())

    def end_window(self, key: str) -> EnergyWindow:
        self._sync()
        t0, r0 = self._open.pop(key)
        r1, dt = self._read(), time.perf_counter() - t0
        return EnergyWindow(key, dt, self._energy(r0, r1, dt), self.method, self.measured)

    def close(self) -> None:
        pass


class NvmlCounterMeter(EnergyMeter):
    method, measured = "nvml-counter", True

    def __init__(self, nvml, index: int = 0, sync=None):
        super().__init__(sync)
        self.nvml, self.handle = nvml, nvml.nvmlDeviceGetHandleByIndex(index)

    def _read(self) -> int:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # mJ

    def _energy(self, start, end, duration_s) -> float:
        return (end - start) / 1000.0


class NvmlPowerMeter(EnergyMeter):
    """Integrates polled power (trapezoids); for GPUs without the energy counter."""

    method, measured = "nvml-power", True

    def __init__(self, nvml, index: int = 0, sync=None, interval_s: float = 0.02):
        super().__init__(sync)
        self.nvml, self.handle, self.interval_s = nvml, nvml.nvmlDeviceGetHandleByIndex(index), \
            interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(),
                                  self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0))
            self._stop.wait(self.interval_s)

    def _read(self) -> float:
        return time.perf_counter()

    def _energy(self, start, end, duration_s) -> float | None:
        pts = [(t, w) for t, w in list(self._samples) if start <= t <= end]
        if len(pts) < 2:
            return None
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


class RaplMeter(EnergyMeter):
    """Sum of the RAPL package zones (``intel-rapl:N``), handling counter wrap-around."""

    method, measured = "rapl", True

    def __init__(self, zones: list[str], sync=None):
        super().__init__(sync)
        self.zones = zones
        self.ranges = [int(open(os.path.join(z, "max_energy_range_uj")).read()) for z in zones]

    def _read(self) -> list[int]:
        return [int(open(os.path.join(z, "energy_uj")).read()) for z in self.zones]

    def _energy(self, start, end, duration_s) -> float:
        total = 0
        for s, e, rng in zip(start, end, self.ranges):
            total += e - s if e >= s else e + rng - s
        return total / 1e6


class CodecarbonMeter(EnergyMeter):
    """codecarbon's offline tracker around each window: an ESTIMATE from its power model."""

    method, measured = "codecarbon-estimate", False

    def __init__(self, sync=None, country: str = "USA", factory=None):
        super().__init__(sync)
        self.country = country
        self._factory = factory or self._default_factory
        self._trackers: dict[str, object] = {}

    def _default_factory(self):
        from codecarbon import OfflineEmissionsTracker

        _quiet_codecarbon()

        return OfflineEmissionsTracker(country_iso_code=self.country, measure_power_secs=1,
                                       save_to_file=False, log_level="error")

    def begin_window(self, key: str) -> None:
        tracker = self._factory()
        self._trackers[key] = tracker
        tracker.start()
        super().begin_window(key)

    def end_window(self, key: str) -> EnergyWindow:
        w = super().end_window(key)
        tracker = self._trackers.pop(key)
        tracker.stop()
        data = tracker.final_emissions_data
        # energy_consumed is kWh over CPU + GPU + RAM as codecarbon models them
        w.energy_j = float(data.energy_consumed) * 3.6e6
        return w


@dataclass
class SourceStatus:
    method: str
    available: bool
    reason: str


def _nvml():
    import pynvml  # from the nvidia-ml-py package

    pynvml.nvmlInit()
    return pynvml


def _readable(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            fh.read()
        return True
    except OSError:
        return False


def rapl_zones(root: str = RAPL_ROOT, can_read=_readable) -> tuple[list[str], str]:
    """Readable RAPL package zones, and why there are none when there are none."""
    zones = sorted(z for z in glob.glob(os.path.join(root, "intel-rapl:*"))
                   if z.count(":") == 1)
    if not zones:
        return [], f"no RAPL zones under {root} (no powercap driver, a VM, or not x86)"
    unreadable = [os.path.join(z, "energy_uj") for z in zones
                  if not can_read(os.path.join(z, "energy_uj"))]
    if unreadable:
        return [], (f"RAPL counters exist but {unreadable[0]} is not readable by this user; "
                    f"grant access with: sudo chmod a+r {root}/intel-rapl:*/energy_uj")
    return zones, "readable"


def detect_sources(device: torch.device, nvml_loader=_nvml,
                   rapl_root: str = RAPL_ROOT) -> list[SourceStatus]:
    """What could measure energy on ``device`` here, and why not where not."""
    out = []
    if device.type == "cuda":
        try:
            nvml = nvml_loader()
            h = nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                out.append(SourceStatus("nvml-counter", True, "total-energy counter readable"))
            except Exception as exc:  # NVMLError_NotSupported on pre-Volta GPUs
                out.append(SourceStatus("nvml-counter", False, f"not supported: {exc}"))
            out.append(SourceStatus("nvml-power", True, "power readings (polled)"))
        except Exception as exc:
            out.append(SourceStatus("nvml-counter", False, f"NVML unavailable: {exc}"))
            out.append(SourceStatus("nvml-power", False, f"NVML unavailable: {exc}"))
    else:
        zones, reason = rapl_zones(rapl_root)
        out.append(SourceStatus("rapl", bool(zones), reason))
    try:
        import codecarbon  # noqa: F401

        out.append(SourceStatus("codecarbon-estimate", True,
                                "codecarbon installed (a power model: estimates, not measures)"))
    except ImportError:
        out.append(SourceStatus("codecarbon-estimate", False, "codecarbon not installed"))
    return out


def select_meter(device: torch.device, prefer: str | None = None, nvml_loader=_nvml,
                 rapl_root: str = RAPL_ROOT) -> EnergyMeter:
    """The best available meter for ``device``, or the one asked for (a clear error if absent).
    ``prefer='none'`` gives the null meter."""
    if prefer is not None and prefer not in METHODS:
        raise UsageError(f"unknown energy method {prefer!r}; known: {', '.join(METHODS)}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    if prefer == "none":
        return EnergyMeter(sync)
    status = {s.method: s for s in detect_sources(device, nvml_loader, rapl_root)}
    order = [prefer] if prefer else ["nvml-counter", "nvml-power", "rapl",
                                     "codecarbon-estimate"]
    for method in order:
        s = status.get(method)
        if s is None or not s.available:
            continue
        if method.startswith("nvml"):
            cls = NvmlCounterMeter if method == "nvml-counter" else NvmlPowerMeter
            return cls(nvml_loader(), device.index or 0, sync)
        if method == "rapl":
            return RaplMeter(rapl_zones(rapl_root)[0], sync)
        return CodecarbonMeter(sync)
    if prefer:
        why = status[prefer].reason if prefer in status else f"not applicable to {device.type}"
        raise UsageError(f"energy method {prefer!r} is not available: {why}")
    return EnergyMeter(sync)


def idle_power_w(meter: EnergyMeter, seconds: float = 1.0) -> float | None:
    """Mean power over an idle window (nothing running), to subtract from busy windows."""
    meter.begin_window("idle")
    time.sleep(seconds)
    w = meter.end_window("idle")
    return None if w.energy_j is None else w.energy_j / w.duration_s


def _quiet_codecarbon() -> None:
    """codecarbon logs INFO/WARNING lines at construction, before its log_level applies."""
    import logging

    logging.getLogger("codecarbon").setLevel(logging.ERROR)


# ---- training energy: codecarbon over a whole run --------------------------------------------

MEASURED_CPU_MODES = {"intel_rapl": "rapl", "intel_power_gadget": "intel-power-gadget",
                      "apple_powermetrics": "powermetrics"}


def _cc_methods(tracker) -> dict[str, str]:
    """How codecarbon obtained each component's energy: 'measured (...)' or 'estimated (...)'.

    codecarbon reads RAPL / Power Gadget / powermetrics for CPUs when it can (measured), else a
    TDP x load model (estimated); GPUs through NVML's counters (measured); RAM is always a model.
    It exposes this only on private attributes, read defensively: unknown means estimated.
    """
    methods = {"cpu": "estimated (codecarbon cpu model)", "ram": "estimated (codecarbon RAM model)",
               "gpu": "none (no GPU tracked)"}
    for hw in getattr(tracker, "_hardware", []) or []:
        kind = type(hw).__name__.lower()
        if kind == "cpu":
            mode = str(getattr(hw, "_mode", "unknown"))
            methods["cpu"] = (f"measured ({MEASURED_CPU_MODES[mode]})" if mode in MEASURED_CPU_MODES
                              else f"estimated (codecarbon {mode} model)")
        elif kind == "gpu":
            methods["gpu"] = "measured (nvml)"
    return methods


class TrainingEnergy:
    """codecarbon's offline tracker around a training run (or a resumed segment of one).

    codecarbon writes its ``emissions.csv`` into ``out_dir``; ``stop()`` returns one segment:
    kWh per component (CPU, GPU, RAM) and in total, CO2e (kg) for ``country`` (ISO 3166 alpha-3),
    and per component whether codecarbon measured it or estimated it. ``label`` is ``measured``
    only when every counted component was measured. ``factory`` replaces codecarbon in tests.
    """

    def __init__(self, out_dir, country: str = "USA", factory=None):
        self.out_dir, self.country = str(out_dir), country
        self._factory = factory or self._default_factory
        self._tracker = None
        self._t0 = 0.0

    def _default_factory(self):
        from codecarbon import OfflineEmissionsTracker

        _quiet_codecarbon()

        return OfflineEmissionsTracker(country_iso_code=self.country, output_dir=self.out_dir,
                                       log_level="error",
                                       measure_power_secs=5, project_name="hwbench-train")

    def start(self) -> None:
        try:
            self._tracker = self._factory()
            self._tracker.start()
        except Exception as exc:  # codecarbon missing or refusing: training goes on, unmetered
            self._tracker, self.error = None, f"codecarbon unavailable: {exc}"
        self._t0 = time.perf_counter()

    def stop(self) -> dict:
        wall = time.perf_counter() - self._t0
        if self._tracker is None:
            return {"duration_s": wall, "label": "none", "reason": getattr(self, "error", "")}
        try:
            self._tracker.stop()
            d = self._tracker.final_emissions_data
            methods = _cc_methods(self._tracker)
            float(d.energy_consumed)
        except Exception as exc:  # never lose a finished run to the energy tracker
            self._tracker = None
            return {"duration_s": wall, "label": "none", "reason": f"codecarbon failed: {exc}"}
        parts = {"cpu": float(d.cpu_energy), "gpu": float(d.gpu_energy),
                 "ram": float(d.ram_energy)}
        counted = ["cpu", "ram"] + (["gpu"] if methods["gpu"].startswith("measured") else [])
        measured = [methods[k].startswith("measured") for k in counted]
        label = ("measured" if all(measured) else
                 "partly measured" if any(measured) else "estimated")
        self._tracker = None
        return {"duration_s": wall, "energy_kwh": float(d.energy_consumed),
                **{f"{k}_kwh": v for k, v in parts.items()},
                "emissions_kg_co2e": float(d.emissions), "country": self.country,
                "methods": methods, "label": label, "source": "codecarbon"}


def total_energy(segments: list[dict]) -> dict:
    """Sum of a run's segments (a resumed run has several); the label is the weakest one."""
    keys = ("duration_s", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh", "emissions_kg_co2e")
    tot = {k: sum(s.get(k, 0.0) or 0.0 for s in segments) for k in keys}
    labels = {s["label"] for s in segments}
    for weakest in ("none", "estimated", "partly measured", "measured"):
        if weakest in labels:
            tot["label"] = weakest
            break
    tot["energy_j"] = tot["energy_kwh"] * 3.6e6
    tot["segments"] = len(segments)
    return tot
