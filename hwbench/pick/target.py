"""Latency targets for training: which ``t_d`` meets the target on the target device's profile,
the run's name, and the targets the latency budget trains against (measuring whether the trained
network meets them is ``hwbench.deploy.pipeline``'s, through ``hwbench.deploy.verify``).

The targets arrive resolved (``hwbench.pick.goal``: parsed, their deployment checked, their
profile located at the edge); this module only reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.nets.gate import GateSpec, step_from_profile
from hwbench.pick.goal import Goal
from hwbench.pick.t_d import pick_t_d
from hwbench.profile.locate import TargetProfile
from hwbench.profile.predictor import table_step
from hwbench.train.budget import DeviceTarget
from hwbench.train.config import run_dir


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


def pick_targets(cfg, goals: list[Goal], say: Callable[[str], None] = lambda s: None) -> None:
    """Complete ``cfg`` for its located ``goals`` (``hwbench.pick.goal``): the run's name,
    ``t_d`` (the smallest pick, or the resumed run's) and, with ``--budget latency``, the latency
    targets the loss reads."""
    if cfg.out is None and cfg.run_name is None:
        cfg.run_name = target_run_name(cfg, goals[0].target.text) + \
            ("" if len(goals) == 1 else f"_{len(goals)}dev") + \
            ("" if cfg.budget == "flops" else "_latbudget")
    old_cfg = run_dir(cfg) / "config.json"
    if cfg.resume and old_cfg.exists():
        old = json.loads(old_cfg.read_text())
        cfg.t_d, cfg.decision = old["t_d"], old.get("decision", {})
        cfg.latency_targets = tuple(old.get("latency_targets", ()))
        say(f"resuming with t_d {cfg.t_d:g} as picked at the start of the run")
        return
    decisions, seconds = [], [g.seconds() for g in goals]
    for g, target_s in zip(goals, seconds):
        t_d, decision = choose_t_d(g.profile, target_s, g.percentile)
        decisions.append({**decision, "target": g.target.to_dict()})
        say(f"t_d {t_d:g} picked for {g.target.text} = {target_s * 1e3:.3g} ms "
            f"({g.percentile}) on {decision['device']} from {g.profile.path}: predicted "
            f"{decision['predicted_ms']:.3f} ms")
    binding = min(decisions, key=lambda d: d["t_d"])
    cfg.t_d = binding["t_d"]
    cfg.decision = {**binding, "budget": cfg.budget}
    if len(decisions) > 1:
        cfg.decision["targets"] = decisions
        say(f"t_d {cfg.t_d:g}: the smallest of the picks, so every target is met")
    if cfg.budget == "latency":
        cfg.latency_targets = tuple(
            DeviceTarget(g.where, str(g.profile.path), s * 1e3, g.percentile).to_dict()
            for g, s in zip(goals, seconds))
        say("training against the predicted latency on " + ", ".join(
            f"{g.profile.profile['fingerprint']['name']} ({g.target.text} {g.percentile})"
            for g in goals) + f"; the bound keeps t_d {cfg.t_d:g}")


DEFAULT_STEP = 16  # oneDNN's channel block on AVX-512 CPUs (docs/engine.md)


def auto_gate(gate: str, tp: TargetProfile | None,
              say: Callable[[str], None] = lambda s: None) -> str:
    """``--gate width`` (no G): G read from ``tp``, the first target device's profile on disk
    (the step of its latency table, ``profile.predictor.table_step``), else 16; said in one
    line. Any other value is returned as given."""
    if not step_from_profile(gate):
        return gate
    step, why = DEFAULT_STEP, "no target device profile on disk"
    found = None if tp is None else table_step(tp.profile)
    if tp is not None and found is None:
        why = f"{tp.path}'s latency table shows no channel step"
    elif found is not None:
        step, share = found
        why = (f"the step of {tp.path}'s latency table: a staircase of {step} channels "
               f"leaves {share:.0%} of a straight line's residual")
    say(f"--gate width: G = {step} ({why})")
    return GateSpec.of(gate.partition(":")[0], step).text
