"""The obvious alternative to a gated network: a thinner dense one at the same measured latency.

A thin network (``--width-mult m``) runs every block's intermediate width x m, rounded to a
multiple of 16 channels, with no gate; block outputs keep their width, as the gated networks'
do. Its latency is predicted from the device profile's latency table (``Predictor.thin_ms``:
each block's plain entry at its width is the time of exactly such a block), so ``pick`` names
the width multiplier beside t_d, and on this machine the prior is checked by measuring (the
randomly initialised thin networks against the dense one on synthetic inputs: a dense
network's latency does not depend on its weights). ``hwbench train --baseline thin`` then trains
it (VICReg, ``--method dense``) in the run's folder (``RUN/baseline-thin``) for the same time
budget, measures the trained network on real test images against the dense network alongside
(the verify protocol) and puts the row in ``final.json``'s ``baseline``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hwbench.data import info
from hwbench.deploy.verdict import BAND, verdict
from hwbench.deploy.verify import decide, timing_inputs
from hwbench.engine import synthetic_inputs
from hwbench.engine.runtimes import runnable
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.io import atomic_write_json
from hwbench.measure.device import torch_threads
from hwbench.measure.protocol import Protocol, measure
from hwbench.measure.stats import quantile_of
from hwbench.nets import create_net, width_mult_widths
from hwbench.pick.goal import Goal
from hwbench.pick.t_d import Unattainable, envelope
from hwbench.profile.locate import profile_threads
from hwbench.profile.predictor import Predictor, dense_ms
from hwbench.train.config import budget_defaults, run_dir
from hwbench.train.evaluation import load_run
from hwbench.train.loop import train
from hwbench.units import LatencyTarget

GRID = 64  # width multipliers are tried on a 1/64 grid
STEP = 16  # thin widths are multiples of 16 channels (the engine's and oneDNN's channel block)
MIN_MULT = 8  # 8/64: the thinnest multiplier tried
PRIOR_PROBES = 6  # at most this many thin networks are measured to check the table's choice
AIM = 0.95  # the score (measured / target) a prior aims at: the band's middle


@dataclass(frozen=True)
class ThinPick:
    """A width multiplier, its per-block widths and their predicted latency for a target."""
    width_mult: float
    widths: tuple[int, ...]
    predicted_ms: float
    target_ms: float
    percentile: str

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths),
                "source": "predicted (profile latency table)"}


def thin_candidates(arch: str, step: int = STEP) -> list[tuple[float, tuple[int, ...]]]:
    """(m, widths) for every distinct width vector of m = k/64, k = 8..64, thinnest first; m is
    the smallest k/64 giving the widths (any m that rounds to them builds the same network)."""
    seen: dict[tuple[int, ...], float] = {}
    for k in range(MIN_MULT, GRID + 1):
        seen.setdefault(tuple(width_mult_widths(arch, k / GRID, step)), k / GRID)
    return sorted(((m, w) for w, m in seen.items()), key=lambda c: (sum(c[1]), c[0]))


def pick_width_mult(profile: dict, target_s: float, percentile: str = "p90",
                    step: int = STEP) -> ThinPick:
    """The widest thin network whose predicted latency at ``percentile``, as a monotone
    envelope over the candidates (``pick.t_d.envelope``), meets ``target_s``: the rule
    ``pick_t_d`` applies to t_d. Raises ``Unattainable`` when even the thinnest tried does
    not."""
    pred = Predictor(profile)
    target_ms = target_s * 1e3
    pairs = thin_candidates(pred.arch, step)
    env = envelope([(i, pred.thin_ms(list(w), percentile)) for i, (_, w) in enumerate(pairs)])
    cands = [(m, w, ms) for (m, w), (_, ms) in zip(pairs, env)]
    meets = [c for c in cands if c[2] <= target_ms]
    if not meets:
        m, _, ms = cands[0]
        raise Unattainable(f"target {target_ms:g} ms ({percentile}): the thinnest network tried "
                           f"(width x {m:g}) is predicted at {ms:.3f} ms")
    m, w, ms = meets[-1]
    return ThinPick(m, tuple(w), ms, target_ms, percentile)


def _thin_net(arch: str, stem: str, widths) -> torch.nn.Module:
    return create_net(arch, stem=stem, widths=list(widths)).eval()


def time_thin(net, full, inputs, dev: torch.device, goal: LatencyTarget, max_time_s: float,
              runtime: str = DEFAULT_RUNTIME, threads: int | None = None, min_runs: int = 64,
              ci_target: float = 0.02):
    """``net`` (a thin network) and ``full`` (the dense network), dense mode, built for
    ``runtime``, timed interleaved on ``inputs`` by the verify protocol; the measurement keys
    are ``dynamic`` (the network judged) and ``dense`` (``verify.decide``'s names)."""
    inputs = inputs.to(dev)
    example = inputs.batches[0]
    fns = {name: runnable(n, "dense", None, runtime=runtime, example=example, threads=threads,
                          device=dev) for name, n in (("dynamic", net), ("dense", full))}
    protocol = Protocol(quantile=quantile_of(goal.percentile), ci_target=ci_target,
                        min_runs=min_runs, max_time_s=max_time_s)
    return measure(fns, inputs, protocol, dev, where="thin baseline")


def land_prior(pick: ThinPick, profile: dict, goal: LatencyTarget, dev: torch.device,
               runtime: str = DEFAULT_RUNTIME, max_time_s: float = 4.0,
               say: Callable[[str], None] = lambda s: None) -> tuple[ThinPick, list[dict]]:
    """``land`` over the thin candidates, from ``pick``: the pick it lands on and every probe."""
    cands = thin_candidates(Predictor(profile).arch)
    start = next(j for j, (_, w) in enumerate(cands) if w == pick.widths)
    best, probes = land(cands, start, pick.target_ms, profile, goal, dev, runtime, max_time_s,
                        say=say, what="thin prior: width x")
    m, widths = cands[best]
    return dataclasses.replace(pick, width_mult=m, widths=tuple(widths)), probes


def land(cands: list[tuple[float, tuple[int, ...]]], start: int, target_ms: float,
         profile: dict, goal: LatencyTarget, dev: torch.device, runtime: str = DEFAULT_RUNTIME,
         max_time_s: float = 4.0, say: Callable[[str], None] = lambda s: None,
         what: str = "widths") -> tuple[int, list[dict]]:
    """Check the table's choice among static networks ``cands`` ((key, per-block widths)) on
    this machine (``profile``'s device): measure randomly initialised networks of those widths
    against the dense one (synthetic inputs: a prior; a dense network's latency does not depend
    on its weights), from ``cands[start]``. After each probe the table's scores (predicted /
    ``target_ms``) are rescaled by what it measured (measured / predicted score), and the next
    probe is the candidate whose rescaled score is nearest ``AIM`` at or under the target; it
    stops inside the band, on a candidate already probed, or after ``PRIOR_PROBES``. Returns
    the index of the probe nearest ``AIM`` at or under the target (the fastest probed when none
    is) and every probe."""
    pred, stem = Predictor(profile), profile["fingerprint"]["stem"]
    table = [pred.thin_ms(list(w), goal.percentile) / target_ms for _, w in cands]
    full = create_net(pred.arch, stem=stem).eval()
    inputs = synthetic_inputs(16, pred.input_size, seed=3)
    probes: list[dict] = []
    i = start
    while len(probes) < PRIOR_PROBES and i not in {p["index"] for p in probes}:
        key, widths = cands[i]
        meas = time_thin(_thin_net(pred.arch, stem, widths), full, inputs, dev, goal,
                         max_time_s, runtime, min_runs=32, ci_target=0.03)
        score = goal.score(meas.at("dynamic"), meas.at("dense"))
        probes.append({"key": key, "widths": list(widths), "score": score, "index": i,
                       "predicted_score": table[i],
                       "ratio": meas.ratio("dynamic", "dense")["value"],
                       "valid": meas["dynamic"]["valid"] and meas["dense"]["valid"]})
        say(f"{what} {key:g} measures {score:.3f} x the target (synthetic inputs)")
        if BAND[0] <= score <= BAND[1]:
            break
        i = _next_probe(table, score / table[i])
    under = [p for p in probes if p["score"] <= BAND[1]]
    best = min(under, key=lambda p: abs(p["score"] - AIM)) if under else \
        min(probes, key=lambda p: p["score"])
    return best["index"], probes


def _next_probe(table: list[float], factor: float) -> int:
    """The candidate whose table score x ``factor`` is nearest ``AIM`` at or under the target
    (the fastest when none is)."""
    scaled = [(abs(factor * t - AIM), j) for j, t in enumerate(table) if factor * t <= BAND[1]]
    return min(scaled)[1] if scaled else min(range(len(table)), key=table.__getitem__)


def measure_trained(run: Path, goal: LatencyTarget, dev: torch.device,
                    runtime: str = DEFAULT_RUNTIME, max_time_s: float = 10.0,
                    threads: int | None = None) -> dict:
    """The trained thin network of ``run`` against the dense network, on real test images of
    its data set (the verify protocol), decided in the band: a verify-like record."""
    net, cfg, _ = load_run(run / "checkpoint.pt")
    full = create_net(cfg["arch"], stem=net.stem).eval()
    size = info(cfg["dataset"]).input_size
    m = time_thin(net.eval(), full, timing_inputs(cfg, size), dev, goal, max_time_s, runtime,
                  threads)
    macs = net.geometry((size, size)).dense_macs() / full.geometry((size, size)).dense_macs()
    return {**decide(m, goal, None), "measured": m["dynamic"], "dense": m["dense"],
            "inputs": m.inputs, "protocol": m.protocol, "warnings": m.warnings,
            "macs_ratio": macs, "runtime": runtime}


def thin_baseline(cfg, goal: Goal, verify_max_time_s: float = 10.0,
                  say: Callable[[str], None] = lambda s: None) -> dict:
    """Train and land the thin baseline of the run ``cfg`` (its data set, seed and time budget
    or epochs) at ``goal`` (``hwbench.pick.goal``: a target on this machine's device and runtime,
    with its profile): pick m from the profile, check the prior by measuring, train it in
    ``RUN/baseline-thin``, measure it trained on real images. The record ``final.json``'s
    ``baseline`` holds (also ``baseline-thin/baseline.json``)."""
    tp, dev, runtime, target_s = goal.profile, goal.on.torch_device, goal.on.runtime, \
        goal.seconds()
    target = goal.target
    pick = pick_width_mult(tp.profile, target_s, target.percentile)
    say(f"thin baseline: width x {pick.width_mult:g} predicted {pick.predicted_ms:.3f} ms "
        f"({target.percentile}) for {target.text} from {tp.path}")
    with torch_threads(profile_threads(tp.profile)):
        pick, probes = land_prior(pick, tp.profile, target, dev, runtime, say=say)
    out = run_dir(cfg) / "baseline-thin"
    # a dense network: no gates, so no gate budget (the paper's MACs terms, unused by VICReg)
    thin_cfg = dataclasses.replace(cfg, method="dense", width_mult=pick.width_mult, widths=None,
                                   out=str(out), run_name=None, eval_initial=False,
                                   finetune_steps=0, latency_targets=(), decision={},
                                   budget="flops", sparsity_on="sampled",
                                   **budget_defaults("flops"))
    say(f"training the thin baseline (width x {pick.width_mult:g}, VICReg, the run's budget) ...")
    s = train(thin_cfg, say=lambda line: say(f"[thin] {line}"))
    with torch_threads(profile_threads(tp.profile)):
        ver = measure_trained(Path(s["dir"]), target, dev, runtime, verify_max_time_s,
                              torch.get_num_threads())
    atomic_write_json(out / "verify.json", ver)
    record = baseline_record(pick, probes, ver, s, tp)
    atomic_write_json(out / "baseline.json", record)
    return record


def baseline_record(pick: ThinPick, probes: list[dict], ver: dict, summary: dict, tp) -> dict:
    """``final.json``'s ``baseline`` for the thin network: the pick, the measurement it was
    decided on and its kNN top-1 (dense stream of its own run: it is a dense network)."""
    pct = ver["target"]["percentile"]
    dense_ref = dense_ms(tp.profile, pct)
    v = verdict(ver["score"], ver["valid"], tuple(ver["band"]))
    return {"method": "thin", "width_mult": pick.width_mult, "widths": list(pick.widths),
            "predicted_ms": pick.predicted_ms,
            "predicted_ratio": pick.predicted_ms / dense_ref if dense_ref else None,
            "prior": probes, "verdict": v.name, "message": v.message,
            "measured": {"ratio": ver["ratio_to_dense"]["value"],
                         "ms": ver["measured"][f"{pct}_ms"], "valid": ver["valid"],
                         "runtime": ver["runtime"]},
            "macs_ratio": ver["macs_ratio"],
            "knn_top1": (summary.get("final") or {}).get("knn_top1_dense"),
            "run": summary["dir"]}
