"""Energy meters behind one small window API: ``begin_window(key)`` / ``end_window(key)``.

Measured energy comes from Zeus (``zeus.monitor.ZeusMonitor``), which reads the hardware
counters; hwbench picks the source, brackets each window with a device sync and labels the
number. Sources, best first, and the ``method`` label each number carries:
- ``nvml-counter``: the GPU's total-energy counter (Volta and newer), read by Zeus at both ends.
- ``nvml-power``: GPUs older than Volta have no such counter: Zeus polls their power (W) in a
  helper process and integrates it over the window.
- ``rapl``: the CPU packages' RAPL counters (uJ); Zeus counts the counters' wrap-arounds.
- ``codecarbon-estimate``: codecarbon's power MODEL (TDP/load tables), an estimate, not a
  measurement; ``measured`` is False. The fallback where Zeus has nothing to read.
- ``none``: no energy source.
Both ends of a window synchronise the device (``sync``) so the window holds the work. Counters
update every 20-100 ms (NVML's energy counter about every 100 ms): windows should last >= 1 s
(``ENERGY_WINDOW_SHORT`` otherwise). ``energy_per_inference`` is the protocol for one setting:
cool-down, calibration, then one window filled with enough repetitions to last >= 1 s.
Zeus is imported only when a source is probed or opened: importing its monitor takes ~1.3 s
(it pulls in scikit-learn), which every CPU-only command would otherwise pay at start.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from hwbench.errors import UsageError

METHODS = ("nvml-counter", "nvml-power", "rapl", "codecarbon-estimate", "none")
MIN_WINDOW_S = 1.0  # shorter windows are flagged: ~10 NVML counter updates at least
COOLDOWN_S = {"cuda": 2.0}  # idle seconds before each setting, by device type (else 0)


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

    def __init__(self, sync: Callable[[], None] | None = None,
                 clock: Callable[[], float] | None = None):
        self._sync = sync or (lambda: None)
        # seconds, monotonic; looked up per call (tests inject a fake clock or patch ``time``)
        self._clock = clock or (lambda: time.perf_counter())
        self._open: dict[str, tuple[float, object]] = {}

    def _read(self) -> object:  # a counter snapshot; subclasses override
        return None

    def _energy(self, start: object, end: object, duration_s: float) -> float | None:
        return None

    def begin_window(self, key: str) -> None:
        self._sync()
        self._open[key] = (self._clock(), self._read())

    def end_window(self, key: str) -> EnergyWindow:
        self._sync()
        t0, r0 = self._open.pop(key)
        r1, dt = self._read(), self._clock() - t0
        return EnergyWindow(key, dt, self._energy(r0, r1, dt), self.method, self.measured)

    def close(self) -> None:
        pass


class ZeusMeter(EnergyMeter):
    """One device's energy (J) per window, from a ``ZeusMonitor`` that watches only that device.

    ``gpu``: a Zeus GPU index, which is torch's index (Zeus renumbers through
    CUDA_VISIBLE_DEVICES as CUDA does); ``cpus``: Zeus CPU indices (RAPL packages), summed.
    ``method`` is the label the numbers carry. The duration (s) is hwbench's monotonic clock,
    as for every meter; Zeus stamps its windows with ``time.time()``, which steps with NTP.
    """
    measured = True

    def __init__(self, monitor, method: str, gpu: int | None = None,
                 cpus: list[int] | None = None, sync=None):
        super().__init__(sync)
        if (gpu is None) == (cpus is None):
            raise ValueError("a ZeusMeter reads one GPU or a list of CPU packages")
        self.monitor, self.method, self.gpu, self.cpus = monitor, method, gpu, cpus

    def begin_window(self, key: str) -> None:
        super().begin_window(key)  # syncs the device: Zeus need not sync it again
        self.monitor.begin_window(key, sync_execution=False)

    def end_window(self, key: str) -> EnergyWindow:
        self._sync()
        with warnings.catch_warnings():
            # Zeus warns when a GPU counter did not move; such a window is reported as None
            # here and flagged by the profiler (ENERGY_WINDOW_SHORT), so it would only repeat.
            warnings.filterwarnings("ignore", message=".*measured as zero")
            try:
                m = self.monitor.end_window(key, sync_execution=False)
            except KeyError:
                # zeus 0.16, GPUs without the counter: a window that caught no power sample
                # looks up an instant power reading that Zeus did not take.
                m = None
        t0, _ = self._open.pop(key)
        dt = self._clock() - t0
        return EnergyWindow(key, dt, None if m is None else self._joules(m), self.method, True)

    def _joules(self, m) -> float | None:
        if self.gpu is not None:
            j = m.gpu_energy.get(self.gpu)
            # A GPU never draws 0 W: 0 J means its counter had not ticked yet (a window shorter
            # than the update period) or no power sample fell inside the window.
            return float(j) if j else None
        if m.cpu_energy is None:
            return None
        return float(sum(m.cpu_energy[i] for i in self.cpus))

    def close(self) -> None:
        poller = getattr(self.monitor, "power_monitor", None)  # pre-Volta GPUs only
        if poller is not None:
            poller.stop()


class CodecarbonMeter(EnergyMeter):
    """codecarbon's offline tracker around each window: an ESTIMATE from its power model."""
    method, measured = "codecarbon-estimate", False

    def __init__(self, sync=None, country: str = "USA", factory=None):
        super().__init__(sync)
        self.country = country
        self._factory = factory or self._default_factory
        self._trackers: dict[str, object] = {}

    def _default_factory(self):
        _settle_amdsmi()
        from codecarbon import OfflineEmissionsTracker  # optional: the "energy" extra

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


# ---- where Zeus reads: GPU index mapping, RAPL zones ------------------------------------------

def nvml_index(torch_index: int, visible: str | None) -> int:
    """The NVML index of torch's ``cuda:torch_index`` under ``CUDA_VISIBLE_DEVICES=visible``.

    CUDA renumbers the GPUs it is shown from 0, in the order listed; NVML numbers every GPU of
    the machine. Zeus maps its GPU indices the same way, but only from integer lists: GPU-UUID
    and MIG entries are refused here with the fix rather than failing inside Zeus.
    """
    if visible is None:
        return torch_index
    if visible.strip() == "":
        raise UsageError("CUDA_VISIBLE_DEVICES is empty: no GPU is visible to this process")
    entries = [e.strip() for e in visible.split(",")]
    odd = [e for e in entries if not e.isdigit()]
    if odd:
        raise UsageError(f"CUDA_VISIBLE_DEVICES={visible!r} names GPUs by {odd[0]!r}; Zeus maps "
                         "only integer GPU indices to NVML: list the GPUs by index "
                         "(`nvidia-smi -L` shows them), e.g. CUDA_VISIBLE_DEVICES=2,5")
    if torch_index >= len(entries):
        raise UsageError(f"cuda:{torch_index} is not among the {len(entries)} GPU(s) that "
                         f"CUDA_VISIBLE_DEVICES={visible!r} makes visible")
    return int(entries[torch_index])


def _settle_amdsmi() -> None:
    """Import AMD SMI's bindings once, quietly, before zeus or codecarbon does.

    zeus requires the ``amdsmi`` package; where ROCm's libamd_smi.so is missing (any machine
    without AMD GPUs) its import prints two lines to stdout, which would corrupt ``--json``
    output, and raises KeyError, which codecarbon reports as a misconfigured AMD GPU. Marking
    it absent makes their later imports a plain ImportError: "no AMD GPU", silently.
    """
    if "amdsmi" in sys.modules:
        return
    with contextlib.redirect_stdout(None):
        try:
            import amdsmi  # noqa: F401
        except Exception:
            sys.modules["amdsmi"] = None  # later imports raise ImportError


def _zeus_gpus():
    _settle_amdsmi()
    from zeus.device.gpu import get_gpus  # optional: the "energy" extra

    return get_gpus()


def _zeus_monitor(gpu_indices: list[int], cpu_indices: list[int]):
    _settle_amdsmi()
    from zeus.monitor import ZeusMonitor  # optional: the "energy" extra

    return ZeusMonitor(gpu_indices=gpu_indices, cpu_indices=cpu_indices)


def _zeus_rapl_dir() -> str:
    """The powercap folder Zeus reads (it prefers the host's, then a container's mount)."""
    _settle_amdsmi()
    from zeus.device.cpu.rapl import CONTAINER_RAPL_DIR, RAPL_DIR  # optional: the "energy" extra

    if not os.path.exists(RAPL_DIR) and os.path.exists(CONTAINER_RAPL_DIR):
        return CONTAINER_RAPL_DIR
    return RAPL_DIR


def _readable(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            fh.read()
        return True
    except OSError:
        return False


def rapl_zones(root: str, can_read=_readable) -> tuple[list[str], str]:
    """Readable top-level RAPL zones under ``root``, in Zeus' CPU order (by zone number), and
    why there are none when there are none."""
    zones = sorted((z for z in glob.glob(os.path.join(root, "intel-rapl:*"))
                    if z.count(":") == 1 and z.rsplit(":", 1)[1].isdigit()),
                   key=lambda z: int(z.rsplit(":", 1)[1]))
    if not zones:
        return [], f"no RAPL zones under {root} (no powercap driver, a VM, or not x86)"
    unreadable = [os.path.join(z, "energy_uj") for z in zones
                  if not can_read(os.path.join(z, "energy_uj"))]
    if unreadable:
        return [], (f"RAPL counters exist but {unreadable[0]} is not readable by this user; "
                    f"grant access with: sudo chmod a+r {root}/intel-rapl:*/energy_uj")
    return zones, "readable"


def rapl_packages(zones: list[str]) -> list[int]:
    """Positions (Zeus CPU indices) of the package zones: ``psys`` (the whole platform, which
    already contains the packages) is left out so no energy is counted twice."""
    def name(z: str) -> str:
        try:
            with open(os.path.join(z, "name"), encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    return [i for i, z in enumerate(zones) if name(z) != "psys"]


# ---- which sources are here, and the meter for one ----------------------------------------

def _bare_uuid(uuid: str) -> str:
    return uuid.strip().lower().removeprefix("gpu-")


def _torch_uuid(index: int) -> str | None:
    try:
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # no CUDA here, or a torch without the field: nothing to compare
        return None


def _nvml_uuid(gpus, index: int) -> str | None:
    try:
        import pynvml  # from the nvidia-ml-py package, which Zeus uses

        uuid = pynvml.nvmlDeviceGetUUID(gpus.gpus[index].handle)
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    except Exception:
        return None


def _order_mismatch(gpus, index: int, phys: int) -> str | None:
    """Why Zeus' GPU ``index`` is not torch's ``cuda:index``, or None. CUDA numbers GPUs fastest
    first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML always by PCI bus: on a machine with mixed
    GPUs an index can name different GPUs, and the energy would be another GPU's."""
    t, n = _torch_uuid(index), _nvml_uuid(gpus, index)
    if t is None or n is None or _bare_uuid(t) == _bare_uuid(n):
        return None
    return (f"cuda:{index} is GPU {_bare_uuid(t)} to torch but NVML GPU {phys} (what Zeus would "
            f"read) is {_bare_uuid(n)}: run with CUDA_DEVICE_ORDER=PCI_BUS_ID")


def _gpu_sources(device: torch.device, gpus_loader) -> list[SourceStatus]:
    index = device.index or 0

    def neither(why: str) -> list[SourceStatus]:
        return [SourceStatus("nvml-counter", False, why), SourceStatus("nvml-power", False, why)]

    try:
        phys = nvml_index(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
        gpus = gpus_loader()
    except UsageError as exc:
        return neither(str(exc))
    except Exception as exc:  # zeus missing, no NVML / AMD SMI, a driver error
        return neither(f"Zeus cannot open the GPUs: {exc}")
    if type(gpus).__name__.startswith("AMD"):
        return neither("Zeus found AMD GPUs (AMD SMI); hwbench labels NVIDIA (NVML) energy only")
    if index >= len(gpus):
        return neither(f"cuda:{index} is not among the {len(gpus)} GPU(s) Zeus sees")
    why = _order_mismatch(gpus, index, phys)
    if why:
        return neither(why)
    where = f"cuda:{index} is NVML GPU {phys}"
    try:
        counter = bool(gpus.supports_get_total_energy_consumption(index))
    except Exception as exc:
        return neither(f"{where}; Zeus cannot query it: {exc}")
    if counter:
        return [SourceStatus("nvml-counter", True, f"total-energy counter, read by Zeus ({where})"),
                SourceStatus("nvml-power", False, f"{where}, which has the energy counter: Zeus "
                                                  "reads it instead of polling power")]
    return [SourceStatus("nvml-counter", False, f"{where}, older than Volta: no energy counter"),
            SourceStatus("nvml-power", True, f"power polled and integrated by Zeus ({where})")]


def _codecarbon_source() -> SourceStatus:
    _settle_amdsmi()
    try:
        import codecarbon  # noqa: F401

        return SourceStatus("codecarbon-estimate", True,
                            "codecarbon installed (a power model: estimates, not measures)")
    except ImportError:
        return SourceStatus("codecarbon-estimate", False, "codecarbon not installed")


def detect_sources(device: torch.device, gpus_loader=_zeus_gpus,
                   rapl_root: str | None = None) -> list[SourceStatus]:
    """What could measure energy on ``device`` here, and why not where not. ``gpus_loader``
    (Zeus' GPU list) and ``rapl_root`` (default: where Zeus reads RAPL) are for tests."""
    out = []
    if device.type == "cuda":
        out += _gpu_sources(device, gpus_loader)
    else:
        try:
            zones, reason = rapl_zones(rapl_root or _zeus_rapl_dir())
        except ImportError as exc:
            zones, reason = [], f"zeus is not installed ({exc})"
        out.append(SourceStatus("rapl", bool(zones), reason))
    out.append(_codecarbon_source())
    return out


def _open_meter(method: str, device: torch.device, sync, rapl_root: str | None,
                monitor_factory) -> EnergyMeter:
    if method == "codecarbon-estimate":
        return CodecarbonMeter(sync)
    if method == "rapl":
        cpus = rapl_packages(rapl_zones(rapl_root or _zeus_rapl_dir())[0])
        return ZeusMeter(monitor_factory(gpu_indices=[], cpu_indices=cpus), method, cpus=cpus,
                         sync=sync)
    gpu = device.index or 0  # torch's index: Zeus applies CUDA_VISIBLE_DEVICES itself
    return ZeusMeter(monitor_factory(gpu_indices=[gpu], cpu_indices=[]), method, gpu=gpu,
                     sync=sync)


def select_meter(device: torch.device, prefer: str | None = None, gpus_loader=_zeus_gpus,
                 rapl_root: str | None = None, monitor_factory=_zeus_monitor) -> EnergyMeter:
    """The best available meter for ``device``, or the one asked for (a clear error if absent).
    ``prefer='none'`` gives the null meter. ``monitor_factory`` replaces Zeus in tests."""
    if prefer is not None and prefer not in METHODS:
        raise UsageError(f"unknown energy method {prefer!r}; known: {', '.join(METHODS)}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    if prefer == "none":
        return EnergyMeter(sync)
    status = {s.method: s for s in detect_sources(device, gpus_loader, rapl_root)}
    order = [prefer] if prefer else ["nvml-counter", "nvml-power", "rapl",
                                     "codecarbon-estimate"]
    for method in order:
        s = status.get(method)
        if s is None or not s.available:
            continue
        try:
            return _open_meter(method, device, sync, rapl_root, monitor_factory)
        except Exception as exc:  # seen a moment ago, refused now: say so, never fall back
            raise UsageError(f"energy method {method!r} was detected but could not be opened: "
                             f"{exc}; use --no-energy to profile without energy") from exc
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


def energy_label(method: str, measured: bool) -> str:
    """What a number is: 'measured (nvml-counter)', 'estimated (codecarbon-estimate)', 'none'."""
    if method == "none":
        return "none"
    return f"{'measured' if measured else 'estimated'} ({method})"


def energy_per_inference(meter: EnergyMeter, run: Callable[[], None], images_per_call: int,
                         window_s: float = MIN_WINDOW_S, cooldown_s: float = 0.0,
                         sync: Callable[[], None] | None = None, calibrate_s: float = 0.1,
                         sleep: Callable[[float], None] | None = None,
                         clock: Callable[[], float] | None = None) -> dict:
    """Energy of one setting, per image. The protocol:

    1. cool-down: ``cooldown_s`` idle seconds (the previous setting's heat and the counter's
       last update settle; NVML's counter updates about every 100 ms);
    2. calibration (and warm-up): synchronised calls of ``run`` until ``calibrate_s`` has
       passed: seconds per call;
    3. one window (both ends synchronise): n = ceil(window_s / seconds per call) calls, and more
       until the host clock has passed ``window_s``, so the window holds >= ``window_s`` of
       back-to-back calls even where calls are queued asynchronously (CUDA).
    Energy per image = window energy / (calls x ``images_per_call``). ``sync`` waits for the
    device (None: nothing to wait for); ``sleep``/``clock`` are for tests.
    """
    sync = sync or (lambda: None)
    sleep, clock = sleep or time.sleep, clock or time.perf_counter
    if cooldown_s > 0:
        sleep(cooldown_s)
    sync()
    t0, calib = clock(), 0
    while calib == 0 or clock() - t0 < calibrate_s:
        run()
        sync()
        calib += 1
    per_call = (clock() - t0) / calib
    want = max(1, math.ceil(window_s / per_call)) if per_call > 0 else 1
    meter.begin_window("energy")
    calls, t_end = 0, clock() + window_s
    while calls < want or clock() < t_end:
        run()
        calls += 1
    w = meter.end_window("energy")
    images = calls * images_per_call
    return {"window_s": w.duration_s, "calls": calls, "images": images,
            "calibration_calls": calib, "s_per_call_calibrated": per_call,
            "cooldown_s": cooldown_s, "energy_j_window": w.energy_j,
            "energy_j_per_image": None if w.energy_j is None else w.energy_j / images,
            "method": w.method, "measured": w.measured, "label": energy_label(w.method,
                                                                               w.measured),
            "short_window": w.duration_s < MIN_WINDOW_S}


def _quiet_codecarbon() -> None:
    """codecarbon logs INFO/WARNING lines at construction, before its log_level applies."""
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
        _settle_amdsmi()
        from codecarbon import OfflineEmissionsTracker  # optional: the "energy" extra

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
