"""A latency target on a deployment, resolved once at the edge and passed down as a value.

``parse_goals`` reads ``--target-latency`` (``5ms``, ``0.67x``; ``cpu:20ms``, ``cuda:1:2ms`` or
``PROFILE.json:5ms`` name the device) and checks each target's deployment (``deploy_on``), before
any long work. ``locate`` then finds the profile that describes each one (``hwbench.profile
.locate``; a quick profile is measured when none matches and ``quick``). ``measuring_goal`` is
the same for a network measured here (``verify``, ``trim``). Below the edge nothing parses a
target, locates a profile or checks a runtime again: it reads the ``Goal``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hwbench.data import info
from hwbench.engine.runtimes.deployment import Deployment, deploy_on
from hwbench.errors import HwbenchError, UsageError
from hwbench.profile.locate import (
    TargetProfile,
    is_local,
    local_device,
    measuring_profile,
    resolve_profile,
)
from hwbench.profile.predictor import dense_ms
from hwbench.units import LatencyTarget


@dataclass(frozen=True)
class Goal:
    where: str  # the device the target is for, or the PROFILE.json that describes it
    on: Deployment  # checked; for a profile file, cpu until the profile says it is this machine
    target: LatencyTarget
    profile: TargetProfile | None = None  # None: not located yet, or no profile to compare with

    @property
    def percentile(self) -> str:
        return self.target.percentile

    @property
    def local(self) -> bool:
        """The target device is this machine: what is delivered can be measured here."""
        return self.profile is not None and self.profile.local

    def seconds(self) -> float:
        """The target in seconds on the profile (a relative one: of its dense reference)."""
        if self.target.ms is not None:
            return self.target.ms * 1e-3
        pct = self.percentile
        dense = dense_ms(self.profile.profile, pct)
        if dense is None:
            raise UsageError(f"{self.profile.path} has no dense {pct} reference for a relative "
                             "target")
        return self.target.ratio * dense * 1e-3


def parse_goals(texts: list[str], default_device: str, percentile: str = "p90",
                runtime: str | None = None, one_per_device: bool = True) -> list[Goal]:
    """``--target-latency`` values -> Goals (no profile yet). A target without a device is for
    ``default_device``; one target per device unless not ``one_per_device`` (``compare``: several
    targets on one). One-line errors, before any work."""
    goals, named = [], []
    for text in texts:
        dev, sep, value = str(text).rpartition(":")
        if sep and not dev:
            raise UsageError(f"--target-latency {text!r}: name a device before the colon, "
                             "e.g. cpu:20ms")
        named.append(dev or None)
        where = dev or default_device
        target = LatencyTarget.parse(value if sep else text, percentile)
        on = deploy_on("cpu" if where.endswith(".json") else where, runtime)
        goals.append(Goal(where, on, target))
    dup = sorted({str(d) for d in named if named.count(d) > 1})
    if dup and one_per_device:
        raise UsageError(f"--target-latency: more than one target for {', '.join(dup)}"
                         if dup != ["None"] else "--target-latency: more than one target "
                         "for the same device: prefix each with its device (cpu:20ms)")
    return goals


def locate(goals: list[Goal], arch: str, stem: str, input_size: int, quick: bool = True,
           say: Callable[[str], None] = lambda s: None,
           folder: str | Path = "profiles") -> list[Goal]:
    """Each goal with the profile of its device and runtime for this network; a profile file
    that describes this machine deploys on the device it describes."""
    out, found = [], {}
    for g in goals:
        if g.where not in found:  # several targets on one device: one profile
            found[g.where] = resolve_profile(g.where, arch, stem, input_size, folder=folder,
                                             quick=quick, say=say, runtime=g.on.runtime)
        tp = found[g.where]
        on = g.on if not tp.local or tp.device == g.on.device else g.on.on(tp.device)
        out.append(replace(g, on=on, profile=tp))
    return out


def on_disk(goal: Goal, arch: str, stem: str, input_size: int,
            folder: str | Path = "profiles") -> TargetProfile | None:
    """``goal``'s profile where one is on disk (nothing is measured), else None."""
    try:
        return locate([goal], arch, stem, input_size, quick=False, folder=folder)[0].profile
    except HwbenchError:
        return None


def measuring_goal(target: str | float, on: Deployment, arch: str, stem: str, input_size: int,
                   percentile: str = "p90", profile_path: str | None = None,
                   allow_foreign: bool = False, folder: str | Path = "profiles") -> Goal:
    """The goal of a network measured here on ``on``: the profile it is compared with (the file
    ``profile_path``, refused when it describes another device unless ``allow_foreign``; else
    the matching one in ``folder``, or none)."""
    prof, path = measuring_profile(on.torch_device, arch, stem, input_size, profile_path,
                                   allow_foreign, folder, runtime=on.runtime)
    tp = None if prof is None else TargetProfile(Path(path), prof,
                                                 local_device(prof["fingerprint"]))
    return Goal(on.device, on, LatencyTarget.parse(target, percentile), tp)


def trim_goal(run_dir: str | Path, target: str | float, on: Deployment, percentile: str = "p90",
              profile_path: str | None = None, folder: str | Path = "profiles") -> Goal:
    """The goal a trim of the run in ``run_dir`` lands on: this machine's profile of ``on`` for
    the run's network (a file, or the matching one in ``folder``). Trimming measures, so a
    profile of another machine is refused."""
    goal = LatencyTarget.parse(target, percentile)
    arch, stem, input_size = run_network(run_dir)
    tp = resolve_profile(profile_path or on.device, arch, stem, input_size, folder=folder,
                         quick=False, runtime=on.runtime)
    if not is_local(tp.profile["fingerprint"], on.device):
        raise UsageError(f"{tp.path} profiles {tp.profile['fingerprint']['name']}, not this "
                         f"machine's {on.device}: trimming measures, so run it on the target "
                         "device")
    return Goal(on.device, on, goal, tp)


def run_network(run_dir: str | Path) -> tuple[str, str, int]:
    """(arch, stem, input size) of the network a training run trained (its config.json)."""
    run = Path(run_dir)
    if not (run / "checkpoint.pt").exists():
        raise UsageError(f"{run}: no checkpoint.pt (is it a training run directory?)")
    cfg = json.loads((run / "config.json").read_text())  # written at the start of every run
    meta = info(cfg["dataset"])
    return cfg["arch"], meta.stem, meta.input_size
