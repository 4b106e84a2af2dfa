"""The t_d pick: which ``t_d`` a profile predicts to meet a latency target (``pick``,
``train --target-latency``, verify's suggestion and the report's summary all use this one rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwbench.errors import HwbenchError
from hwbench.pattern.gate_pattern import synthesise
from hwbench.profile.predictor import Predictor, dense_ms


class Unattainable(HwbenchError):
    """No network meets the latency target on this device: bad input, refused before any work
    (exit code 2, a usage error's)."""

    exit_code = 2


# The one rule by which hwbench decides which t_d meets a latency target on a profile: ``pick``,
# ``train --target-latency``, verify's suggestion and the report's summary all call pick_t_d.
RULE = ("the largest t_d on a 0.01 grid, within the profiled sweep, whose predicted latency at "
        "the percentile (the profile's latency table, the prior pattern, as a monotone "
        "envelope: no t_d counts as faster than a smaller one) meets the target")


@dataclass
class Pick:
    t_d: float
    predicted_ms: float  # the envelope at t_d: what the decision was made on
    target_ms: float
    percentile: str
    note: str
    rule: str = RULE

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(t_d, ms) points as a non-decreasing function of t_d: each point's ms raised to the
    largest at any smaller t_d (a table can predict a larger t_d faster than a smaller one: the
    measured steps are not monotone; no decision may rest on that). Ascending t_d."""
    out, top = [], -float("inf")
    for t_d, ms in sorted(points):
        top = max(top, ms)
        out.append((t_d, top))
    return out


def pick_t_d(profile: dict, target_s: float, percentile: str = "p90",
             step: float = 0.01) -> Pick:
    """``RULE``: the largest t_d (on a ``step`` grid, within the profiled sweep's range: the
    predictor is not trusted below the smallest measured t_d) whose prior pattern's predicted
    latency at ``percentile``, as a monotone envelope (``envelope``), meets ``target_s``.
    Raises ``Unattainable`` (exit 2) when none does."""
    pred = Predictor(profile)
    target_ms = target_s * 1e3
    fp = profile["fingerprint"]
    t_min = min((s["t_d"] for s in profile.get("sweep", [])), default=step)
    points = []
    for i in range(int(round(1 / step)), 0, -1):
        t_d = round(i * step, 6)
        if t_d < t_min - 1e-9:
            break
        try:
            pattern = synthesise(fp["arch"], fp["stem"], int(fp["input_size"]), t_d)
        except HwbenchError:
            break  # below the network's smallest reachable MACs ratio
        points.append((t_d, pred.predict(pattern, percentile)))
    env = envelope(points)
    meets = [(t, ms) for t, ms in env if ms <= target_ms]
    if not meets:
        t_fast, fastest = env[0]
        raise Unattainable(
            f"target {target_ms:g} ms ({percentile}) is below the fastest this device reaches: "
            f"{fastest:.3f} ms at t_d {t_fast:g} ({fp['name']}, batch {fp['batch_size']}; the "
            f"profile covers t_d {t_min:g} to 1)")
    t_d, ms = max(meets)
    note = ""
    dense = dense_ms(profile, percentile)
    if t_d >= 1.0:
        note = "the whole network meets the target: no gating needed"
        if dense is not None:
            note += f" (dense measured {percentile} {dense:.3f} ms)"
    return Pick(t_d, ms, target_ms, percentile, note)
