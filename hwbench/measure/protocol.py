"""The one measurement path: every latency hwbench reports or decides on comes from ``measure``.

``measure(engines, inputs, protocol)`` runs the engines interleaved on the same inputs
(``timer.sample_interleaved``), keeps every raw sample, and summarises each engine *for the
quantile the protocol decides on*: its ``valid``, CI fields and ``CI_NOT_MET`` are that
quantile's (``stats.summarise``). Profile sweeps and validation, ``speedup``, ``verify``, trim
candidates and the engine's plan tuning all call it; what differs between them is a
``Protocol`` (written down here, recorded with every result) and the ``Inputs``.

Inputs say what they are: a trained network is timed on real images of its data set
(``{"source": "mnist5k:test", "n": 64, "class_counts": {...}}``); priors and realised patterns
on seeded synthetic images (``{"source": "synthetic", ...}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hwbench.measure.stats import Warn, drift, quantile_ci, summarise
from hwbench.measure.timer import sample_interleaved

DRIFT_LIMIT = 0.10  # the reference probe moving more than this within a measurement: DRIFT


@dataclass(frozen=True)
class Protocol:
    """How long and on what to stop. ``quantile``: the one decided on (0.5, 0.9, 0.99)."""

    quantile: float = 0.5
    ci_target: float | None = 0.02  # relative 95% CI half-width of that quantile
    min_runs: int = 64
    max_time_s: float = 10.0
    warmup: int = 10
    min_warmup_s: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "interleaved": True, "stop": "CI of the decided quantile "
                "(exact order-statistic ranks) or max_time_s, after min_runs rounds"}


# Plan tuning inside the engine: a quick comparison of a block's candidates, no CI needed.
TUNING = Protocol(quantile=0.5, ci_target=None, min_runs=15, max_time_s=0.0, warmup=3,
                  min_warmup_s=0.0)


@dataclass
class Inputs:
    """Batches to cycle through, and the record of where they came from."""

    batches: Sequence[torch.Tensor]
    record: dict = field(default_factory=dict)

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Inputs:
        return Inputs([x.to(device, dtype).contiguous(memory_format=torch.channels_last)
                       for x in self.batches], dict(self.record))


@dataclass
class Measurement:
    """Per engine: the summary of the decided quantile plus ``samples_ms`` (raw)."""

    results: dict[str, dict]
    protocol: dict
    inputs: dict
    warnings: list[dict] = field(default_factory=list)

    def __getitem__(self, name: str) -> dict:
        return self.results[name]

    def at(self, name: str, q: float | None = None) -> float:
        """The estimate (ms) of quantile ``q`` (default: the decided one) of ``name``."""
        q = self.protocol["quantile"] if q is None else q
        return {0.5: self.results[name]["p50_ms"], 0.9: self.results[name]["p90_ms"],
                0.99: self.results[name]["p99_ms"]}[q]

    def ratio(self, name: str, reference: str = "dense") -> dict:
        """``name``'s decided quantile over ``reference``'s, with a conservative 95% interval
        (each end from the two CIs) and whether both summaries are valid."""
        q = self.protocol["quantile"]
        a, b = self.results[name], self.results[reference]
        lo_a, hi_a = quantile_ci(a["samples_ms"], q)
        lo_b, hi_b = quantile_ci(b["samples_ms"], q)
        return {"value": self.at(name) / self.at(reference), "lo": lo_a / hi_b,
                "hi": hi_a / lo_b, "valid": bool(a["valid"] and b["valid"])}


def measure(engines: Mapping[str, Callable[[torch.Tensor], object]], inputs: Inputs,
            protocol: Protocol = Protocol(), device: str | torch.device = "cpu",
            reference: str | None = "dense", where: str = "",
            progress: Callable[[int], None] | None = None) -> Measurement:
    """Time ``engines`` (each called on one input batch) interleaved on ``inputs`` under
    ``protocol``; summaries for the decided quantile, raw samples, warnings (DRIFT from the
    ``reference`` engine when it is among them)."""
    p = protocol
    first: dict[str, float] = {}
    samples = sample_interleaved(engines, inputs.batches, device=device, warmup=p.warmup,
                                 min_warmup_s=p.min_warmup_s, min_runs=p.min_runs,
                                 max_time_s=p.max_time_s, seed=p.seed, ci_target=p.ci_target,
                                 quantile=p.quantile, first_ms=first, progress=progress)
    results, warnings = {}, []
    for name, s in samples.items():
        st = summarise(s, p.ci_target, first.get(name), quantile=p.quantile)
        warnings += [{"code": w, "where": f"{where}:{name}" if where else name,
                      "advice": Warn(w).advice} for w in st.warnings]
        results[name] = {**st.to_dict(), "samples_ms": s}
    if reference in samples and drift(samples[reference]) > DRIFT_LIMIT:
        warnings.append({"code": Warn.DRIFT.value, "where": where or reference,
                         "advice": Warn.DRIFT.advice})
    return Measurement(results, p.to_dict(), dict(inputs.record), warnings)


def measure_segments(pieces: Mapping[str, Callable[[torch.Tensor], Sequence[float]]],
                     inputs: Inputs, protocol: Protocol = Protocol(),
                     device: str | torch.device = "cpu", reference: str | None = "dense",
                     where: str = "", progress: Callable[[int], None] | None = None
                     ) -> Measurement:
    """``measure`` for networks timed piece by piece: each ``pieces[k](x)`` runs one pass and
    returns its pieces' times (ms; ``segment_times``: stem, each block, head). The timer times
    the whole pass, so rounds, stopping rule, validity and warnings are ``measure``'s, decided on
    the pass; every sampled pass's pieces are kept too. Each result adds ``segments_ms`` (raw:
    one row per sampled pass), ``segment_p50_ms`` (per piece, the median) and
    ``segment_ci_ms`` (per piece, the half-width of its median's 95% CI, ms; None where no CI
    exists at this count)."""
    kept: dict[str, list] = {name: [] for name in pieces}

    def timed(name: str) -> Callable[[torch.Tensor], None]:
        fn, out = pieces[name], kept[name]
        return lambda x: out.append([float(v) for v in fn(x)])

    m = measure({name: timed(name) for name in pieces}, inputs, protocol, device,
                reference, where, progress)
    for name, r in m.results.items():
        rows = kept[name][len(kept[name]) - r["n"]:]  # the sampled passes (warm-up dropped)
        cols = np.asarray(rows, dtype=float).T
        cis = [quantile_ci(c, 0.5) for c in cols]
        r["segments_ms"] = rows
        r["segment_p50_ms"] = [float(np.median(c)) for c in cols]
        r["segment_ci_ms"] = [None if np.isnan(lo) else (hi - lo) / 2 for lo, hi in cis]
    return m
