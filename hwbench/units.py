"""Units parsed at the edge: '5ms', '5 ms', '0.005s', '500us' -> seconds."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hwbench.errors import UsageError

_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*$")


def _scaled(text: str, pattern: re.Pattern, scale: dict[str, float], what: str,
            examples: str) -> float:
    """A positive number with one of ``scale``'s units -> seconds; one-line errors."""
    m = pattern.match(str(text))
    if not m:
        raise UsageError(f"cannot parse {what} {text!r}: give a number and a unit, e.g. "
                         f"{examples}")
    value = float(m.group(1)) * scale[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """A positive duration with a unit (s, ms, us) -> seconds; a clear error otherwise."""
    return _scaled(text, _RE, _SCALE, "latency", "5ms, 5 ms, 0.005s or 500us")


_REL = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$")


def parse_target(text: str) -> tuple[float | None, float | None]:
    """A latency target: an absolute duration ('5ms' -> (0.005, None)) or a fraction of the
    device's dense latency ('0.65x' -> (None, 0.65)), resolved against a profile later."""
    m = _REL.match(str(text))
    if m:
        factor = float(m.group(1))
        if not 0 < factor <= 1:
            raise UsageError(f"a relative latency target must be in (0, 1]x of the dense "
                             f"latency, got {text!r}")
        return None, factor
    try:
        return parse_duration(text), None
    except UsageError:
        raise UsageError(f"cannot parse latency {text!r}: give a number and a unit (5ms, 0.005s, "
                         "500us) or a fraction of the dense latency (0.65x)") from None


@dataclass(frozen=True)
class LatencyTarget:
    """A latency target at ``percentile``: absolute (``ms``) or relative (``ratio`` of the dense
    network's latency at that percentile). A relative target is decided on the ratio to the
    dense network measured alongside (interleaved), which cancels machine drift; an absolute
    one in milliseconds."""

    percentile: str = "p90"
    ms: float | None = None
    ratio: float | None = None

    @classmethod
    def parse(cls, target: float | str, percentile: str = "p90") -> LatencyTarget:
        """Seconds (a float), a duration ('5ms') or a fraction ('0.7x')."""
        if not isinstance(target, str):
            return cls(percentile, ms=float(target) * 1e3)
        seconds, factor = parse_target(target)
        return cls(percentile, ms=seconds * 1e3) if seconds is not None else \
            cls(percentile, ratio=factor)

    @property
    def text(self) -> str:
        return f"{self.ratio:g}x" if self.ratio is not None else f"{self.ms:g}ms"

    def ms_for(self, dense_ms: float) -> float:
        """The target in ms when the dense network takes ``dense_ms`` at this percentile."""
        return self.ratio * dense_ms if self.ratio is not None else self.ms

    def score(self, measured_ms: float, dense_ms: float) -> float:
        """Measured / target in the target's own terms: <= 1 meets it."""
        if self.ratio is not None:
            return measured_ms / dense_ms / self.ratio
        return measured_ms / self.ms

    def to_dict(self) -> dict:
        return {"percentile": self.percentile, "ms": self.ms, "ratio": self.ratio,
                "decided_on": "ratio to the dense network measured alongside"
                if self.ratio is not None else "milliseconds"}

_WALL_SCALE = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_WALL = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|sec|min|h)\s*$")


def parse_wall_time(text: str, option: str = "--time-budget") -> float:
    """A positive wall-clock duration with a unit (s, min, h: '90s', '12min', '1.5h') ->
    seconds; a one-line error naming ``option`` otherwise."""
    return _scaled(text, _WALL, _WALL_SCALE, option, "90s, 12min or 1.5h")
