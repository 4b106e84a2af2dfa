"""Which profile describes this device: matching profiles to a device and the run's conditions.

A profile's latencies hold only for the device that measured them and the conditions it measured
under. A profile *matches* a request when

- the device is the same (:func:`same_machine`): type and name, and for CPUs the core count too
  (virtual machines report one generic name, 'Intel(R) Xeon(R) Processor', for very different
  hosts), for GPUs the UUID too (two boards of one model are not one device);
- the conditions are the same (:class:`Conditions`): arch, stem, input size, batch size, dtype,
  the engine's execution (eager, graphs, compile; a profile without the key is eager), the
  runtime (eager, onnxruntime, openvino; a profile without the key is eager) and, for a runtime
  other than eager, its version (a new release brings other kernels), and for CPUs the intra-op
  thread count.

Of the matching profiles in a folder the newest by its own ``created`` timestamp wins. A profile
file given by path may describe another machine (a *foreign* profile): training may pick ``t_d``
from it, but nothing measured here can verify it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hwbench.engine.graphs import DEFAULT_EXECUTION
from hwbench.engine.runtimes import runtime_record
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, is_graph
from hwbench.errors import HwbenchError, UsageError
from hwbench.io import atomic_write_json
from hwbench.measure.device import fingerprint, parse_device
from hwbench.measure.load import describe as describe_load
from hwbench.profile.build import ProfileConfig, run_profile
from hwbench.profile.predictor import load_profile, profile_filename, save_profile

# A quick profile: the latency table and the sweep, fewer timing rounds, no validation phase.
QUICK = dict(validation=0, calibration=4, table_rounds=7, max_time_s=15.0, energy=False)


@dataclass(frozen=True)
class Conditions:
    """What a profile must have been measured under to describe a run on a device."""
    arch: str
    stem: str
    input_size: int  # px, square images
    threads: int  # CPU intra-op threads; compared for CPU profiles only (GPU kernels ignore
    # them, and torchrun starts each process with 1 thread)
    dtype: str  # fp32, bf16 or fp16
    batch_size: int  # images per inference
    execution: str = DEFAULT_EXECUTION  # how the engine runs: hwbench.engine.graphs.EXECUTIONS
    runtime: str = DEFAULT_RUNTIME  # what runs the network: hwbench.engine.runtimes.RUNTIMES
    runtime_version: str | None = None  # the runtime's version (None: eager, not compared)

    @classmethod
    def now(cls, arch: str, stem: str, input_size: int, dtype: str = "fp32",
            batch_size: int = 1, execution: str = DEFAULT_EXECUTION, runtime: str = DEFAULT_RUNTIME
            ) -> Conditions:
        """These conditions at this process's current thread count (and the installed version
        of ``runtime``)."""
        version = None
        if is_graph(runtime):  # checked at the edge (``deploy_on``): its extra is installed
            version = runtime_record(runtime)["runtime_version"]
        return cls(arch, stem, int(input_size), torch.get_num_threads(), dtype, int(batch_size),
                   execution, runtime, version)

    def describe(self) -> str:
        on = "" if not is_graph(self.runtime) else f" / {self.runtime} {self.runtime_version}"
        return (f"{self.arch} / {self.stem} / {self.input_size}px / batch {self.batch_size} / "
                f"{self.dtype} / {self.threads} threads{on}")


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def device_mismatch(a: dict, b: dict) -> str | None:
    """Why fingerprints ``a`` and ``b`` are different devices, or None when they are the same."""
    if a.get("type") != b.get("type"):
        return f"a {a.get('type')} device, not {b.get('type')}"
    if a.get("name") != b.get("name"):
        return f"{a.get('name')!r}, not {b.get('name')!r}"
    if a.get("type") == "cpu" and _int(a.get("cpu_count")) != _int(b.get("cpu_count")):
        return f"{a.get('cpu_count')} cores, not {b.get('cpu_count')}"
    # a fingerprint from a torch that reports no UUID matches only another such fingerprint
    if a.get("type") == "cuda" and a.get("uuid") != b.get("uuid"):
        return f"GPU {a.get('uuid')}, not {b.get('uuid')}"
    return None


def same_machine(a: dict, b: dict) -> bool:
    """Whether two fingerprints describe the same device (see :func:`device_mismatch`)."""
    return device_mismatch(a, b) is None


def mismatch(fp: dict, device: dict, cond: Conditions) -> str | None:
    """Why a profile fingerprinted ``fp`` does not describe ``device`` (a fingerprint) under
    ``cond``, or None when it does."""
    why = device_mismatch(fp, device)
    if why:
        return why
    fields = [("arch", fp.get("arch"), cond.arch), ("stem", fp.get("stem"), cond.stem),
              ("input size", _int(fp.get("input_size")), cond.input_size),
              ("batch size", _int(fp.get("batch_size")), cond.batch_size),
              ("dtype", fp.get("dtype"), cond.dtype),
              ("execution", fp.get("execution", DEFAULT_EXECUTION), cond.execution),
              ("runtime", fp.get("runtime", DEFAULT_RUNTIME), cond.runtime)]
    if is_graph(cond.runtime):
        fields.append(("runtime version", fp.get("runtime_version"), cond.runtime_version))
    if fp.get("type") == "cpu":
        fields.append(("threads", _int(fp.get("threads")), cond.threads))
    for name, got, want in fields:
        if got != want:
            return f"{name} {got}, not {want}"
    return None


def _created(profile: dict) -> dt.datetime:
    """The profile's ``created`` time (ISO 8601; without a zone: UTC); missing or unreadable:
    the earliest time, so such a profile loses to any dated one."""
    try:
        t = dt.datetime.fromisoformat(str(profile["created"]))
    except (KeyError, ValueError):
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _version(path: Path) -> tuple[str, int]:  # x.json < x-v2.json < x-v10.json
    m = re.fullmatch(r"(.*)-v(\d+)", path.stem)
    return (m.group(1), int(m.group(2))) if m else (path.stem, 1)


def find_profile(device: dict, cond: Conditions, folder: str | Path = "profiles",
                 misses: list[tuple[Path, str]] | None = None) -> tuple[Path, dict] | None:
    """The newest (by ``created``; ties: the higher ``-vN`` file version, then the file name)
    readable profile in ``folder`` that describes ``device`` (a fingerprint) under ``cond``, one
    measured on an idle machine and not found stale before any other (``untrusted``), or None.
    Unreadable files are skipped. ``misses`` collects (path, why) of this device's
    profiles for other conditions."""
    found: list[tuple[tuple, Path, dict]] = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            prof = load_profile(path)
        except HwbenchError:
            continue
        fp = prof["fingerprint"]
        why = mismatch(fp, device, cond)
        if why is None:
            found.append(((not untrusted(prof), _created(prof), _version(path)[1], path.name),
                          path, prof))
        elif misses is not None and same_machine(fp, device):
            misses.append((path, why))
    if not found:
        return None
    _, path, prof = max(found, key=lambda f: f[0])
    return path, prof


def local_device(fp: dict) -> str | None:
    """The device of this machine that fingerprint ``fp`` describes ('cpu', 'cuda:1'), or None
    when it describes another machine."""
    if fp.get("type") == "cpu":
        return "cpu" if same_machine(fingerprint(torch.device("cpu")), fp) else None
    if fp.get("type") == "cuda" and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if same_machine(fingerprint(torch.device("cuda", i)), fp):
                return f"cuda:{i}"
    return None


def is_local(fp: dict, device: torch.device | str | None = None) -> bool:
    """Whether fingerprint ``fp`` describes ``device`` of this machine (None: any of its
    devices), so that what it predicts can be measured here."""
    if device is None:
        return local_device(fp) is not None
    return same_machine(fingerprint(torch.device(device)), fp)


def profile_threads(profile: dict | None) -> int | None:
    """The CPU intra-op thread count ``profile`` was measured at; None for GPU profiles (the
    host's thread count is left alone) and for no profile."""
    if profile is None:
        return None
    fp = profile["fingerprint"]
    return _int(fp.get("threads")) if fp.get("type") == "cpu" else None


@dataclass
class TargetProfile:
    path: Path
    profile: dict
    device: str | None  # this machine's device the profile describes; None: a foreign profile
    measured_now: bool = False  # a quick profile was run for this request

    @property
    def local(self) -> bool:
        """The target device is this machine (so the result can be measured here)."""
        return self.device is not None


def busy(profile: dict) -> bool:
    """Whether the profile was measured while the machine was busy (``measure.load``)."""
    return bool((profile.get("load") or {}).get("busy"))


def untrusted(profile: dict) -> str:
    """Why the profile's latencies may not be this machine's now: measured while it was busy,
    or found stale by a later measurement (``mark_stale``); '' when neither."""
    if profile.get("stale"):
        return f"stale: {profile['stale']['note']}"
    return describe_load(profile.get("load")) if busy(profile) else ""


def mark_stale(path: str | Path, dense_now_ms: float, percentile: str) -> dict:
    """Record in the quick profile at ``path`` (rewritten atomically) that its dense reference
    measured ``dense_now_ms`` now: ``find_profile`` then prefers any other, and the next run
    that asks for a quick profile measures a new one. Returns the record."""
    prof = load_profile(path)
    ref = prof["references"]["dense"][f"{percentile}_ms"]
    rec = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "dense_now_ms": dense_now_ms, "percentile": percentile, "dense_profiled_ms": ref,
           "note": f"the dense {percentile} measured {dense_now_ms:.3f} ms, "
                   f"{dense_now_ms / ref - 1:+.0%} from the profile's {ref:.3f} ms"}
    atomic_write_json(path, {**prof, "stale": rec})
    return rec


def resolve_profile(target: str, arch: str, stem: str, input_size: int,
                    folder: str | Path = "profiles", quick: bool = True,
                    say: Callable[[str], None] = lambda s: None,
                    profile_fn: Callable[[str, Conditions], dict] | None = None,
                    dtype: str = "fp32", batch_size: int = 1,
                    runtime: str = DEFAULT_RUNTIME) -> TargetProfile:
    """The profile for ``target`` (``cpu``/``cuda[:N]`` or a ``.json`` file), checked against the
    network that will be trained. ``quick``: profile this machine now when nothing matches.
    ``dtype``, ``batch_size`` and ``runtime``: the conditions the network is deployed and
    verified under (fp32, batch 1: what ``hwbench verify`` measures)."""
    if target.endswith(".json"):
        prof = load_profile(target)
        tp = TargetProfile(Path(target), prof, local_device(prof["fingerprint"]))
        f = prof["fingerprint"]
        if (f["arch"], f["stem"], int(f["input_size"])) != (arch, stem, int(input_size)):
            raise UsageError(f"{tp.path} profiles {f['arch']}/{f['stem']}/{f['input_size']}px; "
                             f"this run trains {arch}/{stem}/{input_size}px")
        check_profile_runtime(prof, runtime, str(tp.path))
        return tp
    dev = parse_device(target)
    here = fingerprint(dev)
    cond = Conditions.now(arch, stem, input_size, dtype, batch_size, runtime=runtime)
    misses: list[tuple[Path, str]] = []
    found = find_profile(here, cond, folder, misses)
    why = untrusted(found[1]) if found is not None else ""
    if found is not None and not (why and found[1].get("quick") and quick):
        if why:
            say(f"{found[0]}: {why}")
        return TargetProfile(found[0], found[1], target)
    wanted = f"{here['name']} / {cond.describe()}"
    near = f" ({misses[0][0].name} has {misses[0][1]})" if misses else ""
    if not quick:
        raise UsageError(f"no profile in {folder}/ for {wanted}{near}: run `hwbench profile "
                         f"--device {target} --arch {arch} --stem {stem} --input-size "
                         f"{input_size}` first, or pass --target-device PROFILE.json")
    say(f"{found[0]} is a quick profile {_untrusted_short(found[1])}: measuring it again"
        if found else f"no profile in {folder}/ matches {wanted}{near}: running a "
        f"quick profile of this {dev.type} first (~1-3 min; `hwbench profile` makes a full one)")
    prof = (profile_fn or quick_profile)(target, cond)
    path = save_profile(prof, Path(folder) / profile_filename(prof["fingerprint"]))
    say(f"quick profile written to {path}" + (f"; {describe_load(prof.get('load'))}"
                                              if busy(prof) else ""))
    return TargetProfile(path, prof, target, measured_now=True)


def _untrusted_short(profile: dict) -> str:
    return "found stale" if profile.get("stale") else "measured while the machine was busy"


def check_profile_runtime(profile: dict, runtime: str, where: str) -> None:
    """A one-line UsageError when ``profile`` was measured on another runtime than
    ``runtime``: its latencies are another program's."""
    got = profile["fingerprint"].get("runtime", DEFAULT_RUNTIME)
    if got != runtime:
        raise UsageError(f"{where} was measured on runtime {got}, not {runtime}: profile "
                         f"with --runtime {runtime}, or pass --runtime {got}")


def quick_profile(device: str, cond: Conditions) -> dict:
    """A quick profile (``QUICK``) of ``device`` under ``cond``, marked ``quick``."""
    prof = run_profile(ProfileConfig(device=device, arch=cond.arch, stem=cond.stem,
                                     input_size=cond.input_size, batch_size=cond.batch_size,
                                     dtype=cond.dtype, threads=cond.threads,
                                     runtime=cond.runtime, **QUICK))
    prof["quick"] = True
    return prof


def measuring_profile(dev: torch.device, arch: str, stem: str, input_size: int,
                      profile_path: str | None = None, allow_foreign: bool = False,
                      folder: str | Path = "profiles", runtime: str = DEFAULT_RUNTIME
                      ) -> tuple[dict | None, str | None]:
    """The profile a measurement on ``dev`` (fp32, batch 1, ``runtime``) is compared with, and
    its path: the file ``profile_path``, refused when it describes another device unless
    ``allow_foreign``, or another runtime; without a file the matching one in ``folder`` at the
    current thread count, or (None, None)."""
    if profile_path:
        prof = load_profile(profile_path)
        check_profile_runtime(prof, runtime, str(profile_path))
        why = device_mismatch(prof["fingerprint"], fingerprint(dev))
        if why and not allow_foreign:
            raise UsageError(f"{profile_path} is a foreign profile ({why}): its latencies cannot "
                             f"be verified on this {dev.type}; run on the profiled device, or "
                             "pass --allow-foreign-profile to compare anyway")
        return prof, str(profile_path)
    found = find_profile(fingerprint(dev), Conditions.now(arch, stem, input_size,
                                                          runtime=runtime), folder)
    return (found[1], str(found[0])) if found else (None, None)
