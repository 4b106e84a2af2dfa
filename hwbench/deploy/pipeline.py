"""The train -> deploy -> verify -> trim pipeline behind ``hwbench train --target-latency`` and
``hwbench trim``. The CLI and ``compare`` import this module; each step is a library module
of its own (``pick.target``: which t_d; ``train``; ``deploy.network``: one deployed network;
``deploy.verify``: measure it; ``deploy.trim``: the search), and this one only strings them
together and writes the run's files. The latency goals arrive resolved (``hwbench.pick.goal``).

Files a target run gets (``RUN/``): the training run's own, ``deployed/`` (checkpoint.pt with the
pattern's decided channels closed, pattern.json summarised on a class-balanced sample of the
training split), ``verify.json`` (the deployed network timed on real test images), when
trimmed, ``trim-<target>/`` (checkpoint.pt, pattern.json, trim.json, verify.json, eval.json),
and ``final.json`` (``hwbench.deploy.final``: the delivered network and the verdict on it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hwbench.data import info, sample_images
from hwbench.deploy import verify
from hwbench.deploy.baseline import thin_baseline
from hwbench.deploy.final import final_record, write_final
from hwbench.deploy.network import deploy
from hwbench.deploy.trim import SearchRule, search
from hwbench.engine.runtimes import runtime_record
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, is_graph
from hwbench.engine.runtimes.registry import get as get_runtime
from hwbench.errors import UsageError
from hwbench.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, check_writable
from hwbench.measure.device import torch_threads
from hwbench.pick.goal import Goal
from hwbench.pick.target import pick_targets
from hwbench.profile.locate import profile_threads
from hwbench.profile.predictor import Predictor, dense_ms
from hwbench.train.config import validate
from hwbench.train.evaluation import engine_knn, load_run
from hwbench.train.finetune import FinetuneConfig, finetune
from hwbench.train.loop import train
from hwbench.train.precision import amp_choice
from hwbench.train.run import Dist

CALIB_IMAGES = 1024  # class-balanced training images the deployed pattern is summarised on
# A trim candidate's p90 needs a 95% CI within 3% (the final verify: 2%): the search confirms a
# candidate by the mean of repeated valid measurements, whose error shrinks with each.
CANDIDATE_CI = 0.03


def save_network(src_ckpt: Path, net, dst: Path, **extra) -> Path:
    """``src_ckpt`` with ``net``'s backbone weights (resume state dropped), atomically."""
    ck = torch.load(src_ckpt, map_location="cpu", weights_only=False)
    ck["model"] = {**ck["model"],
                   **{f"backbone.{k}": v.cpu() for k, v in net.state_dict().items()}}
    for k in ("optimizer", "scaler"):
        ck.pop(k, None)
    ck.update(extra)
    return atomic_torch_save(dst, ck)


def _data_kw(cfg: dict) -> dict:
    return dict(data_dir=cfg.get("data_dir"), n_synthetic=cfg.get("n_synthetic", 512),
                seed=cfg.get("seed", 0))


def deploy_run(run_dir: str | Path, device: str = "cpu", calib_images: int = CALIB_IMAGES,
               out: str | Path | None = None) -> dict:
    """Close the decided channels of a trained run's network (``hwbench.deploy.network``) and write
    it to ``out`` (default ``RUN/deployed``): checkpoint.pt and pattern.json."""
    run = Path(run_dir)
    net, cfg, _ = load_run(run / "checkpoint.pt")
    calib, record = sample_images(cfg["dataset"], True, calib_images, **_data_kw(cfg))
    pattern = deploy(net, calib, torch.device(device), dataset=cfg["dataset"],
                     run=f"{run.name}-deployed")
    pattern.t_d = cfg.get("t_d")
    pattern.extra["summarised_on"] = record
    out = Path(out) if out else run / "deployed"
    save_network(run / "checkpoint.pt", net, out / "checkpoint.pt", deployed=record)
    pattern.save(out / "pattern.json")
    return {"dir": str(out), "checkpoint": str(out / "checkpoint.pt"),
            "pattern": str(out / "pattern.json"), "calibration": record}


def evaluate_deployed(checkpoint: str | Path, pattern_path: str | Path, device: str,
                      out: Path) -> dict:
    """kNN top-1 of a deployed network: the gated stream from the compact engine that was timed
    (``evaluate.engine_knn``), the dense stream from the eager network."""
    res = engine_knn(checkpoint, pattern_path, device)
    atomic_write_json(out, res)
    return res


def verify_local(summary: dict, goals: list[Goal], say: Callable[[str], None],
                 verify_max_time_s: float, evaluate: bool = True) -> list[dict]:
    """Deploy the trained run once and verify it at every goal whose device is this machine
    (``verify.json``, then ``verify-<device>.json``), on the goal's runtime; others get the
    command to run there. ``evaluate``: the deployed network's kNN top-1 (``deployed/eval.json``;
    skipped when trim will replace it)."""
    results, deployed = [], None
    for goal in goals:
        tp, target, where, runtime = goal.profile, goal.target, goal.where, goal.on.runtime
        if not goal.local:
            say(f"target device {tp.profile['fingerprint']['name']} is not this machine: run "
                f"`hwbench verify --pattern {summary['dir']}/deployed/pattern.json --checkpoint "
                f"{summary['dir']}/deployed/checkpoint.pt --target-latency {target.text}"
                f"{goal.on.flag}` "
                "there")
            continue
        device = goal.on.device
        if deployed is None:
            deployed = deploy_run(summary["dir"], device)
            summary["deployed"] = deployed
        say(f"verifying the deployed network on {tp.profile['fingerprint']['name']}"
            + ("" if not is_graph(runtime) else f" ({runtime})") + " (real "
            f"{deployed['calibration']['source'].split(':')[0]} test images) ...")
        res = verify.run_verify(deployed["pattern"], goal, deployed["checkpoint"],
                                verify_max_time_s)
        if not results:
            summary["fidelity"] = fidelity(summary.get("final", {}), res)
        tag = Path(where).stem if where.endswith(".json") else where
        name = "verify.json" if not results else \
            f"verify-{re.sub(r'[^a-z0-9]+', '-', tag.lower()).strip('-')}.json"
        atomic_write_json(Path(summary["dir"]) / name, res)
        if res.get("profile_stale"):
            say("  " + res["profile_stale"]["note"])
        if evaluate and "eval" not in deployed:
            say("kNN top-1 of the deployed network (gated: the compact engine" +
                (" that was timed" if not is_graph(runtime) else f"; the {runtime} graph was timed")
                + ") ...")
            deployed["eval"] = {k: v for k, v in evaluate_deployed(
                deployed["checkpoint"], deployed["pattern"], device,
                Path(deployed["dir"]) / "eval.json").items() if k.startswith("knn")}
        results.append({k: v for k, v in res.items() if k not in ("measured", "dense")}
                       | {"measured": _brief(res["measured"])})
    return results


FIDELITY_TOLERANCE = 0.05  # issue 23: the deployed network within 5 % of training's estimate


def fidelity(final: dict, verified: dict) -> dict:
    """The deployed network against what training estimated at its end: the MACs ratio (the
    mean over the last epoch's last quarter of passes, ``train.END_SHARE``, else over the
    epoch; the pattern's on the calibration images) and the
    predicted latency at the target's percentile (the budget's estimate on the passes' masks;
    the profile's prediction of the deployed pattern). ``gap``: deployed / training - 1."""
    pct = verified["percentile"]
    pairs = {"macs_ratio": (final.get("end_macs_ratio", final.get("macs_ratio")),
                            verified.get("macs_ratio")),
             f"predicted_{pct}_ms": (final.get("end_latency_ms_0", final.get("latency_ms_0")),
                                     (verified.get("predicted") or {}).get(f"{pct}_ms"))}
    rows = {name: {"training": t, "deployed": d, "gap": d / t - 1.0}
            for name, (t, d) in pairs.items() if t and d}
    return {**rows, "tolerance": FIDELITY_TOLERANCE,
            "within": bool(rows) and all(abs(r["gap"]) <= FIDELITY_TOLERANCE
                                         for r in rows.values())}


def _brief(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "samples_ms"}


def trim_run(run_dir: str | Path, goal: Goal,
             tolerance: float = SearchRule.tolerance, max_time_s: float = 6.0,
             verify_max_time_s: float = 20.0,
             calib_samples: int = CALIB_IMAGES, out: str | Path | None = None, knn: bool = True,
             min_runs: int = 64, max_measurements: int = SearchRule.max_measurements,
             say: Callable[[str], None] = lambda s: None, finetune_steps: int = 0) -> dict:
    """Trim a training run's network to ``goal`` (``hwbench.pick.goal.trim_goal``: the target,
    this machine's device and runtime, that runtime's profile of it): channels off, or
    always-off ones back on, until it lands in ``[1 - tolerance, 1] x target``; then
    ``finetune_steps`` of recovery fine-tuning (``finetune_net``; the tuned network is delivered
    unless its kNN is lower than before, ``_keep_better``). Writes the trimmed run to ``out``
    (default ``RUN/trim-<target>``): checkpoint.pt, pattern.json, trim.json (the search),
    verify.json (the final network measured anew) and eval.json (kNN of its gated stream;
    eval-before-finetune.json); and ``RUN/final.json`` (the verdict on it)."""
    job = _trim_job(run_dir, goal, tolerance, out)
    run, out, cfg, tp, dev = job.run, job.out, job.cfg, goal.profile, goal.on.torch_device
    device, runtime, percentile, target = goal.on.device, goal.on.runtime, goal.percentile, \
        goal.target
    calib, calib_record = sample_images(cfg["dataset"], True, calib_samples, **_data_kw(cfg))
    inputs = verify.timing_inputs(cfg, job.input_size)
    say(f"trimming {run} to {target.text} ({percentile}) on {tp.profile['fingerprint']['name']}"
        + ("" if not is_graph(runtime) else f" ({runtime})") + f", profile {tp.path}")
    rule = SearchRule(tolerance=tolerance, max_measurements=max_measurements)
    with torch_threads(profile_threads(tp.profile)):  # the profile's conditions
        threads = torch.get_num_threads()
        res = search(job.net.to(dev), calib, dev,  # deploys the net on calib, then searches
                     _candidate_timer(target, inputs, dev, max_time_s, min_runs, runtime),
                     _score_predictor(target, tp.profile), _predictor(tp.profile), rule,
                     say=say)
    if not res.hit:
        say(f"  trim could not land: {res.reason}")
    _save_trimmed(run / "checkpoint.pt", res, cfg, target, calib_record, out)
    atomic_write_json(out / "trim.json", {
        "schema": "hwbench/trim@3", "run": str(run), "target": target.to_dict(),
        "tolerance": tolerance, "band": list(rule.band), "profile": str(tp.path),
        "device": tp.profile["fingerprint"]["name"], "calibration": calib_record,
        "inputs": inputs.record, "runtime": runtime_record(runtime, threads),
        "protocol": _trim_protocol(runtime, percentile, max_time_s), **res.to_dict()})
    tuned = _finetune_trimmed(out, finetune_steps, device, runtime, say, knn)
    ev = tuned.pop("eval", None)
    say("measuring the trimmed network anew ...")
    ver = verify.run_verify(str(out / "pattern.json"), goal, str(out / "checkpoint.pt"),
                            verify_max_time_s, inputs=inputs, band=rule.band)
    atomic_write_json(out / "verify.json", ver)
    summary = _trim_summary(out, target, res, ver, tolerance)
    if ev is None:
        ev = _trimmed_knn(out, device, runtime, say) if knn else {}
    summary.update({k: v for k, v in ev.items() if k.startswith("knn_top1")}, **tuned)
    summary["delivered"] = final_record(_name_in(run, out), ver, rule.band, ev,
                                        _random_init_knn(run), cfg.get("knn", "cosine"))
    atomic_write_json(out / "summary.json", summary)
    write_final(run, summary["delivered"])
    return summary


def finetune_net(net_dir: str | Path, steps: int, device: str = "cpu",
                 say: Callable[[str], None] = lambda s: None) -> dict:
    """Recovery fine-tuning (``hwbench.train.finetune``) of the network in ``net_dir`` (a deployed
    or trimmed run's folder), in place: ``checkpoint.pt`` becomes the tuned network, the one before
    is kept as ``checkpoint-before-finetune.pt``; the pattern file stays (the tuning cannot move
    it). Returns the record (also saved in the checkpoint under ``finetune``)."""
    net_dir = Path(net_dir)
    ckpt = net_dir / "checkpoint.pt"
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    dev = torch.device(device)
    amp, _ = amp_choice(ck["config"].get("amp", "auto"), dev)
    say(f"fine-tuning the gated network for {steps} steps (pattern frozen; SSL loss and "
        "distillation from the co-trained dense stream) ...")
    model, record = finetune(ck, FinetuneConfig(steps=steps, seed=ck["config"].get("seed", 0)),
                             dev, amp)
    before = net_dir / "checkpoint-before-finetune.pt"
    if not before.exists():
        atomic_torch_save(before, ck)
    ck["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ck["finetune"] = record
    atomic_torch_save(ckpt, ck)
    return record


@dataclass
class _TrimJob:
    """What a trim works on, checked: the run, its network and config, the folder it writes."""
    run: Path
    out: Path
    net: torch.nn.Module
    cfg: dict
    input_size: int


def _trim_protocol(runtime: str, percentile: str, max_time_s: float) -> str:
    """How trim's candidates were measured, in words (trim.json)."""
    return (f"deployed candidates, {_runner(runtime)}, dynamic mode, batch 1, interleaved with "
            f"dense, {percentile} to a {CANDIDATE_CI:.0%} CI or {max_time_s:g} s per "
            "measurement")


def _trim_job(run_dir, goal: Goal, tolerance: float, out) -> _TrimJob:
    """Check a trim's inputs, one-line errors (``UsageError``) before any measuring."""
    run = Path(run_dir)
    if not (run / "checkpoint.pt").exists():
        raise UsageError(f"{run}: no checkpoint.pt (is it a training run directory?)")
    if not 0 < tolerance < 1:
        raise UsageError(f"--tolerance must be in (0, 1), got {tolerance:g}")
    if not goal.local or goal.profile.device is None:
        raise UsageError(f"{goal.profile.path} profiles another machine: trimming measures, so "
                         "run it on the target device")
    out = check_writable(Path(out) if out else run / f"trim-{goal.target.text}", folder=True)
    net, cfg, _ = load_run(run / "checkpoint.pt")
    if cfg.get("method") == "dense":
        raise UsageError(f"{run} trained the dense stream only: there are no gates to trim")
    return _TrimJob(run, out, net, cfg, info(cfg["dataset"]).input_size)


def _trimmed_knn(out: Path, device: str, runtime: str, say) -> dict:
    """kNN top-1 of the trimmed network in ``out`` (``eval.json``)."""
    say("kNN top-1 of the trimmed network (gated: the compact engine" +
        (" that was timed" if not is_graph(runtime) else f"; the {runtime} graph was timed")
        + ") ...")
    return evaluate_deployed(out / "checkpoint.pt", out / "pattern.json", device,
                             out / "eval.json")


def _finetune_trimmed(out: Path, steps: int, device: str, runtime: str, say,
                      knn: bool) -> dict:
    """``steps`` of recovery fine-tuning of the network in ``out``, with its kNN before
    (``eval-before-finetune.json``) and after (``eval.json``); {} for 0 steps. Where the tuned
    network's gated kNN is below the one before, the one before is delivered (``_keep_better``).
    With ``knn``, the returned ``eval`` is the delivered network's (``eval.json``)."""
    if not steps:
        return {}
    before = {}
    if knn:
        say("kNN top-1 before fine-tuning ...")
        before = evaluate_deployed(out / "checkpoint.pt", out / "pattern.json", device,
                                   out / "eval-before-finetune.json")
    record = finetune_net(out, steps, device, say)
    rec = {**record, "knn_top1_gated_before": before.get("knn_top1_gated")}
    if not knn:
        return {"finetune": rec}
    after = _trimmed_knn(out, device, runtime, say)
    kept, ev = _keep_better(out, before, after)
    if kept == "before":
        say(f"  fine-tuning lowered the gated kNN top-1 ({before['knn_top1_gated']:.1f} -> "
            f"{after['knn_top1_gated']:.1f} %): the network before it is delivered "
            "(the tuned one: checkpoint-finetuned.pt)")
    return {"finetune": {**rec, "knn_top1_gated_after": after.get("knn_top1_gated"),
                         "kept": kept}, "eval": ev}


def _keep_better(out: Path, before: dict, after: dict) -> tuple[str, dict]:
    """Which of the fine-tuned network and the one before it is delivered: the tuned one unless
    its gated kNN top-1 is strictly below the one before (the pattern is the same, so the
    latency is too; the choice is made on the kNN test images whose number is reported). A
    reverted network's tuned checkpoint and eval are kept as ``*-finetuned``."""
    b, a = before.get("knn_top1_gated"), after.get("knn_top1_gated")
    if b is None or a is None or a >= b:
        return "finetuned", after
    for name, ext in (("checkpoint", "pt"), ("eval", "json")):
        here = out / f"{name}.{ext}"
        atomic_write_bytes(out / f"{name}-finetuned.{ext}", here.read_bytes())
        atomic_write_bytes(here, (out / f"{name}-before-finetune.{ext}").read_bytes())
    return "before", before


def _name_in(run: Path, out: Path) -> str:
    """``out`` as final.json names the delivered network: relative to the run, else whole."""
    try:
        return str(out.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(out)


def _random_init_knn(run: Path) -> float | None:
    """The randomly initialised network's gated kNN top-1 (%), from the run's summary.json
    (None: not evaluated, or no summary)."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return (summary.get("initial") or {}).get("knn_top1_gated")


def _save_trimmed(ckpt: Path, res, cfg: dict, goal, calib_record: dict, out: Path) -> None:
    """The trimmed network (checkpoint.pt) and its pattern (pattern.json) in ``out``."""
    save_network(ckpt, res.net, out / "checkpoint.pt",
                 trim={"from": str(ckpt), "target": goal.to_dict(), "n": res.n,
                       "n_off": res.n_off, "n_restored": res.n_restored})
    pattern = res.pattern
    pattern.t_d = cfg.get("t_d")
    pattern.extra.update(dataset=cfg["dataset"], run=f"{ckpt.parent.name}-trim-{goal.text}",
                         summarised_on=calib_record)
    pattern.save(out / "pattern.json")


def _runner(runtime: str) -> str:
    return get_runtime(runtime).timed


def _predictor(profile: dict):
    return Predictor(profile)


def _score_predictor(goal, profile: dict):
    """The profile's predicted score of a pattern: its predicted latency over the target, with a
    relative target read against the profile's own dense reference."""
    pred = _predictor(profile)
    dense = dense_ms(profile, goal.percentile)
    if goal.ratio is not None and not dense:
        raise UsageError(f"the profile has no dense {goal.percentile} reference for a relative "
                         "target")
    return lambda pattern: goal.score(pred.predict(pattern, goal.percentile), dense or 1.0)


def _candidate_timer(goal, inputs, dev, max_time_s: float, min_runs: int,
                     runtime: str = DEFAULT_RUNTIME):
    """``measure`` for ``trim.search``: the verify protocol (real inputs, the decided
    percentile's CI, the network built for ``runtime``), shorter; the score is decided as
    ``verify`` decides it."""

    def timer(net, pattern) -> dict:
        m, plan = verify.time_network(net, pattern, inputs, dev, goal.percentile, max_time_s,
                                      min_runs, ci_target=CANDIDATE_CI, runtime=runtime)
        d = verify.decide(m, goal, None)
        return {"score": d["score"], "valid": d["valid"], "ratio_to_dense": d["ratio_to_dense"],
                "measured": m["dynamic"], "dense": m["dense"], "plan": plan}

    return timer


def _trim_summary(out: Path, goal, res, ver: dict, tolerance: float) -> dict:
    pct = goal.percentile
    measured, target_ms = ver["measured"][f"{pct}_ms"], ver["target_ms"]
    return {"dir": str(out), "target": goal.to_dict(), "target_ms": target_ms,
            "n": res.n, "n_off": res.n_off, "n_restored": res.n_restored,
            "candidates": res.candidates, "restore_candidates": res.restorable,
            "search_hit": res.hit,
            "search_score": res.score, "search_spread": res.spread,
            "search_reason": res.reason, "measured_ms": measured, "score": ver["score"],
            "error": ver["score"] - 1.0, "valid": ver["valid"], "met": ver["met"],
            "band": ver["band"], "verdict": ver["verdict"],
            "within_tolerance": ver["valid"] and abs(ver["score"] - 1.0) <= tolerance,
            "dense_ms": ver["dense"][f"{pct}_ms"],
            "profile_dense_ms": ver.get("profile_dense_ms"),
            "profile_stale": ver.get("profile_stale"), "macs_ratio": ver["macs_ratio"],
            "dynamic_share": ver["dynamic_share"], "steps": len(res.steps),
            "runtime": ver["runtime"]}


def train_to_target(cfg, goals: list[Goal] | tuple = (),
                    say: Callable[[str], None] = lambda s: None,
                    progress=None, verify_max_time_s: float = 10.0, energy_factory=None,
                    trim: bool | None = None, trim_options: dict | None = None,
                    baseline: str | None = None) -> dict:
    """The whole ``hwbench train``: pick ``t_d`` for the latency ``goals`` (``hwbench.pick.goal``:
    each a target on a device and runtime with its located profile, resolved at the edge),
    co-train, deploy, then measure the deployed network at every goal on this machine
    (``verify.json``) on the goal's runtime and, with ``trim`` (default: on with ``--budget
    latency``), trim it to the first such goal.

    With the paper's MACs budget (``cfg.budget == 'flops'``) ``t_d`` is the smallest pick, so
    every target is met by the prior; with ``cfg.budget == 'latency'`` the targets enter the
    loss (``hwbench.train.budget``) and ``t_d`` sets the bound. A resumed run keeps the ``t_d``
    and decision it started with. ``baseline="thin"``: the thinner dense network is trained and
    landed on the first local goal too (``hwbench.deploy.baseline.thin_baseline``) and fills
    ``final.json``'s ``baseline``."""
    goals = list(goals)
    if cfg.budget == "latency" and not goals:
        raise UsageError("--budget latency needs --target-latency (the latency to train for)")
    validate(cfg)
    dist = Dist.from_env()
    if goals:
        pick_targets(cfg, goals, say)
    summary = train(cfg, progress, energy_factory=energy_factory, say=say)
    if not dist.main or not goals or "pattern" not in summary:
        return summary
    if trim is None:
        trim = cfg.budget == "latency"
    local = [g for g in goals if g.local]
    results = verify_local(summary, goals, say, verify_max_time_s, evaluate=not (trim and local))
    if results:
        summary["verify"] = results[0]
        if len(goals) > 1:
            summary["verify_all"] = results
        atomic_write_json(Path(summary["dir"]) / "summary.json", summary)
    if trim and local:
        summary["trim"] = _trim_first(summary, local, say, trim_options)
        summary["delivered"] = summary["trim"]["delivered"]
    elif trim:
        say("no target device is this machine: nothing to trim here (run `hwbench trim RUN_DIR "
            "--target-latency T" + goals[0].on.flag + "` on the target device)")
    if local and "delivered" not in summary:
        summary["delivered"] = _deployed_final(summary, cfg)
        write_final(summary["dir"], summary["delivered"])
    if baseline and local:
        _add_baseline(summary, cfg, local[0], verify_max_time_s, say)
    if local:
        atomic_write_json(Path(summary["dir"]) / "summary.json", summary)
    return summary


def _trim_first(summary: dict, local: list[Goal], say, options: dict | None) -> dict:
    """Trim the run to the first goal on this machine (``trim_run``); its summary."""
    goal = local[0]
    if len(local) > 1:
        say(f"trimming to the first target on this machine ({goal.where}); the others keep the "
            "trained network")
    say(f"trimming the learned network to {goal.target.text} ({goal.percentile}) on "
        f"{goal.profile.profile['fingerprint']['name']} ...")
    return trim_run(summary["dir"], goal, say=say,
                    finetune_steps=summary["config"].get("finetune_steps") or 0,
                    **(options or {}))


def _add_baseline(summary: dict, cfg, goal: Goal, max_time_s: float, say) -> None:
    """The thin baseline trained and landed on ``goal`` (the first local one), put into the
    delivered network's final.json."""
    record = thin_baseline(cfg, goal, max_time_s, say)
    summary["delivered"]["baseline"] = record
    write_final(summary["dir"], summary["delivered"])


def _deployed_final(summary: dict, cfg) -> dict:
    """final.json for an untrimmed run: the deployed network, as verified at the first target
    on this machine (``summary["verify"]``), with its kNN (``deployed/eval.json``)."""
    ev = summary.get("deployed", {}).get("eval") or {}
    random_init = (summary.get("initial") or {}).get("knn_top1_gated")
    return final_record("deployed", summary["verify"], tuple(summary["verify"]["band"]), ev,
                        random_init, cfg.knn)
