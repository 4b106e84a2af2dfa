"""The report's figures, drawn with seaborn from the tidy tables only (never from raw files).

Every axis carries its unit; every device keeps one colour across all figures; legends sit
outside the data. Each function returns a matplotlib figure, or None when its table is empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from hwbench.report.inputs import Inputs
from hwbench.report.tables import (
    Table,  # noqa: E402
    dynamic_vs_static,
)

plt.rcParams.update({"svg.hashsalt": "hwbench", "figure.dpi": 110, "axes.titlesize": 11,
                     "axes.labelsize": 10, "legend.fontsize": 8, "font.size": 9})
sns.set_theme(style="whitegrid", rc={"svg.hashsalt": "hwbench"})

GROUP_COLOURS = {"always_off": "#bdbdbd", "always_on": "#2b8cbe", "dynamic": "#f39c12"}
COMPONENT_COLOURS = {"cpu": "#1f77b4", "gpu": "#2ca02c", "ram": "#9467bd"}


class Palette:
    """One colour per (device, setting) series and per run, assigned in sorted order for the
    whole report, so a device keeps its colour in every figure."""
    def __init__(self, keys):
        keys = sorted({k for k in keys if k is not None}, key=lambda k: tuple(map(str, k)))
        colours = sns.color_palette("colorblind", max(len(keys), 1))
        self.colours = {k: colours[i % len(colours)] for i, k in enumerate(keys)}

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key, "")
        return self.colours.get(key, (0.3, 0.3, 0.3))


def _df(t: Table) -> pd.DataFrame:
    return pd.DataFrame(t.rows, columns=t.columns)


def _legend_outside(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False, **kw)


def _figure_legend(fig, axes, title: str) -> None:
    """One legend for a multi-panel figure, right of the panels (labels deduplicated)."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.tight_layout()
    fig.suptitle(title, y=1.0, va="bottom")
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="upper left", frameon=False,
                   bbox_to_anchor=(1.0, 0.95))


def _diagonal(ax, hi: float, bands: tuple[float, ...]) -> None:
    """y = x from 0 to ``hi`` with shaded relative bands (widest first)."""
    xs = [0, hi]
    for i, b in enumerate(bands):
        ax.fill_between(xs, [0, hi * (1 - b)], [0, hi * (1 + b)], color=str(0.85 - 0.15 * i),
                        label=f"within +-{100 * b:.0f}%")
    ax.plot(xs, xs, color="0.3", lw=1, label="y = x")


def _logscale_if_wide(ax, values) -> None:
    vals = [v for v in values if v and v > 0 and not math.isnan(v)]
    if vals and max(vals) / min(vals) > 30:
        ax.set_yscale("log")


def _grid(n: int, width: float = 4.6, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 2.2, height * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def series_label(device, runtime) -> str:
    """A series' legend label naming its runtime: the device label carries it unless eager."""
    if isinstance(runtime, str) and runtime and runtime not in str(device):
        return f"{device} · {runtime}"
    return str(device)


def latency_vs_td(lat: Table, tgt: Table, pal: Palette):
    """One panel per device and setting; in it one line per runtime (profile), each with its
    p10-p90 band and its own dense and masked references in its colour."""
    df = _df(lat)
    if df.empty:
        return None
    panels = sorted(df.groupby(["hardware", "setting"]).groups)
    fig, axes = _grid(len(panels))
    targets = _df(tgt)
    for ax, (hardware, setting) in zip(axes, panels):
        d = df[(df.hardware == hardware) & (df.setting == setting)]
        _runtime_lines(ax, d, setting, pal)
        t = targets[targets.profile.isin(set(d.profile))] if not targets.empty else targets
        for target_ms, pct in sorted({(r.target_ms, r.percentile) for r in t.itertuples()}):
            ax.axhline(target_ms, color="#d62728", ls="-.", lw=1.2,
                       label=f"target {target_ms:.3g} ms ({pct})")
        ax.set(xlabel="t_d (gated/dense MACs budget)", ylabel="latency per inference (ms)",
               title=f"{hardware}\n{setting}", ylim=(0, None))
    _figure_legend(fig, axes, "Latency vs t_d per runtime (profile sweep, measured; dashed: "
                              "that runtime's dense network, dotted: masked)")
    return fig


def _runtime_lines(ax, d: pd.DataFrame, setting: str, pal: Palette) -> None:
    series = sorted(d.groupby(["device", "runtime", "profile"]).groups)
    per_runtime = pd.Series([rt for _, rt, _ in series]).value_counts()
    for device, runtime, profile in series:
        s = d[d.profile == profile]
        # two profiles of one runtime (a re-profile): told apart by their files
        name = runtime if per_runtime[runtime] == 1 else f"{runtime} ({Path(profile).name})"
        c = pal[(device, setting)]
        dyn = s[s["mode"] == "dynamic"].sort_values("t_d")
        ax.fill_between(dyn.t_d, dyn.p10_ms, dyn.p90_ms, color=c, alpha=0.2,
                        label=f"{name}: dynamic p10-p90")
        ax.plot(dyn.t_d, dyn.p50_ms, "o-", color=c, label=f"{name}: dynamic p50")
        for mode, style in (("dense", "--"), ("masked", ":")):
            ref = s[s["mode"] == mode]
            if not ref.empty:
                ax.axhline(float(ref.p50_ms.iloc[0]), color=c, ls=style, lw=1.1,
                           label=f"{name}: {mode} p50"
                                 + (" (full conv cost)" if mode == "masked" else ""))


def macs_not_time(mvl: Table, pal: Palette):
    df = _df(mvl)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="ideal: time ratio = MACs ratio")
    markers = {"sweep": "o", "validation": "^", "learned": "*"}
    # one series (colour) per device x runtime: the device label carries the runtime
    for (device, setting, runtime, source), d in df[df["mode"] != "masked"].groupby(
            ["device", "setting", "runtime", "source"], dropna=False):
        ax.scatter(d.macs_ratio, d.latency_ratio, color=pal[(device, setting)],
                   marker=markers.get(source, "s"), s=90 if source == "learned" else 30,
                   edgecolor="k", linewidth=0.3,
                   label=f"{series_label(device, runtime)}, {setting}: dynamic, {source}")
    for r in df[df["mode"] == "masked"].itertuples():
        ax.axhline(r.latency_ratio, color=pal[(r.device, r.setting)], ls=":", lw=1.3,
                   label=f"{series_label(r.device, r.runtime)}, {r.setting}: masked "
                         "(any pattern)")
    ax.set(xlabel="gated/dense MACs ratio", ylabel="gated/dense latency ratio (p50, measured)",
           title="MACs are not time, per runtime: measured latency ratio vs MACs ratio",
           xlim=(0, 1.05),
           ylim=(0, max(1.3, float(df.latency_ratio.max()) * 1.05)))
    _legend_outside(ax)
    return fig


def energy_vs_td(en: Table, pal: Palette):
    df = _df(en)
    if df.empty:
        return None
    panels = sorted(df.groupby(["device", "setting"]).groups)
    fig, axes = _grid(len(panels))
    for ax, (device, setting) in zip(axes, panels):
        d = df[(df.device == device) & (df.setting == setting)]
        method = d.method.iloc[0]
        how = "measured" if bool(d.measured.iloc[0]) else "ESTIMATED"
        c = pal[(device, setting)]
        for q, style in (("total", "-"), ("above_idle", "--")):
            dyn = d[(d["mode"] == "dynamic") & (d.quantity == q)].sort_values("t_d")
            ax.plot(dyn.t_d, dyn.energy_j, "o" + style, color=c,
                    label=f"dynamic, {q.replace('_', ' ')} ({how}: {method})")
            dense = d[(d["mode"] == "dense") & (d.quantity == q)]
            if not dense.empty:
                ax.axhline(float(dense.energy_j.iloc[0]), color="0.3", ls=style, lw=0.9,
                           label=f"dense, {q.replace('_', ' ')}")
        _logscale_if_wide(ax, d.energy_j)
        ax.set(xlabel="t_d (gated/dense MACs budget)", ylabel="energy per inference (J)",
               title=f"{device}\n{setting}, {how} energy")
    _figure_legend(fig, axes, "Energy per inference vs t_d (total: idle included; above idle: "
                              "idle power subtracted)")
    return fig


def accuracy_front(acc: Table, pal: Palette):
    df = _df(acc).dropna(subset=["p90_ms"])
    if df.empty:
        return None
    has_energy = df.energy_j.notna().any()
    fig, axes = plt.subplots(1, 2 if has_energy else 1, figsize=(13 if has_energy else 7.4, 4.6),
                             squeeze=False)
    markers = {"dense": "s", "gated": "o"}
    for ax, x, xlabel in ((axes[0][0], "p90_ms", "measured p90 latency per inference (ms)"),
                          *(((axes[0][1], "energy_j", "energy per inference (J)"),)
                            if has_energy else ())):
        d = df.dropna(subset=[x])
        for (device, setting, stream, metric), g in d.groupby(
                ["device", "setting", "stream", "metric"]):
            ax.scatter(g[x], g.top1_pct, color=pal[(device, setting)],
                       marker=markers.get(stream, "^"), s=60, edgecolor="k", linewidth=0.3,
                       alpha=1.0 if metric == "knn_top1" else 0.6,
                       label=f"{device}, {setting}: {stream}, {metric}")
            for r in g.itertuples():
                ax.annotate(f"{r.run} ({r.stream})",
                            (getattr(r, x), r.top1_pct), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(xlabel=xlabel, ylabel="top-1 accuracy (%)")
    axes[0][0].set_title("vs measured p90 latency (dense: profile reference; gated: verify)",
                         fontsize=9)
    if has_energy:
        axes[0][1].set_title("vs energy per inference (labels: energy table)", fontsize=9)
    _figure_legend(fig, list(axes[0]), "Accuracy vs latency and energy")
    return fig


def channel_groups(ch: Table):
    df = _df(ch)
    if df.empty:
        return None
    runs = sorted(df.run.unique())
    fig, axes = _grid(len(runs), width=5.0, height=3.6)
    for ax, run in zip(axes, runs):
        d = df[df.run == run]
        layers = list(dict.fromkeys(d.layer))
        bottom = [0.0] * len(layers)
        for group in ("always_off", "always_on", "dynamic"):
            vals = [float(d[(d.layer == lay) & (d.group == group)].fraction.sum())
                    for lay in layers]
            ax.bar(layers, vals, bottom=bottom, color=GROUP_COLOURS[group],
                   label=group.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, vals)]
        t_d = d.t_d.iloc[0]
        ax.set(ylabel="share of the block's channels", ylim=(0, 1),
               title=f"{run}" + (f" (t_d {t_d:g})" if t_d is not None else ""))
        ax.tick_params(axis="x", rotation=45)
    _figure_legend(fig, axes, "Learned channel groups per gated block")
    return fig


def training_energy(te: Table):
    df = _df(te)
    if df.empty:
        return None
    runs = sorted(df.run.unique())
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(runs) + 4), 4.2))
    bottom = [0.0] * len(runs)
    for comp in ("cpu", "gpu", "ram"):
        vals = [float(df[(df.run == r) & (df.component == comp)].energy_kwh.fillna(0).sum())
                for r in runs]
        methods = sorted(set(df[df.component == comp].method.dropna()))
        ax.bar(runs, vals, bottom=bottom, color=COMPONENT_COLOURS[comp],
               label=f"{comp}: {'; '.join(methods)}")
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(runs):
        row = df[df.run == r].iloc[0]
        co2 = row.emissions_kg_co2e
        txt = f"{co2 * 1e3:.2f} g CO2e ({row.country})" if co2 == co2 and co2 is not None \
            else "CO2e n/a"
        ax.annotate(txt, (i, bottom[i]), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="training energy (kWh)", title="Training energy by component (codecarbon)")
    ax.set_ylim(0, max(bottom) * 1.2 if max(bottom) > 0 else 1)
    _legend_outside(ax)
    return fig


def training_curves(tc: Table, pal: Palette):
    df = _df(tc)
    if df.empty:
        return None
    panels = [("loss", ["loss", "vicreg"], "loss"),
              ("gating losses", ["sparsity", "bound"], "loss"),
              ("MACs ratio", ["macs_ratio", "eval_macs_ratio", "deployed_macs_ratio"],
               "gated/dense MACs"),
              ("kNN top-1", ["knn_top1_dense", "knn_top1_gated"], "top-1 (%)"),
              ("predicted latency (--budget latency)", ["latency_ms_0", "latency_ms_1"],
               "ms, per target device")]
    panels = [p for p in panels if df.metric.isin(p[1]).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 3.6),
                             squeeze=False)
    styles = ["-", "--", ":"]
    for ax, (title, metrics, ylabel) in zip(axes[0], panels):
        for run, g in df.groupby("run"):
            for style, m in zip(styles, metrics):
                s = g[g.metric == m].sort_values("epoch")
                if not s.empty:
                    ax.plot(s.epoch, s.value, style, marker=".", color=pal[run],
                            label=run if style == "-" else None)
        key = ", ".join(f"{n}: {m}" for n, m in zip(("solid", "dashed", "dotted"), metrics)
                        if df.metric.eq(m).any())
        ax.set(title=f"{title}\n{key}", xlabel="epoch", ylabel=ylabel)
    _figure_legend(fig, list(axes[0]), "Training curves (macs_ratio: training, noisy gates; "
                                       "deployed_macs_ratio: training, noise-free decisions; "
                                       "eval_macs_ratio: test split, hard gates)")
    return fig


def predictor_quality(pr: Table, pal: Palette):
    df = _df(pr)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.4, 5.0))
    hi = float(max(df.predicted_ratio.max(), df.measured_ratio.max())) * 1.08
    _diagonal(ax, hi, (0.10, 0.05))
    markers = {"validation": "o", "sweep": "s", "learned": "*"}
    for (device, setting, source), d in df.groupby(["device", "setting", "source"]):
        e = d.error.abs()
        ax.scatter(d.measured_ratio, d.predicted_ratio, color=pal[(device, setting)],
                   marker=markers.get(source, "^"), s=80 if source == "learned" else 30,
                   edgecolor="k", linewidth=0.3,
                   label=f"{device}, {setting}: {source} (n={len(d)}, "
                         f"{100 * (e <= 0.05).mean():.0f}% within 5%, "
                         f"{100 * (e <= 0.10).mean():.0f}% within 10%)")
    ax.set(xlabel="measured latency / dense (p50)", ylabel="predicted latency / dense (p50)",
           title="Predictor quality: predicted vs measured", xlim=(0, hi), ylim=(0, hi))
    _legend_outside(ax)
    return fig


def target_vs_measured(tgt: Table, pal: Palette):
    """Issue 7's comparison: each run's measured latency against its target, by budget."""
    df = _df(tgt).dropna(subset=["measured_ms"])
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.4, 5.0))
    hi = float(max(df.target_ms.max(), df.measured_ms.max())) * 1.1
    _diagonal(ax, hi, (0.05,))
    markers = {"flops": "o", "latency": "*"}
    if "stage" not in df:
        df["stage"] = "trained"
    for (device, setting, budget, stage), d in df.groupby(["device", "setting", "budget",
                                                          "stage"], dropna=False):
        e = d.error.abs()
        c = pal[(device, setting)]
        ax.scatter(d.target_ms, d.measured_ms, color=c if stage == "trained" else "white",
                   marker=markers.get(budget, "s"), s=110 if budget == "latency" else 50,
                   edgecolor=c if stage == "trimmed" else "k",
                   linewidth=1.4 if stage == "trimmed" else 0.3,
                   label=f"{device}: --budget {budget}, {stage} (n={len(d)}, "
                         f"{100 * (e <= 0.05).mean():.0f}% within 5%)")
        # trimmed points of both budgets sit together on the diagonal: labels on either side
        off, ha = ((-7, -10), "right") if (stage, budget) == ("trimmed", "flops") else \
            ((6, -9), "left")
        for r in d.itertuples():
            if r.gated_top1_pct == r.gated_top1_pct and r.gated_top1_pct is not None:
                ax.annotate(f"{r.gated_top1_pct:.1f}%", (r.target_ms, r.measured_ms),
                            fontsize=7, xytext=off, textcoords="offset points", ha=ha)
    ax.set(xlabel="latency target (ms)", ylabel="measured latency of the learned network (ms)",
           title="Target vs measured (verify; hollow: trimmed; labels: gated kNN top-1)",
           xlim=(0, hi),
           ylim=(0, hi))
    _legend_outside(ax)
    return fig


def accuracy_vs_latency(dvs: Table):
    """Issue 14's question: kNN top-1 against measured p90, one line per method (error bars:
    the kNN's standard error; hollow: not landed within 5% of its target)."""
    df = _df(dvs).dropna(subset=["p90_ms", "knn_top1"])
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, d in df.groupby("method"):
        d = d.sort_values("p90_ms")
        line = ax.errorbar(d.p90_ms, d.knn_top1, yerr=d.knn_se, marker="o", capsize=3,
                           label=f"{method} (n={len(d)})")
        hollow = d[~d.landed.astype(bool)]
        ax.scatter(hollow.p90_ms, hollow.knn_top1, s=80, facecolor="white",
                   edgecolor=line[0].get_color(), zorder=3)
    ax.set(xlabel="measured p90 latency (ms, batch 1, real test images)",
           ylabel="kNN top-1 of the timed network (%)",
           title="At equal latency: thin, pruned, channel and width gates")
    _legend_outside(ax)
    return fig


def compare_figure(rows: list[dict], path: str | Path) -> Path | None:
    """``hwbench compare``'s figure (``accuracy_vs_latency``) of ``rows``, saved to ``path``;
    None when no row has both a latency and a kNN."""
    fig = accuracy_vs_latency(dynamic_vs_static(Inputs(comparisons=[(str(path), rows)])))
    if fig is None:
        return None
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def draw_all(tables: dict[str, Table], energy_only: bool = False) -> dict[str, object]:
    """name -> figure (None: nothing to draw). The order is the report's order."""
    series = {(r["device"], r.get("setting")) for t in tables.values() for r in t.rows
              if r.get("device")}
    runs = {r.get("run") for t in tables.values() for r in t.rows}
    pal = Palette(series | {(r, "") for r in runs if r})
    if energy_only:
        return {"energy_vs_td": energy_vs_td(tables["energy"], pal),
                "training_energy": training_energy(tables["training_energy"])}
    return {
        "latency_vs_td": latency_vs_td(tables["latency"], tables["targets"], pal),
        "macs_not_time": macs_not_time(tables["macs_vs_latency"], pal),
        "energy_vs_td": energy_vs_td(tables["energy"], pal),
        "accuracy_front": accuracy_front(tables["accuracy"], pal),
        "channel_groups": channel_groups(tables["channels"]),
        "training_energy": training_energy(tables["training_energy"]),
        "training_curves": training_curves(tables["training_curves"], pal),
        "predictor_quality": predictor_quality(tables["predictor"], pal),
        "target_vs_measured": target_vs_measured(tables["targets"], pal),
        "dynamic_vs_static": accuracy_vs_latency(tables["dynamic_vs_static"]),
    }
