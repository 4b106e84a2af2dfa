"""The verdict on a network delivered at a latency target, and the exit codes that carry it.

A network is worth deploying when its measured latency lands in the band ``[0.90, 1.00] x
target`` (scores are measured / target in the target's own terms: a ratio to the dense network
measured alongside for ``0.67x``, ms for ``5ms``): over it the target is missed; far under it
the latency the target allows is left unused, and with it the accuracy those channels would
buy. A network whose gated kNN top-1 is below the randomly initialised network's is not worth
deploying at any latency: that verdict wins over every latency verdict.

Pure: no torch, no files; ``hwbench --help`` reads ``exit_help`` from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MET, UNDERSHOT, MISSED, NO_DECISION, DEGRADED = \
    "MET", "UNDERSHOT", "MISSED", "NO DECISION", "DEGRADED"
EXIT_CODES = {MET: 0, UNDERSHOT: 4, MISSED: 4, NO_DECISION: 5, DEGRADED: 6}
EXIT_USAGE = 2  # hwbench.errors.UsageError: a one-line error before any long work
EXIT_UNATTAINABLE = EXIT_USAGE  # hwbench.pick.t_d.Unattainable: bad input, like a usage error
BAND = (0.90, 1.00)  # the landing band, in scores (measured / target)

# (exit code, what it means), in the order ``--help`` and README list them
EXIT_MEANINGS = (
    (EXIT_CODES[MET], f"MET: measured inside the band [{BAND[0]:.2f}, {BAND[1]:.2f}] x target"),
    (EXIT_CODES[UNDERSHOT], "UNDERSHOT: measured under the band (latency left unused) or "
                            "MISSED: measured over the target"),
    (EXIT_CODES[NO_DECISION], "NO DECISION: no valid measurement of the decided percentile"),
    (EXIT_CODES[DEGRADED], "DEGRADED: gated kNN top-1 below the randomly initialised network's"),
    (EXIT_USAGE, "a usage error, or a target below the profile's fastest network (one line, "
                 "before any work)"),
)


@dataclass(frozen=True)
class Verdict:
    name: str  # one of MET, UNDERSHOT, MISSED, NO DECISION, DEGRADED
    exit_code: int
    message: str  # why, in a few words (no verdict name)


def band_of(tolerance: float) -> tuple[float, float]:
    """The band ``[1 - tolerance, 1]`` (scores)."""
    return (1.0 - tolerance, 1.0)


def verdict(score: float | None, valid: bool, band: tuple[float, float] = BAND,
            knn_delivered: float | None = None, knn_random: float | None = None) -> Verdict:
    """The verdict on a delivered network: ``score`` = measured / target of the decided
    percentile (``valid``: its measurement is), ``band`` = (low, high) scores that land;
    ``knn_delivered`` / ``knn_random``: gated kNN top-1 (%) of the delivered and of the randomly
    initialised network, same protocol and test split (either None: not judged)."""
    latency = _latency(score, valid, band)
    if knn_delivered is not None and knn_random is not None and knn_delivered < knn_random:
        return Verdict(DEGRADED, EXIT_CODES[DEGRADED],
                       f"gated kNN top-1 {knn_delivered:.1f} % is below the randomly "
                       f"initialised network's {knn_random:.1f} % (latency: {latency.name})")
    return latency


def _latency(score: float | None, valid: bool, band: tuple[float, float]) -> Verdict:
    low, high = band
    if not valid or score is None or not math.isfinite(score):
        return Verdict(NO_DECISION, EXIT_CODES[NO_DECISION],
                       "no valid measurement of the decided percentile: nothing is decided on it")
    if score > high:
        return Verdict(MISSED, EXIT_CODES[MISSED],
                       f"{100 * (score - 1):+.1f} % over the target")
    if score < low:
        return Verdict(UNDERSHOT, EXIT_CODES[UNDERSHOT],
                       f"{100 * (1 - score):.1f} % of the latency budget unused (band "
                       f"{low:.2f}-{high:.2f} x target)")
    return Verdict(MET, EXIT_CODES[MET], f"{100 * (score - 1):+.1f} % from the target, inside "
                                         f"the band {low:.2f}-{high:.2f} x target")


def exit_help(codes: tuple[int, ...] | None = None) -> str:
    """The exit codes ``codes`` (default: all) as a ``--help`` epilog (click keeps a ``\\b``
    block as written)."""
    rows = [f"  {code}  {text}" for code, text in EXIT_MEANINGS if codes is None or code in codes]
    return "\b\nExit codes:\n" + "\n".join(rows)
