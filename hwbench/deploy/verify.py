"""``hwbench verify``: measure a learned gate pattern on the deployment device.

The network is the run's deployed checkpoint (or, without one, the pattern realised on an
untrained net), in ``dynamic`` mode at batch 1 on a runtime (``hwbench.engine.runtimes``: the
compact engine for ``eager``, else the graph ONNX Runtime or OpenVINO compiled), timed per
inference through the one measurement path (``measure``), interleaved with the dense reference,
until the decided percentile's 95% CI is within 2% (or the time runs out: then the measurement
is not valid and nothing is decided on it). A trained network is timed on real images: a fixed,
class-balanced sample of its data set's test split, cycled, with the engine's plan tuned on the
same images; a realised pattern on synthetic ones. Every result names its inputs.

Decisions: a relative target (``0.7x``) is decided on the ratio to the dense network measured
alongside, an absolute one in ms, by ``hwbench.deploy.verdict``: ``met`` means inside the band
(``[0.90, 1.00] x target``), ``verdict`` says MET, UNDERSHOT, MISSED or NO DECISION. The
profile compared with is one of the same runtime (another runtime's latencies are another
program's: refused with one line). When the dense reference
measured now differs from the profile's by more than 10%, the result says the profile is stale,
by how much, and what an absolute target means as a ratio, and acts on it (``act_on_stale``): a
quick profile is marked stale in its file, so the next run here measures a new one; a full one is
left as it is, with the command that measures a new one.
"""

from __future__ import annotations

import torch

from hwbench.data import sample_images
from hwbench.deploy.verdict import BAND, MET, NO_DECISION, UNDERSHOT, verdict
from hwbench.engine import realise, synthetic_inputs
from hwbench.engine.runtimes import runnable, runtime_record
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint, torch_threads
from hwbench.measure.protocol import Inputs, Measurement, Protocol, measure
from hwbench.measure.stats import quantile_of, time_needed
from hwbench.pattern.gate_pattern import load_pattern
from hwbench.pattern.macs import pattern_report
from hwbench.pick.goal import Goal
from hwbench.pick.t_d import Unattainable, pick_t_d
from hwbench.profile.locate import is_local, mark_stale, profile_threads
from hwbench.profile.predictor import Predictor, dense_ms
from hwbench.train.evaluation import load_run
from hwbench.units import LatencyTarget

TIMING_IMAGES = 64  # distinct real images a trained network is timed on
STALE = 0.10  # the profile's dense reference this far from the one measured now: stale


def load_backbone(checkpoint: str, arch: str, stem: str):
    net, cfg, _ = load_run(checkpoint)
    if (cfg.get("arch"), net.stem) != (arch, stem):
        raise UsageError(f"{checkpoint} is a {cfg.get('arch')}/{net.stem} checkpoint; the pattern "
                         f"is {arch}/{stem}")
    return net, cfg


def timing_inputs(cfg: dict | None, input_size: int, n: int = TIMING_IMAGES) -> Inputs:
    """Real images for a trained run (``cfg``: its config): a class-balanced sample of its
    data set's test split; synthetic ones for a realised pattern (``cfg`` None)."""
    if cfg is None:
        return synthetic_inputs(n, input_size, seed=21)

    images, record = sample_images(cfg["dataset"], False, n, data_dir=cfg.get("data_dir"),
                                   n_synthetic=cfg.get("n_synthetic", 512),
                                   seed=cfg.get("seed", 0))
    return Inputs(list(images.split(1)), record)


def time_network(net, pattern, inputs: Inputs, dev: torch.device, percentile: str = "p90",
                 max_time_s: float = 10.0, min_runs: int = 64, ci_target: float = 0.02,
                 runtime: str = DEFAULT_RUNTIME, threads: int | None = None
                 ) -> tuple[Measurement, list[str]]:
    """The verify protocol: ``net`` in ``dynamic`` mode at batch 1 with its plan tuned on
    ``inputs``, and the dense reference, both built for ``runtime`` (``runnable``: the compact
    engine for ``eager``; ``threads``: the runtime's intra-op threads, None: torch's), timed
    per inference, interleaved, cycling ``inputs``, until the ``percentile``'s 95% CI is within
    ``ci_target`` or ``max_time_s`` runs out. The measurement (raw samples kept) and the
    dynamic network's plan (per block)."""
    inputs = inputs.to(dev)
    example = inputs.batches[0]
    fns = {"dynamic": runnable(net, "dynamic", pattern, runtime=runtime, example=example,
                               threads=threads, tune_inputs=inputs.batches, device=dev),
           "dense": runnable(net, "dense", pattern, runtime=runtime, example=example,
                             threads=threads, device=dev)}
    protocol = Protocol(quantile=quantile_of(percentile), ci_target=ci_target, min_runs=min_runs,
                        max_time_s=max_time_s)
    return measure(fns, inputs, protocol, dev, where="verify"), list(fns["dynamic"].engine.plan)


def decide(m: Measurement, target: LatencyTarget, profile: dict | None,
           band: tuple[float, float] = BAND) -> dict:
    """Whether ``m`` lands in ``band`` x ``target`` (``met``, and the ``verdict``): only on a
    valid measurement of the decided percentile (both the network's and, for a relative target,
    the dense reference's)."""
    pct = target.percentile
    gated, dense = m.at("dynamic"), m.at("dense")
    ratio = m.ratio("dynamic", "dense")
    needs = ["dynamic"] + (["dense"] if target.ratio is not None else [])
    invalid = [k for k in needs if not m[k]["valid"]]
    score = target.score(gated, dense)
    v = verdict(score, not invalid, band)
    out = {"target_ms": target.ms_for(dense), "target": target.to_dict(), "score": score,
           "ratio_to_dense": ratio, "valid": not invalid, "band": list(band),
           "met": v.name == MET, "verdict": v.name, "verdict_message": v.message}
    if invalid:
        out["reason"], out["needs"] = no_decision(m, invalid, pct)
    ref = dense_ms(profile, pct)
    if ref:
        off = dense / ref - 1.0
        out["profile_dense_ms"] = ref
        if abs(off) > STALE:
            out["profile_stale"] = {
                "dense_now_vs_profile": off,
                "note": f"the profile is stale: dense {pct} measures {dense:.3f} ms now, "
                        f"{off:+.0%} from the profile's {ref:.3f} ms"
                        + (f"; the {target.ms:g} ms target is {target.ms / dense:.3f}x of "
                           f"the dense {pct} now ({target.ms / ref:.3f}x when profiled)"
                           if target.ms is not None else "")}
    return out


def act_on_stale(stale: dict, prof: dict, path: str | None, dense_ms: float, pct: str,
                 device: str) -> None:
    """A stale profile is not used again silently: a quick one (hwbench's own) is marked stale
    in its file (``locate.mark_stale``: the next run here measures a new one); a full one (the
    user's) is left as it is, and the note says how to measure a new one."""
    if prof.get("quick") and path and is_local(prof["fingerprint"]):
        mark_stale(path, dense_ms, pct)
        stale["marked"] = path
        stale["note"] += "; marked stale in the file: the next run here measures a new quick one"
    else:
        stale["note"] += (f"; measure a new one with `hwbench profile --device {device}` (this "
                          "one is still used until then)")


def no_decision(m: Measurement, invalid: list[str], pct: str) -> tuple[str, dict]:
    """Why nothing is decided on ``m`` (``invalid``: the engines without a valid ``pct``), with
    what would decide it: how many samples the CI needs and about how long that takes at the
    rate this measurement ran (``stats.time_needed``), and what to pin. One line."""
    ci = m.protocol.get("ci_target") or 0.02
    spent = float(m.protocol.get("max_time_s") or 0.0)
    needs = {k: time_needed(m[k]["samples_ms"], quantile_of(pct), ci, spent) for k in invalid}
    worst = max(needs.values(), key=lambda n: n["needed_s"] or 0)
    got = (f"its 95% CI is +-{worst['ci_rel_halfwidth']:.1%}"
           if worst["ci_rel_halfwidth"] is not None else "no CI exists yet at this count")
    seconds = worst["needed_s"]
    text = (f"no valid {pct} for {', '.join(invalid)}: {worst['n']} samples in {spent:g} s, "
            f"{got}, +-{ci:.0%} asked; about {worst['needed_n']} samples"
            + (f", ~{seconds} s: rerun with --max-time {max(seconds, 1)}" if seconds else "")
            + " on an idle machine (no other jobs; threads pinned, e.g. taskset); nothing is "
              "decided on it")
    return text, needs


def run_verify(pattern_path: str, goal: Goal, checkpoint: str | None = None,
               max_time_s: float = 10.0, inputs: Inputs | None = None,
               band: tuple[float, float] = BAND) -> dict:
    """Measure ``pattern_path``'s network (its checkpoint, or the pattern realised) against
    ``goal`` (``hwbench.pick.goal``: the target, the deployment it is measured on, the profile
    it is compared with, all resolved at the edge), at the profile's CPU thread count.
    ``band``: the scores that land (``hwbench.deploy.verdict``)."""
    target, dev, runtime = goal.target, goal.on.torch_device, goal.on.runtime
    device = goal.on.device
    pattern = load_pattern(pattern_path)
    prof = goal.profile.profile if goal.profile else None
    profile_path = str(goal.profile.path) if goal.profile else None
    net, cfg = load_backbone(checkpoint, pattern.arch, pattern.stem) if checkpoint else \
        (realise(pattern), None)
    inputs = inputs or timing_inputs(cfg, pattern.input_size)
    with torch_threads(profile_threads(prof)):
        threads = torch.get_num_threads()
        m, plan = time_network(net, pattern, inputs, dev, target.percentile, max_time_s,
                               runtime=runtime, threads=threads)
    decision = decide(m, target, prof, band)
    if decision.get("profile_stale"):
        act_on_stale(decision["profile_stale"], prof, profile_path, m.at("dense"),
                     target.percentile, device)
    predicted = None
    if prof is not None:
        pred = Predictor(prof)
        pred.check(pattern, pattern_path)
        predicted = {f"{p}_ms": pred.predict(pattern, p) for p in ("p50", "p90", "p99")}
    gated = sum(lp.channels for lp in pattern.layers)
    share = sum(lp.dynamic for lp in pattern.layers) / gated
    suggestion = _suggest(decision, prof, target, m.at("dense"))
    return {"percentile": target.percentile, **decision,
            "measured": m["dynamic"], "dense": m["dense"], "inputs": m.inputs,
            "protocol": m.protocol, "warnings": m.warnings, "predicted": predicted,
            "profile": profile_path, "dense_p50_ms": m["dense"]["p50_ms"],
            "latency_ratio_p50": m["dynamic"]["p50_ms"] / m["dense"]["p50_ms"],
            "macs_ratio": pattern_macs_ratio(pattern), "dynamic_share": share,
            "mode": "dynamic", "plan": plan, "runtime": runtime_record(runtime, threads),
            "suggested_t_d": suggestion,
            "advice": _advice(decision["verdict"], suggestion, pattern.t_d, share),
            "device": fingerprint(dev)["name"], "checkpoint": checkpoint,
            "pattern": pattern_path}


def _suggest(decision: dict, prof: dict | None, target: LatencyTarget,
             dense_ms: float) -> float | None:
    if decision["verdict"] in (MET, NO_DECISION) or prof is None:
        return None
    try:
        return pick_t_d(prof, target.ms_for(dense_ms) * 1e-3, target.percentile).t_d
    except Unattainable:
        return None


def pattern_macs_ratio(pattern) -> float:
    return pattern_report(pattern).ratio


def _advice(name: str, suggestion: float | None, t_d: float | None, share: float) -> str:
    """What to do about verdict ``name``: nothing for MET or NO DECISION."""
    if name in (MET, NO_DECISION):
        return ""
    if name == UNDERSHOT:
        more = "" if suggestion is None or (t_d is not None and suggestion <= t_d + 1e-9) else \
            f"; the profile suggests t_d {suggestion:g} for this target"
        return ("faster than the target needs (latency it could spend on accuracy): `hwbench "
                "trim RUN --target-latency T` switches channels back on until it lands" + more)
    if suggestion is None:
        return "no t_d in the profile's range meets this target on this device"
    if t_d is not None and suggestion >= t_d - 1e-9:
        return (f"the profile's prior patterns already pick t_d {suggestion:g}, yet this learned "
                f"pattern is slower than its prior: {share:.0%} of its gated channels are "
                "data-dependent, and only channels that are off for the whole input can be "
                "skipped cheaply here; train longer (more always-off channels) or lower t_d")
    return f"the profile now suggests t_d {suggestion:g} for this target"
