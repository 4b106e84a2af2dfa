"""Latency targets for training: which profile describes the target device, which ``t_d`` meets
the target there, and whether the trained network really does (``hwbench verify``).

The device that trains is often not the one that deploys, so the target device is either this
machine (``cpu``, ``cuda``, ``cuda:N``: the matching profile in ``profiles/``, or a quick profile
measured now when none matches) or a profile file from any machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint, parse_device, same_machine
from hwbench.profiles import find_profile, load_profile, pick_t_d, profile_filename, save_profile

# A quick profile: the latency table and the sweep, fewer timing rounds, no validation phase.
QUICK = dict(validation=0, calibration=4, table_rounds=7, max_time_s=15.0, energy=False)


@dataclass
class TargetProfile:
    path: Path
    profile: dict
    local: bool  # the target device is this machine (so the result can be measured here)
    measured_now: bool = False  # a quick profile was run for this request


def _threads(dev: torch.device) -> int | None:
    return torch.get_num_threads() if dev.type == "cpu" else None


def _cores(dev: torch.device) -> int | None:
    return os.cpu_count() if dev.type == "cpu" else None


def resolve_profile(target: str, arch: str, stem: str, input_size: int,
                    folder: str | Path = "profiles", quick: bool = True,
                    say: Callable[[str], None] = lambda s: None,
                    profile_fn=None) -> TargetProfile:
    """The profile for ``target`` (``cpu``/``cuda[:N]`` or a ``.json`` file), checked against the
    network that will be trained. ``quick``: profile this machine now when nothing matches."""
    if target.endswith(".json"):
        prof = load_profile(target)
        tp = TargetProfile(Path(target), prof, local=False)
    else:
        dev = parse_device(target)
        name = fingerprint(dev)["name"]
        found = find_profile(name, arch, stem, input_size, folder=folder,
                             threads=_threads(dev), cpu_count=_cores(dev))
        if found is not None:
            tp = TargetProfile(found[0], found[1], local=True)
        elif not quick:
            raise UsageError(f"no profile in {folder}/ for {name} / {arch} / {stem} / "
                             f"{input_size}px / batch 1: run `hwbench profile --device {target} "
                             f"--arch {arch} --stem {stem} --input-size {input_size}` first, or "
                             "pass --target-device PROFILE.json")
        else:
            say(f"no profile in {folder}/ matches {name} / {arch} / {stem} / {input_size}px / "
                f"batch 1: running a quick profile of this {dev.type} first (~1-3 min; "
                "`hwbench profile` makes a full one)")
            prof = (profile_fn or _quick_profile)(target, arch, stem, input_size)
            path = save_profile(prof, Path(folder) / profile_filename(prof["fingerprint"]))
            say(f"quick profile written to {path}")
            tp = TargetProfile(path, prof, local=True, measured_now=True)
    f = tp.profile["fingerprint"]
    if (f["arch"], f["stem"], int(f["input_size"])) != (arch, stem, int(input_size)):
        raise UsageError(f"{tp.path} profiles {f['arch']}/{f['stem']}/{f['input_size']}px; "
                         f"this run trains {arch}/{stem}/{input_size}px")
    if tp.local is False:
        # a file may still describe this machine: then the result can be verified here
        try:
            tp.local = same_machine(fingerprint(parse_device(f.get("device", f["type"]))), f)
        except UsageError:
            tp.local = False
    return tp


def _quick_profile(device: str, arch: str, stem: str, input_size: int) -> dict:
    from hwbench.profiler import ProfileConfig, run_profile

    prof = run_profile(ProfileConfig(device=device, arch=arch, stem=stem,
                                     input_size=input_size, **QUICK))
    prof["quick"] = True
    return prof


def choose_t_d(tp: TargetProfile, target_s: float, percentile: str = "p90") -> tuple[float, dict]:
    """``t_d`` for the target on ``tp``'s device, and the decision as recorded in the run."""
    pick = pick_t_d(tp.profile, target_s, percentile)
    return pick.t_d, {"profile": str(tp.path), "device": tp.profile["fingerprint"]["name"],
                      "quick_profile": tp.measured_now, "local": tp.local, **pick.to_dict()}


def resolve_target(target: float | str, tp: TargetProfile, percentile: str = "p90") -> float:
    """Seconds for ``target``: seconds already, a duration ('5ms') or a fraction of the profiled
    dense latency at ``percentile`` ('0.65x')."""
    from hwbench.units import parse_target

    if not isinstance(target, str):
        return float(target)
    seconds, factor = parse_target(target)
    if seconds is not None:
        return seconds
    dense = tp.profile.get("references", {}).get("dense", {}).get(f"{percentile}_ms")
    if dense is None:
        raise UsageError(f"{tp.path} has no dense {percentile} reference for a relative target")
    return factor * dense * 1e-3


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
    from hwbench.units import parse_target

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


def train_to_target(cfg, target: float | str | None = None, target_device: str | None = None,
                    percentile: str = "p90", say: Callable[[str], None] = lambda s: None,
                    progress=None, verify_max_time_s: float = 10.0, quick: bool = True,
                    energy_factory=None,
                    targets: list[tuple[str | None, float | str]] | None = None,
                    trim: bool | None = None, trim_options: dict | None = None) -> dict:
    """The whole ``hwbench train``: pick ``t_d`` for each latency target (seconds, '5ms' or
    '0.65x' of the dense latency) on its device's profile, co-train, then measure the learned
    network on every target device that is this machine (``verify.json`` in the run directory;
    ``summary['verify']``).

    ``targets``: (device, target) pairs, several devices at once; or ``target`` on
    ``target_device``. With the paper's MACs budget (``cfg.budget == 'flops'``) ``t_d`` is the
    smallest pick, so every target is met by the prior; with ``cfg.budget == 'latency'`` the
    targets enter the loss (``hwbench.budget``) and ``t_d`` sets the bound. A resumed run keeps
    the ``t_d`` and decision it started with."""
    import json

    from hwbench.data import info
    from hwbench.io import atomic_write_json
    from hwbench.train import Dist, run_dir, train, validate

    if targets is None:
        targets = [(target_device, target)] if target is not None else []
    if cfg.budget == "latency" and not targets:
        raise UsageError("--budget latency needs --target-latency (the latency to train for)")
    validate(cfg)
    dist = Dist.from_env()
    resolved = []  # (TargetProfile, seconds, where)
    if targets:
        meta = info(cfg.dataset)
        if cfg.out is None and cfg.run_name is None:
            cfg.run_name = target_run_name(cfg, targets[0][1]) + \
                ("" if len(targets) == 1 else f"_{len(targets)}dev") + \
                ("" if cfg.budget == "flops" else "_latbudget")
        old_cfg = run_dir(cfg) / "config.json"
        for where, text in targets:
            where = where or cfg.device
            # under torchrun every process must read the same profile: no per-process quick one
            tp = resolve_profile(where, cfg.arch, meta.stem, meta.input_size,
                                 quick=quick and dist.world == 1, say=say)
            resolved.append((tp, resolve_target(text, tp, percentile), where))
        if cfg.resume and old_cfg.exists():
            old = json.loads(old_cfg.read_text())
            cfg.t_d, cfg.decision = old["t_d"], old.get("decision", {})
            cfg.latency_targets = tuple(old.get("latency_targets", ()))
            say(f"resuming with t_d {cfg.t_d:g} as picked at the start of the run")
        else:
            decisions = []
            for tp, target_s, _ in resolved:
                t_d, decision = choose_t_d(tp, target_s, percentile)
                decisions.append(decision)
                say(f"t_d {t_d:g} picked for {target_s * 1e3:g} ms ({percentile}) on "
                    f"{decision['device']} from {tp.path}: predicted "
                    f"{decision['predicted_ms']:.3f} ms")
            binding = min(decisions, key=lambda d: d["t_d"])
            cfg.t_d = binding["t_d"]
            cfg.decision = {**binding, "budget": cfg.budget}
            if len(decisions) > 1:
                cfg.decision["targets"] = decisions
                say(f"t_d {cfg.t_d:g}: the smallest of the picks, so every target is met")
            if cfg.budget == "latency":
                from hwbench.budget import DeviceTarget
                cfg.latency_targets = tuple(
                    DeviceTarget(where, str(tp.path), target_s * 1e3, percentile).to_dict()
                    for tp, target_s, where in resolved)
                say("training against the predicted latency on " + ", ".join(
                    f"{tp.profile['fingerprint']['name']} ({target_s * 1e3:g} ms {percentile})"
                    for tp, target_s, _ in resolved) + f"; the bound keeps t_d {cfg.t_d:g}")
    summary = train(cfg, progress, energy_factory=energy_factory, say=say)
    if not dist.main or not resolved or "pattern" not in summary:
        return summary
    from hwbench.verify import run_verify

    results = []
    for tp, target_s, where in resolved:
        if not tp.local:
            say(f"target device {tp.profile['fingerprint']['name']} is not this machine: run "
                f"`hwbench verify --pattern {summary['pattern']} --checkpoint "
                f"{summary['dir']}/checkpoint.pt --target-latency {target_s * 1e3:g}ms` there")
            continue
        device = where if not where.endswith(".json") else tp.profile["fingerprint"]["type"]
        say(f"verifying the learned network on {tp.profile['fingerprint']['name']} ...")
        res = run_verify(summary["pattern"], target_s, device,
                         str(Path(summary["dir"]) / "checkpoint.pt"), percentile, str(tp.path),
                         verify_max_time_s)
        # the first verified target keeps the single-target file name; others add their device
        tag = Path(where).stem if where.endswith(".json") else where
        name = "verify.json" if not results else \
            f"verify-{re.sub(r'[^a-z0-9]+', '-', tag.lower()).strip('-')}.json"
        atomic_write_json(Path(summary["dir"]) / name, res)
        brief = {k: v for k, v in res.items() if k != "measured"}
        brief["measured"] = {k: v for k, v in res["measured"].items() if k != "samples_ms"}
        results.append(brief)
    if results:
        summary["verify"] = results[0]
        if len(resolved) > 1:
            summary["verify_all"] = results
        atomic_write_json(Path(summary["dir"]) / "summary.json", summary)
    if trim is None:
        trim = cfg.budget == "latency"
    local = [(tp, target_s, where) for tp, target_s, where in resolved if tp.local]
    if trim and local:
        from hwbench.trim import trim_run

        tp, target_s, where = local[0]
        if len(local) > 1:
            say(f"trimming to the first target on this machine ({where}); the others keep the "
                "trained network")
        device = where if not where.endswith(".json") else tp.profile["fingerprint"]["type"]
        say(f"trimming the learned network to {target_s * 1e3:.3f} ms on "
            f"{tp.profile['fingerprint']['name']} ...")
        summary["trim"] = trim_run(summary["dir"], target_s, device, str(tp.path), percentile,
                                   say=say, **(trim_options or {}))
        atomic_write_json(Path(summary["dir"]) / "summary.json", summary)
    elif trim and resolved:
        say("no target device is this machine: nothing to trim here (run `hwbench trim RUN_DIR "
            "--target-latency T` on the target device)")
    return summary
