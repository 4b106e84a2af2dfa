"""Latency targets for training: which ``t_d`` meets the target on the target device's profile,
the run's name, and the targets the latency budget trains against (measuring whether the trained
network meets them is ``hwbench.deploy.pipeline``'s, through ``hwbench.deploy.verify``).

The device that trains is often not the one that deploys, so the target device is either this
machine (``cpu``, ``cuda``, ``cuda:N``: the matching profile in ``profiles/``, or a quick profile
measured now when none matches) or a profile file from any machine (``hwbench.profile.locate``).
Targets are met on a runtime (``--runtime``: ``hwbench.engine.runtimes``): only that runtime's
profiles describe it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from hwbench.data import info
from hwbench.engine.runtimes import check_runtime
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.errors import HwbenchError, UsageError
from hwbench.pick.t_d import pick_t_d
from hwbench.profile.locate import TargetProfile, resolve_profile, resolve_target
from hwbench.profile.predictor import table_step
from hwbench.train.budget import DeviceTarget
from hwbench.train.config import run_dir
from hwbench.units import LatencyTarget, parse_target


def choose_t_d(tp: TargetProfile, target_s: float, percentile: str = "p90") -> tuple[float, dict]:
    """``t_d`` for the target on ``tp``'s device, and the decision as recorded in the run."""
    pick = pick_t_d(tp.profile, target_s, percentile)
    fp = tp.profile["fingerprint"]
    return pick.t_d, {"profile": str(tp.path), "device": fp["name"],
                      "runtime": fp.get("runtime", DEFAULT_RUNTIME),
                      "quick_profile": tp.measured_now, "local": tp.local, **pick.to_dict()}


def target_run_name(cfg, target: float | str) -> str:
    """A target run's default name: by its target, not by the t_d it will pick, so that
    ``--resume`` finds the run before anything is picked."""
    text = f"{target * 1e3:g}ms" if not isinstance(target, str) else target
    return (f"{cfg.dataset}_{cfg.arch}_{cfg.method}_target{re.sub(r'[^A-Za-z0-9.]+', '', text)}"
            f"_s{cfg.seed}")


def parse_device_targets(texts: list[str], default_device: str | None = None
                         ) -> list[tuple[str | None, str]]:
    """``--target-latency`` values -> (device, target) pairs. ``5ms`` or ``0.67x`` alone targets
    ``default_device`` (``--target-device``; None: the training device); ``cpu:20ms``,
    ``cuda:1:2ms`` or ``PROFILE.json:5ms`` name the device. One target per device."""
    pairs: list[tuple[str | None, str]] = []
    for text in texts:
        dev, sep, value = str(text).rpartition(":")
        if not sep:
            dev, value = default_device, text
        elif not dev:
            raise UsageError(f"--target-latency {text!r}: name a device before the colon, "
                             "e.g. cpu:20ms")
        parse_target(value)  # a clear error now, before any profile is read
        pairs.append((dev or None, value))
    devices = [d for d, _ in pairs]
    dup = sorted({str(d) for d in devices if devices.count(d) > 1})
    if dup:
        raise UsageError(f"--target-latency: more than one target for {', '.join(dup)}"
                         if dup != ["None"] else "--target-latency: more than one target "
                         "for the same device: prefix each with its device (cpu:20ms)")
    return pairs


def check_target_runtime(targets: list[tuple[str | None, object]], runtime: str,
                         default_device: str = "cpu") -> str:
    """A one-line UsageError, before any work, when ``runtime`` is unknown, its extra missing,
    or a target device (not a profile file: its own runtime is checked when it is read) is one
    the runtime does not run on."""
    for where, _ in targets or [(None, None)]:
        where = where or default_device
        check_runtime(runtime, "cpu" if where.endswith(".json") else where)
    return runtime


def resolve_targets(cfg, targets: list[tuple[str | None, float | str]], percentile: str,
                    quick: bool = True, say: Callable[[str], None] = lambda s: None,
                    runtime: str = DEFAULT_RUNTIME) -> list:
    """Each (device, target) pair's profile (of ``runtime``) and ``LatencyTarget``, and ``cfg``
    completed for them: the run's name, ``t_d`` (the smallest pick, or the resumed run's) and,
    with ``--budget latency``, the latency targets the loss reads. [(TargetProfile,
    LatencyTarget, device)]"""
    check_target_runtime(targets, runtime, cfg.device)
    meta = info(cfg.dataset)
    if cfg.out is None and cfg.run_name is None:
        cfg.run_name = target_run_name(cfg, targets[0][1]) + \
            ("" if len(targets) == 1 else f"_{len(targets)}dev") + \
            ("" if cfg.budget == "flops" else "_latbudget")
    old_cfg = run_dir(cfg) / "config.json"
    resolved = []
    for where, text in targets:
        where = where or cfg.device
        tp = resolve_profile(where, cfg.arch, meta.stem, meta.input_size, quick=quick, say=say,
                             runtime=runtime)
        resolved.append((tp, LatencyTarget.parse(text, percentile), where))
    if cfg.resume and old_cfg.exists():
        old = json.loads(old_cfg.read_text())
        cfg.t_d, cfg.decision = old["t_d"], old.get("decision", {})
        cfg.latency_targets = tuple(old.get("latency_targets", ()))
        say(f"resuming with t_d {cfg.t_d:g} as picked at the start of the run")
        return resolved
    decisions = []
    for tp, goal, _ in resolved:
        target_s = _seconds(goal, tp, percentile)
        t_d, decision = choose_t_d(tp, target_s, percentile)
        decisions.append({**decision, "target": goal.to_dict()})
        say(f"t_d {t_d:g} picked for {goal.text} = {target_s * 1e3:.3g} ms ({percentile}) on "
            f"{decision['device']} from {tp.path}: predicted {decision['predicted_ms']:.3f} ms")
    binding = min(decisions, key=lambda d: d["t_d"])
    cfg.t_d = binding["t_d"]
    cfg.decision = {**binding, "budget": cfg.budget}
    if len(decisions) > 1:
        cfg.decision["targets"] = decisions
        say(f"t_d {cfg.t_d:g}: the smallest of the picks, so every target is met")
    if cfg.budget == "latency":
        cfg.latency_targets = tuple(
            DeviceTarget(where, str(tp.path), _seconds(goal, tp, percentile) * 1e3,
                         percentile).to_dict() for tp, goal, where in resolved)
        say("training against the predicted latency on " + ", ".join(
            f"{tp.profile['fingerprint']['name']} ({goal.text} {percentile})"
            for tp, goal, _ in resolved) + f"; the bound keeps t_d {cfg.t_d:g}")
    return resolved


def _seconds(goal, tp: TargetProfile, percentile: str) -> float:
    """The target in seconds on ``tp``'s profile (exact for an absolute one: no text round
    trip)."""
    return goal.ms * 1e-3 if goal.ms is not None else resolve_target(goal.text, tp, percentile)


DEFAULT_STEP = 16  # oneDNN's channel block on AVX-512 CPUs (docs/engine.md)


def auto_gate(gate: str, arch: str, dataset: str, targets: list[tuple[str | None, str]],
              device: str, say: Callable[[str], None] = lambda s: None,
              runtime: str = DEFAULT_RUNTIME) -> str:
    """``--gate width`` (no G): G read from the first target device's profile of ``runtime``
    (the step of its latency table, ``profile.predictor.table_step``) where one is on disk, else 16;
    said in one line. Any other value is returned as given."""
    if gate not in ("width", "width:auto"):
        return gate

    meta = info(dataset)
    step, why = DEFAULT_STEP, "no target device profile on disk"
    for where, _ in targets[:1]:
        try:
            tp = resolve_profile(where or device, arch, meta.stem, meta.input_size, quick=False,
                                 runtime=runtime)
        except HwbenchError:
            break
        found = table_step(tp.profile)
        if found is None:
            why = f"{tp.path}'s latency table shows no channel step"
        else:
            step, share = found
            why = (f"the step of {tp.path}'s latency table: a staircase of {step} channels "
                   f"leaves {share:.0%} of a straight line's residual")
    say(f"--gate width: G = {step} ({why})")
    return f"width:{step}"

