"""Tidy tables of every number a report plots: one row per device x t_d x mode x ... .

Figures are drawn from these tables only, so each figure's numbers are exactly its CSV. Rows are
sorted and floats written with ``repr``, so the same inputs give byte-identical CSVs.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwbench.data import info
from hwbench.pattern.gate_pattern import GatePattern
from hwbench.pattern.macs import pattern_report
from hwbench.pick.t_d import Unattainable, pick_t_d
from hwbench.report.columns import RUNTIME_T_D, SCHEMAS
from hwbench.report.inputs import EAGER_LABEL, Inputs, Profile, Run, record_label


@dataclass
class Table:
    name: str
    rows: list[dict]

    @property
    def columns(self) -> list[str]:
        return list(SCHEMAS[self.name][1])

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({c: _cell(r.get(c)) for c in self.columns})
        return buf.getvalue()


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(round(v, 9))
    return v


def _sorted(rows: list[dict], keys: list[str]) -> list[dict]:
    def key(r):
        return tuple((r.get(k) is None, str(type(r.get(k)).__name__),
                      r.get(k) if r.get(k) is not None else 0) for k in keys)
    return sorted(rows, key=key)


def _pct(samples: list[float], q: float) -> float | None:
    return float(np.percentile(samples, q)) if samples else None


def _energy_label(point: dict) -> str:
    return f"{'measured' if point.get('measured') else 'estimated'} ({point.get('method')})"


def profile_for(run: Run, inputs: Inputs) -> Profile | None:
    """The profile a run's target decision used, when it is among the inputs."""
    path = ((run.config.get("decision") or {}).get("profile"))
    if not path:
        return None
    for p in inputs.profiles:
        if Path(p.path).resolve() == Path(path).resolve() or Path(p.path).name == Path(path).name:
            return p
    return None


def _verify_profile(run: Run, inputs: Inputs) -> Profile | None:
    """The profile verify compared against (else the one the run's decision used)."""
    v = run.verify or {}
    for p in inputs.profiles:
        if v.get("profile") and Path(v["profile"]).name == Path(p.path).name:
            return p
    return profile_for(run, inputs)


def _device_of_verify(run: Run, inputs: Inputs) -> str | None:
    """The series of a run's verified point: its profile's, else the machine verify names, with
    the runtime it was timed on when not eager (never merged into the eager series)."""
    prof = _verify_profile(run, inputs)
    if prof is not None:
        return prof.device
    v = run.verify or {}
    rec = v.get("runtime")
    if v.get("device") is None or record_label(rec) == EAGER_LABEL:
        return v.get("device")
    return f"{v['device']} · {record_label(rec)}"


def latency(inputs: Inputs) -> Table:
    rows = []
    for p in inputs.profiles:
        fp = p.fingerprint
        base = dict(device=p.device, hardware=p.hardware, runtime=p.runtime_label,
                    setting=p.setting, profile=p.path,
                    batch_size=fp.get("batch_size"),
                    input_size=fp.get("input_size"))

        def stats(m):
            return dict(n=m.get("n"), p10_ms=_pct(m.get("samples_ms") or [], 10),
                        p50_ms=m.get("p50_ms"), p90_ms=m.get("p90_ms"), p99_ms=m.get("p99_ms"),
                        valid=m.get("valid"))
        for mode, m in (p.data.get("references") or {}).items():
            rows.append({**base, "mode": mode, "t_d": None, "macs_ratio": 1.0, **stats(m)})
        for s in p.data["sweep"]:
            rows.append({**base, "mode": s.get("mode", "dynamic"), "t_d": s["t_d"],
                         "macs_ratio": s["macs_ratio"], **stats(s["measured"])})
    return Table("latency", _sorted(rows, ["device", "setting", "profile", "mode", "t_d"]))


def targets(inputs: Inputs) -> Table:
    rows = []
    for r in inputs.runs:
        d = r.config.get("decision") or {}
        if not d.get("target_ms"):
            continue
        prof = profile_for(r, inputs)
        v = r.verify or {}
        pct = d.get("percentile", "p90")
        measured = (v.get("measured") or {}).get(f"{pct}_ms")
        target_ms = v.get("target_ms") or d["target_ms"]
        met, error = _decision(v, measured, target_ms)
        rows.append(dict(run=r.name, device=prof.device if prof else d.get("device"),
                         setting=prof.setting if prof else None,
                         profile=prof.path if prof else d.get("profile"),
                         target_ms=target_ms, percentile=pct, t_d=r.t_d,
                         predicted_ms=d.get("predicted_ms"), measured_ms=measured,
                         met=met, error=error,
                         budget=r.config.get("budget", "flops"),
                         gated_top1_pct=r.evaluated.get(("knn_top1", "gated")), stage="trained"))
        for t in r.trims:
            ts, tv = t["summary"], t["verify"]
            tp = tv.get("percentile", pct)
            got = (tv.get("measured") or {}).get(f"{tp}_ms")
            met, error = _decision(tv, got, tv["target_ms"])
            rows.append(dict(run=f"{r.name}/{t['name']}", device=rows[-1]["device"],
                             setting=rows[-1]["setting"], profile=tv.get("profile"),
                             target_ms=tv["target_ms"], percentile=tp, t_d=r.t_d,
                             predicted_ms=(tv.get("predicted") or {}).get(f"{tp}_ms"),
                             measured_ms=got, met=met, error=error,
                             budget=r.config.get("budget", "flops"),
                             gated_top1_pct=ts.get("knn_top1_gated"), stage="trimmed"))
    return Table("targets", _sorted(rows, ["device", "run"]))


def delivered(inputs: Inputs) -> Table:
    """What each latency-target run delivered: final.json's verdict, the latency beside the
    accuracy (gated, dense stream, random init) and the baseline beside both."""
    rows = []
    for r in inputs.runs:
        f = r.final
        if not f:
            continue
        t, m, k = f["target"], f["measured"], f["knn_top1"]
        b = f.get("baseline") or {}
        rows.append(dict(
            run=r.name, network=f["network"], verdict=f["verdict"],
            target=f"{t['ratio']:g}x" if t.get("ratio") is not None else f"{t['ms']:g}ms",
            percentile=t["percentile"], band=f"{f['band'][0]:g}-{f['band'][1]:g}",
            measured_ratio=m.get("ratio"), measured_ms=m.get("ms"), runtime=m.get("runtime"),
            knn_gated=k.get("gated"), knn_dense_stream=k.get("dense_stream"),
            knn_random_init=k.get("random_init"),
            baseline=(f"{b['method']} (width x {b['width_mult']:g})" if b else None),
            baseline_measured_ratio=(b.get("measured") or {}).get("ratio") if b else None,
            baseline_verdict=b.get("verdict"), baseline_knn=b.get("knn_top1")))
    return Table("delivered", _sorted(rows, ["run"]))


def _decision(v: dict, measured: float | None, target_ms: float) -> tuple:
    """(met, error) as verify decided them (on a valid measurement, in the target's own terms:
    a ratio for a relative target); older verify files: measured vs target in ms."""
    if "score" in v:
        return (bool(v["met"]) if v.get("valid", True) else None), v["score"] - 1.0
    if measured is None:
        return None, None
    return bool(measured <= target_ms), measured / target_ms - 1


def macs_vs_latency(inputs: Inputs) -> Table:
    rows = []
    for p in inputs.profiles:
        refs = p.data.get("references") or {}
        series = dict(device=p.device, hardware=p.hardware, runtime=p.runtime_label,
                      setting=p.setting)
        if refs.get("masked") and refs.get("dense"):
            rows.append(dict(**series, mode="masked", source="masked", pattern="all on",
                             macs_ratio=1.0, latency_ratio=refs["masked"]["p50_ms"]
                             / refs["dense"]["p50_ms"]))
        for s in p.data["sweep"]:
            rows.append(dict(**series, mode=s.get("mode", "dynamic"), source="sweep",
                             pattern=f"t_d={s['t_d']:g}", macs_ratio=s["macs_ratio"],
                             latency_ratio=s["ratio_to_dense"]))
        for s in (p.data.get("validation") or {}).get("points", []):
            rows.append(dict(**series, mode="dynamic", source="validation",
                             pattern=s["pattern"], macs_ratio=s["macs_ratio"],
                             latency_ratio=s["ratio_to_dense"]))
    for r in inputs.runs:
        v = r.verify or {}
        ratio = _learned_ratio(v)
        macs = v.get("macs_ratio")
        if macs is None and r.pattern:
            macs = _pattern_macs_ratio(r.pattern)
        if ratio is not None and macs is not None:
            prof = _verify_profile(r, inputs)
            rows.append(dict(device=_device_of_verify(r, inputs), mode=v.get("mode", "dynamic"),
                             hardware=prof.hardware if prof else v.get("device"),
                             runtime=prof.runtime_label if prof else record_label(
                                 v.get("runtime")),
                             setting=prof.setting if prof else None,
                             source="learned", pattern=r.name, macs_ratio=macs,
                             latency_ratio=ratio))
    return Table("macs_vs_latency", _sorted(rows, ["device", "setting", "source", "mode",
                                                    "pattern"]))


def _learned_ratio(v: dict) -> float | None:
    if v.get("latency_ratio_p50") is not None:
        return float(v["latency_ratio_p50"])
    m, d = (v.get("measured") or {}).get("p50_ms"), v.get("dense_p50_ms")
    return m / d if m and d else None


def _pattern_macs_ratio(pattern: dict) -> float | None:
    try:
        return pattern_report(GatePattern.from_dict(pattern)).ratio
    except Exception:  # a pattern this version cannot read: leave the point out
        return None


def energy(inputs: Inputs) -> Table:
    rows = []
    for p in inputs.profiles:
        e = p.data.get("energy") or {}
        for pt in e.get("points", []):
            for q, key in (("total", "energy_j_total"), ("above_idle", "energy_j_above_idle")):
                if pt.get(key) is None:
                    continue
                rows.append(dict(device=p.device, setting=p.setting, mode=pt["mode"],
                                 t_d=pt.get("t_d"),
                                 quantity=q, energy_j=pt[key], method=pt.get("method"),
                                 measured=bool(pt.get("measured")), window_s=pt.get("window_s"),
                                 inferences=pt.get("inferences"), idle_w=e.get("idle_w")))
    return Table("energy", _sorted(rows, ["device", "setting", "quantity", "mode", "t_d"]))


def _energy_at(p: Profile, mode: str, t_d) -> dict | None:
    for pt in (p.data.get("energy") or {}).get("points", []):
        if pt["mode"] == mode and (t_d is None or pt.get("t_d") is not None
                                   and abs(pt["t_d"] - t_d) < 1e-9):
            return pt
    return None


def accuracy(inputs: Inputs) -> Table:
    rows = []
    for r in inputs.runs:
        acc = r.evaluated
        for (metric, stream), top1 in sorted(acc.items()):
            base = dict(run=r.name, dataset=r.config.get("dataset"), t_d=r.t_d, stream=stream,
                        metric=metric, top1_pct=top1)
            placed = False
            for p in inputs.profiles:
                if p.conditions != (r.config.get("arch"), _stem(r), _size(r)):
                    continue
                if stream == "dense":
                    ref = (p.data.get("references") or {}).get("dense") or {}
                    pt = _energy_at(p, "dense", None)
                    rows.append({**base, "device": p.device, "setting": p.setting,
                                 "p90_ms": ref.get("p90_ms"),
                                 "latency_source": "profile-dense",
                                 "energy_j": pt and pt.get("energy_j_total"),
                                 "energy_source": pt and _energy_label(pt)})
                    placed = True
            if stream == "gated" and r.verify and (r.verify.get("measured") or {}).get("p90_ms"):
                dev = _device_of_verify(r, inputs)
                prof = _verify_profile(r, inputs)
                pt = _energy_at(prof, "dynamic", r.t_d) if prof else None
                rows.append({**base, "device": dev, "setting": prof.setting if prof else None,
                             "p90_ms": r.verify["measured"]["p90_ms"],
                             "latency_source": "verify",
                             "energy_j": pt and pt.get("energy_j_total"),
                             "energy_source": pt and f"{_energy_label(pt)}, prior pattern"})
                placed = True
            if not placed:
                rows.append({**base, "device": None, "p90_ms": None, "latency_source": None})
    return Table("accuracy", _sorted(rows, ["run", "stream", "metric", "device"]))


def _stem(r: Run) -> str | None:
    try:
        return info(r.config["dataset"]).stem
    except Exception:
        return None


def _size(r: Run) -> int | None:
    if r.pattern:
        return r.pattern.get("input_size")
    try:
        return info(r.config["dataset"]).input_size
    except Exception:
        return None


def channels(inputs: Inputs) -> Table:
    rows = []
    for r in inputs.runs:
        if not r.pattern:
            continue
        for layer in r.pattern.get("layers", []):
            n = layer["channels"]
            on, off = layer.get("always_on", 0), layer.get("always_off", 0)
            dyn = layer.get("dynamic", n - on - off)
            for group, c in (("always_off", off), ("always_on", on), ("dynamic", dyn)):
                rows.append(dict(run=r.name, t_d=r.t_d, layer=layer["name"], group=group,
                                 channels=c, fraction=c / n if n else None))
    order = {"always_off": 0, "always_on": 1, "dynamic": 2}
    return Table("channels", sorted(rows, key=lambda x: (x["run"], _layer_key(x["layer"]),
                                                         order[x["group"]])))


def _layer_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in name.replace("layer", "").split("."))


def training_energy(inputs: Inputs) -> Table:
    rows = []
    for r in inputs.runs:
        e = r.energy or {}
        total = e.get("total")
        if not total:
            continue
        methods: dict[str, str] = {}
        for seg in e.get("segments", []):  # a resumed run: one segment per launch
            for comp, m in (seg.get("methods") or {}).items():
                methods[comp] = m if methods.get(comp, m) == m else "mixed across launches"
        country = next((s.get("country") for s in e.get("segments", [])), None)
        for comp in ("cpu", "gpu", "ram"):
            rows.append(dict(run=r.name, component=comp, energy_kwh=total.get(f"{comp}_kwh"),
                             method=methods.get(comp, total.get("label")), country=country,
                             emissions_kg_co2e=total.get("emissions_kg_co2e"),
                             duration_s=total.get("duration_s")))
    return Table("training_energy", rows)


CURVE_METRICS = ("loss", "vicreg", "sparsity", "bound", "macs_ratio", "deployed_macs_ratio",
                 "eval_macs_ratio", "knn_top1_dense", "knn_top1_gated", "latency_ms_0",
                 "latency_ms_1")


def training_curves(inputs: Inputs) -> Table:
    rows = []
    for r in inputs.runs:
        for m in r.metrics:
            for k in CURVE_METRICS:
                if m.get(k) is not None:
                    rows.append(dict(run=r.name, epoch=m["epoch"], metric=k, value=float(m[k])))
    return Table("training_curves", _sorted(rows, ["run", "metric", "epoch"]))


def predictor(inputs: Inputs) -> Table:
    rows = []
    for p in inputs.profiles:
        dense = (p.data.get("references") or {}).get("dense", {}).get("p50_ms")
        for s in (p.data.get("validation") or {}).get("points", []):
            rows.append(dict(device=p.device, runtime=p.runtime_label, setting=p.setting,
                             source="validation",
                             pattern=s["pattern"],
                             predicted_ratio=s["predicted_ratio_to_dense"],
                             measured_ratio=s["ratio_to_dense"]))
        for s in p.data["sweep"]:
            if dense:
                rows.append(dict(device=p.device, runtime=p.runtime_label, setting=p.setting,
                                 source="sweep",
                                 pattern=f"t_d={s['t_d']:g}",
                                 predicted_ratio=s["predicted_p50_ms"] / dense,
                                 measured_ratio=s["ratio_to_dense"]))
    for r in inputs.runs:
        v = r.verify or {}
        prof = _verify_profile(r, inputs)
        ratio = _learned_ratio(v)
        pred = (v.get("predicted") or {}).get("p50_ms")
        if prof and ratio and pred:
            dense = prof.data["references"]["dense"]["p50_ms"]
            rows.append(dict(device=prof.device, runtime=prof.runtime_label,
                             setting=prof.setting, source="learned",
                             pattern=r.name,
                             predicted_ratio=pred / dense, measured_ratio=ratio))
    for row in rows:
        row["error"] = row["predicted_ratio"] / row["measured_ratio"] - 1.0
    return Table("predictor", _sorted(rows, ["device", "setting", "source", "pattern"]))


def summary(inputs: Inputs, extra_targets: list[tuple[float, str]] = ()) -> Table:
    """Per device and target: the t_d ``pick`` chooses (``pick.t_d.pick_t_d``, the one rule),
    and beside it the largest validly measured swept t_d at or under it, with its numbers."""
    rows = []
    for p in inputs.profiles:
        tgts = {(round(t * 1e3, 9), pct) for t, pct in extra_targets}
        for r in inputs.runs:
            d = r.config.get("decision") or {}
            if d.get("target_ms") and profile_for(r, inputs) is p:
                tgts.add((d["target_ms"], d.get("percentile", "p90")))
        if not tgts:
            tgts = {(None, "p90")}
        for target_ms, pct in sorted(tgts, key=lambda t: (t[0] is None, t[0] or 0, t[1])):
            row = dict(device=p.device, runtime=p.runtime_label, setting=p.setting,
                       target_ms=target_ms, percentile=pct)
            pick = _pick(p, target_ms, pct)
            if pick is not None:
                row.update(t_d=pick.t_d, predicted_ms=pick.predicted_ms, rule=pick.rule)
                row.update(_swept_at(p, pick.t_d, pct))
                row.update(_accuracy_at(inputs, p, pick.t_d, pct, target_ms))
            rows.append(row)
    return Table("summary", rows)


def _pick(p, target_ms: float | None, pct: str):
    """``pick``'s answer for ``target_ms`` on profile ``p`` (None: no target, or none meets)."""
    if target_ms is None:
        return None
    try:
        return pick_t_d(p.data, target_ms * 1e-3, pct)
    except Unattainable:
        return None


def _swept_at(p, t_d: float, pct: str) -> dict:
    """The largest swept t_d at or under ``t_d`` with a valid measurement, and its numbers."""
    ok = [s for s in p.data["sweep"] if s["t_d"] <= t_d + 1e-9
          and s.get("valid", s["measured"].get("valid", True))]
    if not ok:
        return {}
    best = max(ok, key=lambda s: s["t_d"])
    pt = _energy_at(p, "dynamic", best["t_d"])
    return dict(swept_t_d=best["t_d"], measured_ms=best["measured"][f"{pct}_ms"],
                macs_ratio=best["macs_ratio"], energy_j=pt and pt.get("energy_j_total"),
                energy_source=pt and _energy_label(pt))


def _accuracy_at(inputs: Inputs, p, t_d: float, pct: str, target_ms: float) -> dict:
    """The best gated top-1 of a run trained at ``t_d``, and that run's verified latency."""
    acc = [(top1, f"{r.name} {metric}", r) for r in inputs.runs
           if r.t_d is not None and abs(r.t_d - t_d) < 1e-9
           for (metric, stream), top1 in r.evaluated.items() if stream == "gated"]
    if not acc:
        return {}
    top1, source, run = max(acc, key=lambda a: (a[0], a[1]))
    out = {"gated_top1_pct": top1, "top1_source": source}
    learned = ((run.verify or {}).get("measured") or {}).get(f"{pct}_ms")
    if learned is not None and _verify_profile(run, inputs) is p:
        out.update(learned_ms=learned, learned_met=learned <= target_ms)
    return out


def runtimes(inputs: Inputs) -> Table:
    """One row per profile: its runtime's dense p50, and at each of ``RUNTIME_T_D`` the
    measured latency ratio and efficiency, and its predictor's validation, so runtimes of one
    device and setting sit side by side."""
    rows = []
    for p in inputs.profiles:
        fp = p.fingerprint
        dense = ((p.data.get("references") or {}).get("dense") or {}).get("p50_ms")
        val = p.data.get("validation") or {}
        row = dict(device=p.device, hardware=p.hardware, setting=p.setting,
                   runtime=p.runtime_label, provider=fp.get("provider"),
                   runtime_threads=fp.get("runtime_threads"), profile=p.path, dense_p50_ms=dense,
                   validation_n=val.get("n", len(val.get("points", []))) if val else None,
                   within_10pct=val.get("within_10pct"), within_5pct=val.get("within_5pct"))
        for t in RUNTIME_T_D:
            s = next((s for s in p.data["sweep"] if s.get("mode", "dynamic") == "dynamic"
                      and abs(s["t_d"] - t) < 1e-9), None)
            ratio = s and s.get("ratio_to_dense")
            row[f"latency_ratio_td{t:g}"] = ratio
            # (dense p50 / p50) / (dense MACs / MACs) = MACs ratio / latency ratio
            row[f"efficiency_td{t:g}"] = s["macs_ratio"] / ratio if ratio else None
        rows.append(row)
    return Table("runtimes", _sorted(rows, ["hardware", "setting", "runtime", "profile"]))


def dynamic_vs_static(inputs: Inputs) -> Table:
    """The dynamic-vs-static comparison as measured by ``hwbench compare`` (and by the benchmark
    it replaced)."""
    cols = SCHEMAS["dynamic_vs_static"][1]
    rows = [{**{k: r.get(k) for k in cols if k != "source"}, "source": path}
            for path, rs in inputs.comparisons for r in rs]
    return Table("dynamic_vs_static", _sorted(rows, ["source", "target_ms", "method"]))


def build_tables(inputs: Inputs, extra_targets=()) -> dict[str, Table]:
    return {t.name: t for t in (
        summary(inputs, extra_targets), delivered(inputs), latency(inputs), targets(inputs),
        macs_vs_latency(inputs), energy(inputs), accuracy(inputs), channels(inputs),
        training_energy(inputs), training_curves(inputs), predictor(inputs),
        runtimes(inputs), dynamic_vs_static(inputs))}


def columns_readme(tables: dict[str, Table]) -> str:
    lines = ["# Report tables", "",
             "Tidy CSVs: one row per observation, one column per variable. Empty cell: not "
             "available. Written by `hwbench report`; every figure is drawn from these tables.",
             ""]
    for name in tables:
        row, cols = SCHEMAS[name]
        lines += [f"## {name}.csv", "", f"One row per {row}.", "",
                  "| column | meaning |", "|---|---|"]
        lines += [f"| `{c}` | {d} |" for c, d in cols.items()]
        lines.append("")
    return "\n".join(lines)
