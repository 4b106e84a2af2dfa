"""Closing the last gap to a latency target on the device itself: ``hwbench trim``.

Training pulls the *predicted* latency towards the target, but the measured latency of the
learned network still misses it: the profile's predictor is a few percent off, a short run has
not converged, and at batch 1 a CPU can only skip channels that are off for every input, while
training sees 64 inputs at a time. The deployed network may land over the target or far under
it (latency left unused, and the accuracy it would buy). Trimming fixes the rest by measurement,
both ways:

1. Per-channel on-rates of the trained gates on calibration images (the training split,
   un-augmented; never the test split the accuracy is reported on).
2. Channels are ranked by what switching them off always costs against what it saves: on-rate
   (how often the network uses the channel) over the block's latency per channel in the
   profile (ms a channel costs on this device). Cheapest first.
3. The first ``n`` channels of that ranking are switched off for good: their gate's output bias
   is set to a large negative value, so the network itself (masked, compact, any engine) never
   turns them on. The result is an ordinary checkpoint.
4. Restoring is the same move backwards (``n < 0``): the always-off channels (width gates: the
   groups above a block's widest kept width) are ranked by the trained gates' mean logit on the
   calibration images, the nearest to on first, and the first ``-n`` are switched on for good
   (bias set large and positive; a width group then follows the group before it).
5. The signed ``n`` is searched on the device in *scores*, measured / target in the target's
   own terms (the ratio to the dense network measured alongside for a relative target, which
   cancels drift; ms for an absolute one): the profile predicts a starting ``n``, each
   candidate is deployed (``hwbench.deploy.network``), compiled by the compact engine (``dynamic``
   mode, batch 1) and timed on real images, and the next ``n`` aims the prediction, corrected
   by the pooled measured / predicted ratio of the recent measurements, at the middle of the
   band ``[1 - tolerance, 1]`` (``hwbench.deploy.verdict``'s, tolerance 0.10). A candidate is
   accepted only once the pooled estimate is confirmed inside the band by repeated valid
   measurements (``SearchRule``); otherwise the search says it could not land, with the spread it
saw.

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

from hwbench.deploy.moves import (
    Candidate,
    ranking,
    restore_ranking,
    restored_pattern,
    switch_off,
    switch_on,
    trimmed_pattern,
)
from hwbench.deploy.network import deploy
from hwbench.deploy.verdict import BAND, band_of
from hwbench.pattern.gate_pattern import GatePattern, summarise
from hwbench.profile.predictor import Predictor


def logit_means(net, loader, device) -> list[torch.Tensor]:
    """Each block's mean gate logit per decision (a channel; width gates: a group) over the
    images of ``loader``, noise-free (eval mode): how near an always-off channel came to being
    on. One tensor per block, as long as the block's gate has outputs (a thinner network's)."""
    gates = [b.gate for _, b in net.blocks()]
    sums: list[torch.Tensor | None] = [None] * len(gates)

    def hook(i: int):
        def add(module, inputs, out):
            s = out.detach().flatten(1).double().sum(dim=0).cpu()
            sums[i] = s if sums[i] is None else sums[i] + s
        return add

    handles = [g.fc2.register_forward_hook(hook(i)) for i, g in enumerate(gates)]
    n, was_training = 0, net.training
    net.eval()
    try:
        with torch.no_grad():
            for x in loader:
                net.forward_gated(x.to(device))
                n += x.shape[0]
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return [s / max(n, 1) for s in sums]


@dataclass
class TrimResult:
    n: int  # > 0: channels (width gates: groups) switched off; < 0: -n always-off ones restored
    candidates: int  # channels that could be switched off
    restorable: int  # always-off channels that could be switched back on
    changed: list[Candidate]  # the channels switched off (n > 0) or restored (n < 0)
    net: torch.nn.Module
    pattern: GatePattern  # summarised on the calibration images
    score: float  # mean measured / target of the chosen candidate (in the band: it lands)
    predicted: float | None  # its predicted score
    steps: list[dict]  # every measurement: n, predicted and measured score, the summary
    hit: bool  # the chosen candidate's confirmed score lies in the accepted band
    spread: float  # largest (max - min) / mean of the scores of one repeatedly measured candidate
    reason: str = ""  # why there is no hit

    @property
    def n_off(self) -> int:
        return max(self.n, 0)

    @property
    def n_restored(self) -> int:
        return max(-self.n, 0)

    def to_dict(self) -> dict:
        changed = [c.to_dict() for c in self.changed]
        return {"n": self.n, "n_off": self.n_off, "n_restored": self.n_restored,
                "candidates": self.candidates, "restore_candidates": self.restorable,
                "switched_off": changed if self.n > 0 else [],
                "restored": changed if self.n < 0 else [], "score": self.score,
                "predicted_score": self.predicted, "hit": self.hit, "spread": self.spread,
                "reason": self.reason, "steps": self.steps}


@dataclass(frozen=True)
class SearchRule:
    """When a candidate is accepted. Scores are measured / target (in the target's own terms: a
    ratio to dense measured alongside for a relative target, ms for an absolute one).

    Steering: the profile's prediction corrected by ``k``, the geometric mean of measured /
    predicted over the last ``window`` measurements (a device the profile misjudges unevenly
    per block needs a correction that follows the search), aimed at ``1 - tolerance / 2``.
    Confirming: a candidate whose estimate lies in the band ``[1 - tolerance, 1]`` (by default
    ``hwbench.deploy.verdict.BAND``) is measured again rather than left; it is accepted once it has
    ``repeats`` valid measurements whose mean +- 2 standard errors lies inside that band; a
    confirmed candidate whose mean is central (inside ``[1 - 0.8 tolerance, 1 - 0.2
    tolerance]``) is measured again until its interval fits, one nearer an edge is re-aimed from
    its own mean. A device too noisy for that within ``max_measurements`` gets no hit, and the
    result says so with the spread it saw."""

    tolerance: float = round(1.0 - BAND[0], 9)  # the verdict's band: 0.10
    repeats: int = 3
    window: int = 3
    max_measurements: int = 14

    @property
    def band(self) -> tuple[float, float]:
        return band_of(self.tolerance)

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
    """Deploy the trained ``net`` on the ``calib`` images (in place: ``hwbench.deploy.network``)
    and find the signed trim ``n`` (> 0: channels off, < 0: always-off channels restored) whose
    score (``measure(net, pattern)`` returns a dict with ``score`` = measured / target and
    ``valid``) is confirmed inside ``rule``'s band. ``predict_score(pattern)``: the profile's
    predicted score; ``predictor`` ranks channels by ms saved.

    Without a confirmed hit after ``rule.max_measurements``, the measured candidate whose
    estimate meets the target most closely (or, if none does, the fastest) is returned with
    ``hit`` False and the reason."""
    net = net.eval()
    loader = DataLoader(calib, batch_size=256)
    means = logit_means(net, loader, device)  # before deploying fixes the always-off biases
    base = deploy(net, calib, device)
    st = _SearchState(net, base, ranking(base, predictor), restore_ranking(base, means), loader,
                      device, predict_score, rule)
    n = st.n_for(rule.aim)
    for _ in range(rule.max_measurements):
        res = measure(*st.candidate(n))
        st.record(n, res)
        est, se = st.estimate(n)
        say(f"  trim: {st.describe(n)} -> measured {res['score']:.3f} x target"
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
    """What ``search`` has measured, and the corrected predictions it steers by. ``n`` is
    signed: the first ``n`` of ``off`` switched off, or the first ``-n`` of ``on`` restored;
    predictions fall as ``n`` grows."""

    def __init__(self, net, base, off, on, loader, device, predict_score, rule: SearchRule):
        self.net, self.base, self.off, self.on = net, base, off, on
        self.loader, self.device, self.predict_score = loader, device, predict_score
        self.rule = rule
        self.built: dict[int, tuple] = {}
        self.preds: dict[int, float] = {}
        self.scores: dict[int, list[float]] = {}
        self.steps: list[dict] = []
        self.log_ratios: list[float] = []  # log(measured / predicted), every measurement

    def changed(self, n: int) -> list[Candidate]:
        return self.off[:n] if n >= 0 else self.on[:-n]

    def describe(self, n: int) -> str:
        some = self.off or self.on
        unit = "channel groups" if some and some[0].step > 1 else "channels"
        if n >= 0:
            return f"{n} of {len(self.off)} {unit} off"
        return f"{-n} of {len(self.on)} always-off {unit} restored"

    def candidate(self, n: int) -> tuple:
        if n not in self.built:
            m = copy.deepcopy(self.net)
            (switch_off if n >= 0 else switch_on)(m, self.changed(n))
            self.built[n] = (m, summarise(m, self.loader, self.device))
        return self.built[n]

    def predicted(self, n: int) -> float:
        if n not in self.preds:
            stand_in = trimmed_pattern if n >= 0 else restored_pattern
            self.preds[n] = self.predict_score(stand_in(self.base, self.changed(n)))
        return self.preds[n]
    def record(self, n: int, res: dict) -> None:
        score, valid = float(res["score"]), bool(res.get("valid", True))
        # every measurement steers (a noisy one still points the right way); only valid ones
        # can confirm a candidate
        self.log_ratios.append(math.log(score / self.predicted(n)))
        if valid:
            self.scores.setdefault(n, []).append(score)
        self.steps.append({"n": n, "predicted_score": self.predicted(n), "score": score,
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
        """Smallest n whose predicted score is at most ``score`` (predictions fall with n):
        every channel that can be switched off if none is, every one restored if all are."""
        a, b = -len(self.on), len(self.off)
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
        return TrimResult(n, len(self.off), len(self.on), self.changed(n), m, pat, est,
                          self.predicted(n), self.steps, hit, self.spread(), reason)

    def fallback(self) -> TrimResult:
        r = self.rule
        why = (f"no candidate confirmed inside [{r.band[0]:.3f}, 1] x target (mean of "
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
        elif est[best] < r.band[0]:
            why = "no candidate reached the band: the slowest under the target is returned; " \
                + why
        return self.result(best, False, why)
