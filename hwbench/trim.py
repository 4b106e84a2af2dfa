"""Closing the last gap to a latency target on the device itself: ``hwbench trim``.

Training pulls the *predicted* latency towards the target, but the measured latency of the
learned network still misses it: the profile's predictor is a few percent off, a short run has
not converged, and at batch 1 a CPU can only skip channels that are off for every input, while
training sees 64 inputs at a time. Trimming fixes the rest by measurement:

1. Per-channel on-rates of the trained gates on calibration images (the training split,
   un-augmented; never the test split the accuracy is reported on).
2. Channels are ranked by what switching them off always costs against what it saves: on-rate
   (how often the network uses the channel) over the block's latency per channel in the
   profile (ms a channel costs on this device). Cheapest first.
3. The first ``n`` channels of that ranking are switched off for good: their gate's output bias
   is set to a large negative value, so the network itself (masked, compact, any engine) never
   turns them on. The result is an ordinary checkpoint.
4. ``n`` is searched on the device: the profile predicts a starting ``n``, then each candidate is
   summarised, compiled by the compact engine (``dynamic`` mode, batch 1) and timed, interleaved
   with the dense reference, and ``n`` moves by the measured/predicted ratio (bisection inside
   the bracket) until the measured percentile lands in ``[target * (1 - tolerance),
   target * (1 - tolerance / 5)]`` (aiming at ``target * (1 - tolerance / 2)``: the margin is for
   the next measurement's noise).

Every candidate's raw samples are kept in ``trim.json``; the chosen network is then measured
again from scratch (``verify.json``), so the reported latency is not the search's best draw. The
deployed pattern is the one summarised on the calibration images (training data), as a user
without the test set would make it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hwbench.errors import UsageError
from hwbench.patterns import GatePattern, summarise
from hwbench.profiles import Predictor

OFF_BIAS = -1.0e4  # a gate logit no input can lift above 0: the channel is off for good


@dataclass
class Candidate:
    """One channel that trimming may switch off."""

    block: int
    channel: int
    on_rate: float
    ms_per_channel: float

    @property
    def cost(self) -> float:  # on-rate per ms saved: lower is cheaper to switch off
        return self.on_rate / max(self.ms_per_channel, 1e-6)


def ranking(pattern: GatePattern, predictor: Predictor | None = None) -> list[Candidate]:
    """Channels that are ever on, cheapest to switch off first; each block keeps at least one
    channel (an empty block is not a network the engine or the profile describe)."""
    cands: list[Candidate] = []
    for i, lp in enumerate(pattern.layers):
        kept = lp.always_on + lp.dynamic
        if predictor is not None:
            gated = lp.dynamic > 0
            slope = predictor.block_ms(i, kept, gated) - predictor.block_ms(i, max(kept - 1, 0),
                                                                            gated)
        else:
            slope = 1.0
        rates = [(c, 1.0) for c in (lp.on_idx or [])] + \
            list(zip(lp.dynamic_idx or [], lp.dynamic_rates or []))
        rates.sort(key=lambda cr: cr[1])
        cands += [Candidate(i, c, float(r), float(slope)) for c, r in rates[:-1]]
    return sorted(cands, key=lambda c: (c.cost, c.block, c.channel))


def switch_off(net, cands: list[Candidate]) -> None:
    """Switch the candidates' channels off in ``net`` (in place): gate bias to ``OFF_BIAS``."""
    blocks = [b for _, b in net.blocks()]
    with torch.no_grad():
        for c in cands:
            blocks[c.block].gate.fc2.bias[c.channel] = OFF_BIAS


def trimmed_pattern(pattern: GatePattern, cands: list[Candidate]) -> GatePattern:
    """The pattern with ``cands`` moved to always-off, other groups unchanged: the cheap stand-in
    the predictor reads during the search (the real one is summarised)."""
    gone: dict[int, set[int]] = {}
    for c in cands:
        gone.setdefault(c.block, set()).add(c.channel)
    p = copy.deepcopy(pattern)
    for i, lp in enumerate(p.layers):
        g = gone.get(i)
        if not g:
            continue
        on = [c for c in (lp.on_idx or []) if c not in g]
        dyn = [(c, r) for c, r in zip(lp.dynamic_idx or [], lp.dynamic_rates or []) if c not in g]
        lp.on_idx, lp.always_on = on, len(on)
        lp.dynamic_idx, lp.dynamic_rates = [c for c, _ in dyn], [r for _, r in dyn]
        lp.dynamic = len(dyn)
        lp.always_off = lp.channels - lp.always_on - lp.dynamic
        lp.dynamic_on_rate = sum(lp.dynamic_rates) / lp.dynamic if lp.dynamic else 0.0
    return p


@dataclass
class TrimResult:
    n_off: int  # channels switched off by trimming
    candidates: int
    net: torch.nn.Module
    pattern: GatePattern  # summarised on the calibration images
    measured_ms: float
    predicted_ms: float | None
    steps: list[dict]  # every candidate measured: n, predicted, measured summary, raw samples
    hit: bool  # the search landed inside [target * (1 - tolerance), target]

    def to_dict(self) -> dict:
        return {"n_off": self.n_off, "candidates": self.candidates,
                "measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms,
                "hit": self.hit, "steps": self.steps}


def search(net, calib: torch.Tensor, target_ms: float, device: torch.device,
           measure: Callable[[torch.nn.Module, GatePattern], dict],
           predictor: Predictor | None = None, percentile: str = "p90",
           tolerance: float = 0.05, max_measurements: int = 8,
           say: Callable[[str], None] = lambda s: None) -> TrimResult:
    """Find the trim of ``net`` whose measured ``percentile`` latency lands in
    ``[target_ms * (1 - tolerance), target_ms]``; ``measure(net, pattern)`` times a candidate
    and returns a summary with ``{percentile}_ms`` (and ``samples_ms``). Accepted band:
    ``[target * (1 - tolerance), target * (1 - tolerance / 5)]``.

    Without a hit after ``max_measurements``, the fastest candidate that meets the target (or,
    if none does, the fastest measured) is returned with ``hit`` False."""
    net = net.eval()
    loader = DataLoader(calib, batch_size=256)

    def summarise_net(m) -> GatePattern:
        return summarise(m, loader, device)

    base = summarise_net(net)
    cands = ranking(base, predictor)
    lo_ms, hi_ms = target_ms * (1.0 - tolerance), target_ms * (1.0 - tolerance / 5)
    aim = target_ms * (1.0 - tolerance / 2)

    def predict(n: int) -> float | None:
        if predictor is None:
            return None
        return predictor.predict(trimmed_pattern(base, cands[:n]), percentile)

    def net_with(n: int):
        m = copy.deepcopy(net)
        switch_off(m, cands[:n])
        return m

    def n_for(ms: float, lo: int, hi: int) -> int:
        """Smallest n in [lo, hi] whose prediction is at most ``ms`` (predictions fall with n)."""
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            if predict(mid) <= ms:
                b = mid
            else:
                a = mid + 1
        return a

    steps: list[dict] = []
    tried: dict[int, tuple] = {}
    lo, hi = 0, len(cands)  # measured: n <= lo too slow (unknown yet); n >= hi fast enough
    n = n_for(aim, 0, len(cands)) if predictor else len(cands) // 2
    for _ in range(max_measurements):
        m = net_with(n)
        pat = summarise_net(m)
        res = measure(m, pat)
        ms = float(res[f"{percentile}_ms"])
        pred = predict(n)
        tried[n] = (ms, m, pat, pred)
        steps.append({"n_off": n, "predicted_ms": pred, "measured": res})
        say(f"  trim: {n} of {len(cands)} channels off -> measured {percentile} {ms:.3f} ms"
            + (f" (predicted {pred:.3f})" if pred is not None else "")
            + f", target {target_ms:.3f}")
        if lo_ms <= ms <= hi_ms:
            break
        if ms > hi_ms:
            lo = max(lo, n + 1)
        else:
            hi = min(hi, n - 1) if n > 0 else 0
        if lo > hi:
            break
        if predictor is not None and pred:
            # aim the prediction, corrected by this candidate's measured/predicted ratio, at the
            # middle of the band
            guess = n_for(aim * pred / ms, lo, hi)
        else:
            guess = (lo + hi) // 2
        if guess in tried or not lo <= guess <= hi:
            guess = (lo + hi) // 2
        if guess in tried:
            break
        n = guess
    meets = {k: v for k, v in tried.items() if v[0] <= target_ms}
    if meets:
        best = max(meets, key=lambda k: meets[k][0])  # the slowest that meets: least trimmed
    else:
        best = min(tried, key=lambda k: tried[k][0])
    ms, m, pat, pred = tried[best]
    return TrimResult(best, len(cands), m, pat, ms, pred, steps, lo_ms <= ms <= hi_ms)


def engine_timer(device: torch.device, max_time_s: float = 4.0,
                 min_runs: int = 64, percentile: str = "p90"
                 ) -> Callable[[torch.nn.Module, GatePattern], dict]:
    """``measure`` for :func:`search`: the verify protocol (``hwbench.verify.time_network``),
    shorter."""
    from hwbench.measure.stats import summarise as summarise_samples
    from hwbench.verify import time_network

    def measure(net, pattern: GatePattern) -> dict:
        samples, plan = time_network(net, pattern, device, max_time_s, min_runs, percentile)
        out = summarise_samples(samples["dynamic"], 0.02).to_dict()
        out["samples_ms"] = samples["dynamic"]
        out["dense_p50_ms"] = summarise_samples(samples["dense"]).p50_ms
        out["plan"] = plan
        return out

    return measure


def trim_run(run_dir: str | Path, target: float | str, device: str = "cpu",
             profile_path: str | None = None, percentile: str = "p90",
             tolerance: float = 0.05, max_time_s: float = 4.0, verify_max_time_s: float = 10.0,
             calib_samples: int = 1024, out: str | Path | None = None, knn: bool = True,
             min_runs: int = 64, say: Callable[[str], None] = lambda s: None) -> dict:
    """Trim a training run's network to ``target`` on ``device`` (this machine) and write the
    trimmed run to ``out`` (default ``RUN/trim-<target>``): checkpoint.pt, pattern.json,
    trim.json (the search), verify.json (measured anew) and eval.json (kNN, both streams)."""
    from hwbench.data import eval_dataset, load_tensors
    from hwbench.evaluate import load_run, run_eval
    from hwbench.io import atomic_write_json
    from hwbench.locate import is_local, profile_threads, resolve_profile, resolve_target
    from hwbench.measure.device import parse_device, torch_threads
    from hwbench.train import _save_checkpoint
    from hwbench.verify import run_verify

    run = Path(run_dir)
    ckpt = run / "checkpoint.pt"
    if not ckpt.exists():
        raise UsageError(f"{run}: no checkpoint.pt (is it a training run directory?)")
    if not 0 < tolerance < 1:
        raise UsageError(f"--tolerance must be in (0, 1), got {tolerance:g}")
    dev = parse_device(device)
    net, cfg, _ = load_run(ckpt)
    if cfg.get("method") == "dense":
        raise UsageError(f"{run} trained the dense stream only: there are no gates to trim")
    from hwbench.data import info

    meta = info(cfg["dataset"])
    tp = resolve_profile(profile_path or device, cfg["arch"], meta.stem, meta.input_size,
                         quick=False)
    if not is_local(tp.profile["fingerprint"], dev):
        raise UsageError(f"{tp.path} profiles {tp.profile['fingerprint']['name']}, not this "
                         f"machine's {device}: trimming measures, so run it on the target device")
    target_s = resolve_target(target, tp, percentile)
    tag = target if isinstance(target, str) else f"{target * 1e3:g}ms"
    out = Path(out) if out else run / f"trim-{tag}"
    kw = dict(data_dir=cfg.get("data_dir"), n_synthetic=cfg.get("n_synthetic", 512),
              seed=cfg.get("seed", 0))
    x, y = load_tensors(cfg["dataset"], True, **kw)
    calib = eval_dataset(x[:calib_samples], y[:calib_samples], cfg["dataset"]).tensors[0]
    say(f"trimming {run} to {target_s * 1e3:.3f} ms ({percentile}) on "
        f"{tp.profile['fingerprint']['name']}, profile {tp.path}")
    timer = engine_timer(dev, max_time_s, min_runs, percentile)
    with torch_threads(profile_threads(tp.profile)):  # the profile's conditions
        res = search(net.to(dev), calib, target_s * 1e3, dev, timer, Predictor(tp.profile),
                     percentile, tolerance, say=say)
    out.mkdir(parents=True, exist_ok=True)
    # the trimmed checkpoint: the run's, with the trimmed gates (resume state dropped)
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = {f"backbone.{k}": v.cpu() for k, v in res.net.state_dict().items()}
    ck["model"] = {**ck["model"], **state}
    ck["trim"] = {"from": str(ckpt), "target_ms": target_s * 1e3, "n_off": res.n_off}
    for k in ("optimizer", "scaler"):
        ck.pop(k, None)
    _save_checkpoint(out / "checkpoint.pt", ck)
    pattern = res.pattern
    pattern.t_d = cfg.get("t_d")
    pattern.extra.update(dataset=cfg["dataset"], run=f"{run.name}-trim-{tag}",
                         summarised_on=f"{len(calib)} training images (calibration)")
    pattern.save(out / "pattern.json")
    record = {"schema": "hwbench/trim@1", "run": str(run), "target_ms": target_s * 1e3,
              "percentile": percentile, "tolerance": tolerance, "profile": str(tp.path),
              "device": tp.profile["fingerprint"]["name"], "calibration_images": len(calib),
              "protocol": "compact engine, dynamic mode, batch 1, interleaved with dense; "
                          f"{max_time_s:g} s per candidate", **res.to_dict()}
    atomic_write_json(out / "trim.json", record)
    say("measuring the trimmed network anew ...")
    ver = run_verify(str(out / "pattern.json"), target_s, device, str(out / "checkpoint.pt"),
                     percentile, str(tp.path), verify_max_time_s)
    atomic_write_json(out / "verify.json", ver)
    summary = {"dir": str(out), "target_ms": target_s * 1e3, "n_off": res.n_off,
               "candidates": res.candidates, "search_hit": res.hit,
               "search_measured_ms": res.measured_ms,
               "measured_ms": ver["measured"][f"{percentile}_ms"],
               "error": ver["measured"][f"{percentile}_ms"] / (target_s * 1e3) - 1.0,
               "met": ver["met"], "within_tolerance": abs(
                   ver["measured"][f"{percentile}_ms"] / (target_s * 1e3) - 1.0) <= tolerance,
               "dense_p50_ms": ver["dense_p50_ms"],
               "profile_dense_p50_ms": tp.profile["references"]["dense"]["p50_ms"],
               "macs_ratio": ver["macs_ratio"],
               "dynamic_share": ver["dynamic_share"], "steps": len(res.steps)}
    if knn:
        say("kNN top-1 of the trimmed network ...")
        ev = run_eval(out / "checkpoint.pt", linear=False, knn=True, device=device,
                      out=out / "eval.json")
        summary.update({k: v for k, v in ev.items() if k.startswith("knn_top1")})
    atomic_write_json(out / "summary.json", summary)
    return summary

