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
4. ``n`` is searched on the device in *scores*, measured / target in the target's own terms (the
   ratio to the dense network measured alongside for a relative target, which cancels drift;
   ms for an absolute one): the profile predicts a starting ``n``, each candidate is deployed
   (``hwbench.deploy``), compiled by the compact engine (``dynamic`` mode, batch 1) and timed on
   real images, and the next ``n`` aims the prediction, corrected by the pooled measured /
   predicted ratio of the recent measurements, at ``1 - tolerance / 2``. A candidate is accepted
   only once the pooled estimate is confirmed inside the band by repeated valid measurements
   (``SearchRule``); otherwise the search says it could not land, with the spread it saw.

Every measurement's raw samples are kept in ``trim.json``; the chosen network is then measured
again from scratch (``verify.json``), so the reported latency is not the search's best draw. The
deployed pattern is the one summarised on the calibration images (training data), as a user
without the test set would make it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from hwbench.deploy import OFF_BIAS, set_channels
from hwbench.patterns import GatePattern, summarise
from hwbench.profiles import Predictor


@dataclass
class Candidate:
    """One channel that trimming may switch off."""

    block: int
    channel: int  # width gates: the first channel of the group
    on_rate: float
    ms_per_channel: float
    step: int = 1  # width gates: the group's channels (switching it off caps the width)

    @property
    def cost(self) -> float:  # on-rate per ms saved: lower is cheaper to switch off
        return self.on_rate / max(self.ms_per_channel, 1e-6)


def _slope(predictor: Predictor | None, i: int, lp) -> float:
    """ms a channel of block ``i`` costs at its widest kept width (1 without a profile)."""
    if predictor is None:
        return 1.0
    kept, gated = lp.always_on + lp.dynamic, lp.dynamic > 0
    return predictor.block_ms(i, kept, gated) - predictor.block_ms(i, max(kept - 1, 0), gated)


def _width_ranking(pattern: GatePattern, predictor: Predictor | None) -> list[Candidate]:
    """Width gates: a block's groups can only go from the top (a cap on its width), so its
    candidates are its ever-kept groups but the first, each with the share of inputs keeping
    it (non-increasing with the group): cheapest first, and within a block (one slope) the
    higher group first, so any prefix of the ranking caps widths, never a middle group."""
    cands: list[Candidate] = []
    for i, lp in enumerate(pattern.layers):
        slope, hist, g = _slope(predictor, i, lp), lp.width_hist, lp.step
        top = (lp.channels - lp.always_off) // g
        cands += [Candidate(i, j * g, float(sum(hist[j + 1:])), float(slope), g)
                  for j in range(1, top)]
    return sorted(cands, key=lambda c: (c.cost, c.block, -c.channel))


def ranking(pattern: GatePattern, predictor: Predictor | None = None) -> list[Candidate]:
    """Channels that are ever on, cheapest to switch off first; each block keeps at least one
    channel (an empty block is not a network the engine or the profile describe). Width
    patterns rank groups (``_width_ranking``)."""
    if pattern.gate.kind == "width":
        return _width_ranking(pattern, predictor)
    cands: list[Candidate] = []
    for i, lp in enumerate(pattern.layers):
        slope = _slope(predictor, i, lp)
        rates = [(c, 1.0) for c in (lp.on_idx or [])] + \
            list(zip(lp.dynamic_idx or [], lp.dynamic_rates or []))
        rates.sort(key=lambda cr: cr[1])
        cands += [Candidate(i, c, float(r), float(slope)) for c, r in rates[:-1]]
    return sorted(cands, key=lambda c: (c.cost, c.block, c.channel))


def switch_off(net, cands: list[Candidate]) -> None:
    """Switch the candidates' channels off in ``net`` (in place): gate bias to ``OFF_BIAS``."""
    by_block: dict[int, list[int]] = {}
    for c in cands:
        by_block.setdefault(c.block, []).extend(range(c.channel, c.channel + c.step))
    blocks = [b for _, b in net.blocks()]
    for block, channels in by_block.items():
        gate = blocks[block].gate
        if gate.spec.kind == "width":  # a cap: every group from the lowest one switched off
            channels = list(range(min(channels), gate.fc2.out_channels * gate.spec.step))
        set_channels(net, block, channels, OFF_BIAS)


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
        if lp.width_hist is not None:  # capped at the lowest group switched off
            cap = min(g) // lp.step
            hist = lp.width_hist[:cap] + [sum(lp.width_hist[cap:])]
            hist += [0.0] * (len(lp.width_hist) - len(hist))
            p.layers[i] = type(lp).from_width_hist(lp.name, lp.channels, lp.step, hist)
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
    n_off: int  # channels (width gates: groups of G channels) switched off by trimming
    candidates: int
    net: torch.nn.Module
    pattern: GatePattern  # summarised on the calibration images
    score: float  # mean measured / target of the chosen candidate (<= 1 meets the target)
    predicted: float | None  # its predicted score
    steps: list[dict]  # every measurement: n, predicted and measured score, the summary
    hit: bool  # the chosen candidate's confirmed score lies in the accepted band
    spread: float  # largest (max - min) / mean of the scores of one repeatedly measured candidate
    reason: str = ""  # why there is no hit

    def to_dict(self) -> dict:
        return {"n_off": self.n_off, "candidates": self.candidates, "score": self.score,
                "predicted_score": self.predicted, "hit": self.hit, "spread": self.spread,
                "reason": self.reason, "steps": self.steps}


@dataclass(frozen=True)
class SearchRule:
    """When a candidate is accepted. Scores are measured / target (in the target's own terms: a
    ratio to dense measured alongside for a relative target, ms for an absolute one).

    Steering: the profile's prediction corrected by ``k``, the geometric mean of measured /
    predicted over the last ``window`` measurements (a device the profile misjudges unevenly
    per block needs a correction that follows the search), aimed at ``1 - tolerance / 2``.
    Confirming: a candidate whose estimate lies in ``[1 - tolerance, 1]`` is measured again
    rather than left; it is accepted once it has ``repeats`` valid measurements whose mean +- 2
    standard errors lies inside that band; a confirmed candidate whose mean is central (inside
    ``[1 - 0.8 tolerance, 1 - 0.2 tolerance]``) is measured again until its interval fits, one
    nearer an edge is re-aimed from its own mean. A device too noisy for that within
    ``max_measurements`` gets no hit, and the result says so with the spread it saw."""

    tolerance: float = 0.05
    repeats: int = 3
    window: int = 3
    max_measurements: int = 14

    @property
    def aim(self) -> float:
        return 1.0 - self.tolerance / 2

    def central(self, estimate: float) -> bool:
        """Well inside the band: more measurements of this candidate will confirm it."""
        return 1.0 - self.tolerance * 0.8 <= estimate <= 1.0 - self.tolerance * 0.2

    def accepts(self, estimate: float, se: float) -> bool:
        return 1.0 - self.tolerance <= estimate * math.exp(-2 * se) and \
            estimate * math.exp(2 * se) <= 1.0


def search(net, calib: torch.Tensor, device: torch.device,
           measure: Callable[[torch.nn.Module, GatePattern], dict],
           predict_score: Callable[[GatePattern], float],
           predictor: Predictor | None = None, rule: SearchRule = SearchRule(),
           say: Callable[[str], None] = lambda s: None) -> TrimResult:
    """Find the trim of ``net`` whose score (``measure(net, pattern)`` returns a dict with
    ``score`` = measured / target and ``valid``) is confirmed inside ``rule``'s band.
    ``predict_score(pattern)``: the profile's predicted score; ``predictor`` ranks channels by
    ms saved.

    Without a confirmed hit after ``rule.max_measurements``, the measured candidate whose
    estimate meets the target most closely (or, if none does, the fastest) is returned with
    ``hit`` False and the reason."""
    net = net.eval()
    loader = DataLoader(calib, batch_size=256)
    base = summarise(net, loader, device)
    cands = ranking(base, predictor)
    st = _SearchState(net, base, cands, loader, device, predict_score, rule)
    n = st.n_for(rule.aim)
    unit = "channel groups" if cands and cands[0].step > 1 else "channels"  # width gates: groups
    for _ in range(rule.max_measurements):
        res = measure(*st.candidate(n))
        st.record(n, res)
        est, se = st.estimate(n)
        say(f"  trim: {n} of {len(cands)} {unit} off -> measured {res['score']:.3f} x target"
            f" (predicted {st.predicted(n):.3f}; estimate {est:.3f} +- {2 * se:.3f})"
            + ("" if res.get("valid", True) else " [measurement not valid]"))
        confirmed = len(st.scores.get(n, ())) >= rule.repeats
        if confirmed and rule.accepts(est, se):
            return st.result(n, True)
        if confirmed and not rule.central(est):  # known, but near an edge: re-aim from it
            n = st.n_for(rule.aim / (est / st.predicted(n)))
        elif not confirmed and not rule.accepts(est, 0.0):  # outside: move; inside: again
            n = st.n_for(rule.aim / st.correction())
    return st.fallback()


class _SearchState:
    """What ``search`` has measured, and the corrected predictions it steers by."""

    def __init__(self, net, base, cands, loader, device, predict_score, rule: SearchRule):
        self.net, self.base, self.cands = net, base, cands
        self.loader, self.device, self.predict_score = loader, device, predict_score
        self.rule = rule
        self.built: dict[int, tuple] = {}
        self.preds: dict[int, float] = {}
        self.scores: dict[int, list[float]] = {}
        self.steps: list[dict] = []
        self.log_ratios: list[float] = []  # log(measured / predicted), every measurement

    def candidate(self, n: int) -> tuple:
        if n not in self.built:
            m = copy.deepcopy(self.net)
            switch_off(m, self.cands[:n])
            self.built[n] = (m, summarise(m, self.loader, self.device))
        return self.built[n]

    def predicted(self, n: int) -> float:
        if n not in self.preds:
            self.preds[n] = self.predict_score(trimmed_pattern(self.base, self.cands[:n]))
        return self.preds[n]

    def record(self, n: int, res: dict) -> None:
        score, valid = float(res["score"]), bool(res.get("valid", True))
        # every measurement steers (a noisy one still points the right way); only valid ones
        # can confirm a candidate
        self.log_ratios.append(math.log(score / self.predicted(n)))
        if valid:
            self.scores.setdefault(n, []).append(score)
        self.steps.append({"n_off": n, "predicted_score": self.predicted(n), "score": score,
                           "valid": valid, "measured": res})

    def correction(self) -> float:
        """Measured / predicted, geometric mean over the last ``window`` measurements."""
        recent = self.log_ratios[-self.rule.window:]
        return math.exp(sum(recent) / len(recent)) if recent else 1.0

    def estimate(self, n: int) -> tuple[float, float]:
        """(score, standard error of its log): the mean of ``n``'s own valid measurements once
        it has two, else the corrected prediction (standard error unknown: inf)."""
        xs = [math.log(x) for x in self.scores.get(n, ())]
        if len(xs) < 2:
            return self.correction() * self.predicted(n), math.inf
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
        return math.exp(mean), math.sqrt(var / len(xs))

    def n_for(self, score: float) -> int:
        """Smallest n whose predicted score is at most ``score`` (predictions fall with n)."""
        a, b = 0, len(self.cands)
        while a < b:
            mid = (a + b) // 2
            if self.predicted(mid) <= score:
                b = mid
            else:
                a = mid + 1
        return a

    def spread(self) -> float:
        """Largest (max - min) / mean over the repeated measurements of one candidate."""
        out = 0.0
        for xs in self.scores.values():
            if len(xs) > 1:
                out = max(out, (max(xs) - min(xs)) / (sum(xs) / len(xs)))
        return out

    def result(self, n: int, hit: bool, reason: str = "") -> TrimResult:
        m, pat = self.candidate(n)
        est = self.estimate(n)[0] if self.scores.get(n) else math.nan
        return TrimResult(n, len(self.cands), m, pat, est, self.predicted(n), self.steps, hit,
                          self.spread(), reason)

    def fallback(self) -> TrimResult:
        r = self.rule
        why = (f"no candidate confirmed inside [{1 - r.tolerance:.3f}, 1] x target (mean of "
               f">= {r.repeats} valid measurements +- 2 standard errors) in "
               f"{r.max_measurements} measurements; one candidate measured up to "
               f"{self.spread():.1%} apart")
        if not self.scores:
            return self.result(next(iter(self.built)), False, "no valid measurement; " + why)
        est = {n: self.estimate(n)[0] for n in self.scores if self.scores[n]}
        meets = [n for n in est if est[n] <= 1.0]
        best = max(meets, key=est.get) if meets else min(est, key=est.get)
        if not meets:
            why = "no candidate met the target: the fastest is returned; " + why
        return self.result(best, False, why)
