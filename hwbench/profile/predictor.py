"""Device profiles (``hwbench/device-profile@1``): load/save and the latency predictor (the t_d
picker that reads it is ``hwbench.pick.t_d``).

A profile holds, for one device and one set of conditions (arch, stem, input size, batch size,
dtype), a per-block **latency table** measured in context (each block's share of real
end-to-end runs, at a grid of kept-channel counts, with and without a gate), a **sweep** over
t_d, the predictor's **validation**, and any user patterns. Predictions come from the table
alone: stem + head + the sum over blocks of the block's latency at its executed channel count,
linearly interpolated between grid points. Percentiles above p50 scale p50 by the ratio measured
on the sweep. The calibration (``fit_calibration``: a scale, and an offset where it predicts
left-out patterns better), fitted on end-to-end medians of calibration patterns, absorbs what
block times miss (inter-block cache state, the timer's reads, a runtime's per-call cost of each
piece); the validation patterns are not used for fitting, so their error is an out-of-sample
test. The offset is part of the table's constant term (``Predictor.fixed_ms``), so every table
sum below includes it; the scale is applied after.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwbench.engine.graphs import DEFAULT_EXECUTION
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.errors import HwbenchError, UsageError
from hwbench.io import atomic_write_json
from hwbench.nets.gate import PREFIX, SUBSET, GateSpec, strategy
from hwbench.pattern.gate_pattern import GatePattern

SCHEMA = "hwbench/device-profile@1"
PERCENTILES = ("p50", "p90", "p99")
WIDTH_DRAWS = 4096  # Monte-Carlo draws of a width-gated network's per-input latency
_REQUIRED = ("fingerprint", "table", "sweep", "percentile_ratios", "dynamic_executes")


class ProfileError(HwbenchError):
    """A profile file that cannot be used (exit code 2)."""


def dense_ms(profile: dict | None, percentile: str) -> float | None:
    """The dense network's latency at ``percentile`` the profile measured (ms), or None."""
    return (profile or {}).get("references", {}).get("dense", {}).get(f"{percentile}_ms")


def load_profile(path: str | Path) -> dict:
    src = str(path)
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{src}: no such profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{src}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{src}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise ProfileError(f"{src}: field 'schema': expected {SCHEMA!r}, got {got!r}")
    for key in _REQUIRED:
        if key not in obj:
            raise ProfileError(f"{src}: field '{key}' is missing")
    try:
        Predictor(obj)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProfileError(f"{src}: field 'table' is malformed ({exc})") from None
    return obj


def save_profile(profile: dict, path: str | Path) -> Path:
    """Atomic write; an existing file is never overwritten: a -v2, -v3 ... name is taken."""
    path = Path(path)
    candidate, v = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-v{v}{path.suffix}")
        v += 1
    return atomic_write_json(candidate, profile)


def profile_filename(fp: dict) -> str:
    """<device>_<threads>t_<arch>_<stem><size>_b<batch>_<dtype>[_<execution>][_<runtime>]
    [_tile<N>].json (no suffix for eager, eager and tile 1: the name of every profile taken
    before executions, runtimes and tiles existed)."""
    name = re.sub(r"[^a-z0-9]+", "-", str(fp.get("name", fp["type"])).lower()).strip("-")
    suffix = "".join(f"_{v}" for v, default in (
        (fp.get("execution", DEFAULT_EXECUTION), DEFAULT_EXECUTION),
        (fp.get("runtime", DEFAULT_RUNTIME), DEFAULT_RUNTIME)) if v != default)
    tile = int(fp.get("tile", 1) or 1)
    suffix += f"_tile{tile}" if tile > 1 else ""
    return (f"{name}_{fp['threads']}t_{fp['arch']}_{fp['stem']}{fp['input_size']}"
            f"_b{fp['batch_size']}_{fp['dtype']}{suffix}.json")


def interp(x: torch.Tensor, grid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``values(grid)`` at ``x`` (a tensor of any shape, elementwise),
    differentiable in ``x``; the end segments extend linearly (the grid spans 0..channels, so
    x never leaves it)."""
    i = torch.searchsorted(grid, x.detach().reshape(-1).contiguous(), right=True)
    i = i.clamp(1, len(grid) - 1).reshape(x.shape)
    # take, not grid[i]: indexing with a 0-dim tensor (a scalar x) reads it to the host
    x0, x1, y0, y1 = grid.take(i - 1), grid.take(i), values.take(i - 1), values.take(i)
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class BlockTable:
    """One block's measured latency (ms) at ``grid`` kept channels, without/with a gate."""
    grid: torch.Tensor
    plain: torch.Tensor
    gated: torch.Tensor


def fit_calibration(table_ms: list[float], ratios: list[float], floor_ms: float) -> dict:
    """The calibration from table sums to measured latency, fitted on patterns measured end to
    end (``ratios``: their p50 as ratios to the dense probe of that phase; ``table_ms``: their
    table sums). Two models, ``ratio = s * (table + c)``:

    - ``scale``: c = 0, s the median of ratio / table (a table whose pieces are timed in
      context, as the engine's are);
    - ``affine``: least squares in (table, ratio), c = intercept / slope: a table whose pieces
      each pay a fixed cost the whole network does not (a runtime's per-call overhead and its
      layout conversions at every piece boundary; block outputs are never pruned, so that cost
      does not depend on the pattern).

    The model kept is the one with the smaller mean leave-one-out error (|predicted / measured
    - 1| of each pattern from a fit on the others); affine needs 4 patterns, a positive slope
    and ``floor_ms + c > 0`` (``floor_ms``: the table of the emptiest network) to be a
    candidate. Returns ``model``, ``s`` (per table ms, in dense-probe units), ``offset_ms`` (c)
    and the leave-one-out errors."""
    t, r = np.asarray(table_ms, float), np.asarray(ratios, float)

    def scale(ti, ri):
        return float(np.median(ri / ti)), 0.0

    def affine(ti, ri):
        a, b = np.polyfit(ti, ri, 1)
        return (float(a), float(b / a)) if a > 0 and floor_ms + b / a > 0 else (None, None)

    loo: dict[str, float] = {}
    for name, fit in (("scale", scale), ("affine", affine)):
        if len(t) < (4 if name == "affine" else 2):
            continue
        errs = []
        for i in range(len(t)):
            keep = np.arange(len(t)) != i
            s_, c_ = fit(t[keep], r[keep])
            errs.append(abs(s_ * (t[i] + c_) / r[i] - 1) if s_ is not None else np.inf)
        loo[name] = float(np.mean(errs))
    model = "affine" if loo.get("affine", np.inf) < loo.get("scale", np.inf) else "scale"
    if len(t) == 0:
        return {"model": "scale", "s": None, "offset_ms": 0.0, "loo_error": loo}
    s_, c_ = affine(t, r) if model == "affine" else (None, None)
    if s_ is None:  # the fit on every pattern fails the guard its left-out fits passed: scale
        model, (s_, c_) = "scale", scale(t, r)
    return {"model": model, "s": s_, "offset_ms": c_, "loo_error": loo}


class Predictor:
    """Latency of a pattern on the profiled device, from the table alone (no network runs).

    One implementation serves the CLI (``hwbench predict``, ``pick``, ``trim``) and training
    (``budget.LatencyEstimate``): ``table_sum`` is written in torch and is differentiable in the
    channel counts; for a pattern it is evaluated without gradients."""
    def __init__(self, profile: dict):
        fp = profile["fingerprint"]
        self.arch, self.stem, self.input_size = fp["arch"], fp["stem"], int(fp["input_size"])
        t = profile["table"]
        self.fixed_ms = float(t["stem_ms"]) + float(t["head_ms"])
        self.names = [b["name"] for b in t["blocks"]]
        self.blocks = []
        for b in t["blocks"]:
            grid, plain, gated = (torch.as_tensor(b[k], dtype=torch.float64)
                                  for k in ("grid", "plain_ms", "gated_ms"))
            if not (len(grid) == len(plain) == len(gated)) or bool((grid.diff() <= 0).any()):
                raise ValueError("grid and latencies must have equal lengths, grid increasing")
            self.blocks.append(BlockTable(grid, plain, gated))
        self.executes = list(profile["dynamic_executes"])
        cal = profile.get("calibration", {})
        self.scale = float(cal.get("scale", 1.0))
        # the affine calibration's offset (table ms; 0 for scale-only and older profiles): one
        # constant of the table, so every use of table_sum (CLI, training's budget) has it
        self.offset_ms = float(cal.get("offset_ms") or 0.0)
        self.fixed_ms += self.offset_ms
        self.ratios = {k: float(v) for k, v in profile["percentile_ratios"].items()}
        self.ratios["p50"] = 1.0

    def check(self, pattern: GatePattern, source: str = "pattern") -> None:
        mine = (self.arch, self.stem, self.input_size)
        theirs = (pattern.arch, pattern.stem, pattern.input_size)
        if mine != theirs:
            raise UsageError(f"{source} is for {theirs[0]}/{theirs[1]}/{theirs[2]}px, the profile "
                             f"for {mine[0]}/{mine[1]}/{mine[2]}px")

    def table_sum(self, channels: list[torch.Tensor], gated: list[bool],
                  tables: list[BlockTable] | None = None) -> torch.Tensor:
        """stem + head + sum over blocks of the table at the executed channel counts (ms,
        before the calibration's scale); ``tables``: the same tables on another device."""
        tables = tables or self.blocks
        total = torch.zeros((), dtype=torch.float64, device=tables[0].grid.device)
        for b, k, g in zip(tables, channels, gated):
            total = total + interp(k.to(torch.float64), b.grid, b.gated if g else b.plain)
        return self.fixed_ms + total

    def block_ms(self, i: int, channels: float, gated: bool) -> float:
        b = self.blocks[i]
        with torch.no_grad():
            return float(interp(torch.tensor(float(channels), dtype=torch.float64), b.grid,
                                b.gated if gated else b.plain))

    def executed(self, pattern: GatePattern) -> tuple[list[torch.Tensor], list[bool]]:
        """Per block, the channels the compact engine executes for ``pattern``: the expected
        number on where it skips off dynamic channels, every kept one where it masks them."""
        ks, gated = [], []
        for lp, how in zip(pattern.layers, self.executes):
            k = lp.always_on + lp.dynamic * (lp.dynamic_on_rate if how == "expected" else 1.0)
            ks.append(torch.tensor(float(k), dtype=torch.float64))
            gated.append(lp.dynamic > 0)
        return ks, gated

    def p50_ms(self, pattern: GatePattern) -> float:
        return latency_kind(pattern.gate).p50(self, pattern)

    def table_ms(self, pattern: GatePattern) -> float:
        """The table's sum for ``pattern``, before the calibration's scale."""
        self.check(pattern)
        with torch.no_grad():
            return float(self.table_sum(*self.executed(pattern)))

    def thin_ms(self, widths: list[int], percentile: str = "p50") -> float:
        """A thinner dense network (``--width-mult``: block i runs ``widths[i]`` channels, no
        gate): stem + head + each block's plain table at its width, times the calibration scale
        and the sweep's percentile ratio. The table's plain entries are the time of exactly
        such a block (a compacted one of that width), so this is the channel pattern's rule."""
        if percentile not in PERCENTILES:
            raise UsageError(f"unknown percentile {percentile!r}; use p50, p90 or p99")
        if len(widths) != len(self.blocks):
            raise UsageError(f"{len(widths)} widths for the profile's {len(self.blocks)} blocks")
        ks = [torch.tensor(float(w), dtype=torch.float64) for w in widths]
        with torch.no_grad():
            table = float(self.table_sum(ks, [False] * len(ks)))
        return self.scale * table * self.ratios[percentile]

    def predict(self, pattern: GatePattern, percentile: str = "p50") -> float:
        if percentile not in PERCENTILES:
            raise UsageError(f"unknown percentile {percentile!r}; use p50, p90 or p99")
        return latency_kind(pattern.gate).predict(self, pattern, percentile)

    def width_layers(self, pattern: GatePattern) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block of a width pattern: (table ms at each width that occurs, its share of
        inputs). The gated table where the block's width varies (its gate runs), the plain one
        where every input keeps the same width (the engine drops a decided gate), as for
        channel patterns. A block the profile says runs every kept channel (``executes`` not
        ``expected``) runs its widest kept width for every input."""
        out = []
        for lp, how, b in zip(pattern.layers, self.executes, self.blocks):
            pairs = lp.widths()
            if how != "expected":
                pairs = [(lp.channels - lp.always_off, 1.0)]
            w = torch.tensor([float(k) for k, _ in pairs], dtype=torch.float64)
            share = torch.tensor([h for _, h in pairs], dtype=torch.float64)
            out.append((interp(w, b.grid, b.gated if lp.dynamic > 0 else b.plain),
                        share / share.sum()))
        return out

    def width_distribution(self, pattern: GatePattern, draws: int = WIDTH_DRAWS,
                           seed: int = 0) -> torch.Tensor:
        """(draws,) per-input latency (ms, before the calibration's scale) of a width-gated network:
        stem + head + per block the table at that input's width. Layers are taken as
        independent (a pattern holds each layer's marginal histogram, not their joint); the
        draws are a seeded Latin-hypercube sample (each layer's widths in exact proportion
        up to 1 / draws, paired across layers by independent random permutations)."""
        self.check(pattern)
        gen = torch.Generator().manual_seed(seed)
        u = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
        total = torch.full((draws,), self.fixed_ms, dtype=torch.float64)
        for ms, share in self.width_layers(pattern):
            cdf = share.cumsum(0)
            idx = torch.searchsorted(cdf, u[torch.randperm(draws, generator=gen)], right=True)
            total = total + ms[idx.clamp(max=len(ms) - 1)]
        return total

    def noise_factor(self, u: torch.Tensor) -> torch.Tensor:
        """The profile's timing noise of one fixed input as a factor at quantile ``u``:
        piecewise linear through (0.5, 1), (0.9, p90/p50), (0.99, p99/p50) as measured on the
        sweep, 1 below the median and p99/p50 above the 99th percentile (the tails outside
        what the profile measured are not extrapolated)."""
        knots = torch.tensor([0.0, 0.5, 0.9, 0.99, 1.0], dtype=torch.float64)
        vals = torch.tensor([1.0, 1.0, self.ratios["p90"], self.ratios["p99"],
                             self.ratios["p99"]], dtype=torch.float64)
        return interp(u, knots, vals)

    def width_percentiles(self, pattern: GatePattern, draws: int = WIDTH_DRAWS,
                          seed: int = 0) -> dict[str, float]:
        """p50/p90/p99 (ms) of a width-gated network on the profiled device: the per-input
        latency (``width_distribution``) times an independent timing-noise factor
        (``noise_factor``), times the calibration scale. Where every block keeps one width,
        the latency is one number and the result is exactly scale x table sum x the measured
        percentile ratio, as for a channel pattern."""
        lat = self.width_distribution(pattern, draws, seed)
        if float(lat.max() - lat.min()) <= 1e-12 * float(lat.abs().max()):
            return {q: self.scale * float(lat[0]) * self.ratios[q] for q in PERCENTILES}
        gen = torch.Generator().manual_seed(seed + 1)
        u = (torch.randperm(draws, generator=gen).to(torch.float64) + 0.5) / draws
        total = lat * self.noise_factor(u)
        qs = torch.quantile(total, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
        return {q: self.scale * float(v) for q, v in zip(PERCENTILES, qs)}


STEP_CANDIDATES = (8, 16, 32)


def table_step(profile: dict, candidates: tuple[int, ...] = STEP_CANDIDATES,
               fine: int = 4, margin: float = 0.95) -> tuple[int, float] | None:
    """The channel step of the device's latency staircase, read from the profile's table: per
    candidate G, the least-squares fit latency = a + b * ceil(k / G) over the blocks whose grid
    is fine (step <= ``fine`` channels; both tables, k > 0), as a share of a straight line's
    residual. The best G and its share when it beats the line by ``margin``; None when no step
    shows (a coarse table, or a device whose cost grows smoothly). oneDNN on AVX-512 blocks
    channels by 16: that is the answer expected on such a CPU."""
    series = []
    for b in profile["table"]["blocks"]:
        g = np.asarray(b["grid"], dtype=float)
        if len(g) > 2 and g[1] - g[0] <= fine:
            for key in ("plain_ms", "gated_ms"):
                y = np.asarray(b[key], dtype=float)
                series.append((g[g > 0], y[g > 0]))
    if not series:
        return None

    def rss(design) -> float:
        total = 0.0
        for g, y in series:
            x = np.stack([np.ones_like(g), design(g)], 1)
            coef = np.linalg.lstsq(x, y, rcond=None)[0]
            total += float(((x @ coef - y) ** 2).sum())
        return total

    line = rss(lambda g: g)
    if line <= 0:
        return None
    share, step = min((rss(lambda g, c=c: np.ceil(g / c)) / line, c) for c in candidates)
    return (step, share) if share < margin else None


class SubsetLatency:
    """The predictor's part of a gate kind whose decisions keep any subset (channel gates):
    the table at the expected executed channels, times the sweep's percentile ratio."""

    def p50(self, pred: Predictor, pattern: GatePattern) -> float:
        return pred.scale * pred.table_ms(pattern)

    def predict(self, pred: Predictor, pattern: GatePattern, percentile: str) -> float:
        return self.p50(pred, pattern) * pred.ratios[percentile]


class PrefixLatency(SubsetLatency):
    """Prefix decisions (width gates): the percentiles of the per-input latency distribution
    (``Predictor.width_percentiles``)."""

    def p50(self, pred: Predictor, pattern: GatePattern) -> float:
        return self.predict(pred, pattern, "p50")

    def predict(self, pred: Predictor, pattern: GatePattern, percentile: str) -> float:
        return pred.width_percentiles(pattern)[percentile]


LATENCY = {SUBSET: SubsetLatency(), PREFIX: PrefixLatency()}


def latency_kind(spec: GateSpec) -> SubsetLatency:
    """The predictor's strategy for ``spec``'s gate kind."""
    return strategy(LATENCY, spec, "the latency predictor")
