"""Assemble a report: discover inputs, build the tables, draw, write every file atomically."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from hwbench.io import atomic_write_bytes, atomic_write_text
from hwbench.report.inputs import Inputs, discover
from hwbench.report.tables import RUNTIME_T_D, Table, build_tables, columns_readme

# name -> (title, what it shows, the CSV table(s) holding its numbers)
FIGURES = {
    "latency_vs_td": ("Latency vs t_d", "Per device and batch size, one line per runtime on "
                      "the same axes: the measured p50 latency per t_d of dynamic execution "
                      "(eager: the compact engine; onnxruntime/openvino: its compiled graphs) "
                      "with its p10-p90 band; that runtime's dense and masked networks as "
                      "reference lines in its colour; the latency target of any run that had "
                      "one.", ["latency", "targets"]),
    "macs_not_time": ("MACs are not time", "Measured latency ratio against MACs ratio for "
                      "every measured pattern (uniform sweep, random validation patterns, "
                      "learned networks), one series per device and runtime. Points above the "
                      "diagonal save less time than MACs; masked execution saves none.",
                      ["macs_vs_latency", "runtimes"]),
    "energy_vs_td": ("Energy per inference vs t_d", "Joules per inference, total (idle power "
                     "included) and above idle, per device, labelled measured or ESTIMATED.",
                     ["energy"]),
    "accuracy_front": ("Accuracy vs latency and energy", "Top-1 of each run's dense and gated "
                       "streams against the measured latency on each profiled device.",
                       ["accuracy"]),
    "channel_groups": ("Learned channel groups", "Per gated block: always-off, always-on and "
                       "data-dependent channels of each run's learned gate pattern.",
                       ["channels"]),
    "training_energy": ("Training energy", "kWh by component and CO2e per run, with "
                        "codecarbon's method per component.", ["training_energy"]),
    "training_curves": ("Training curves", "Loss terms, MACs ratio and kNN top-1 per epoch.",
                        ["training_curves"]),
    "predictor_quality": ("Predictor quality", "Predicted vs measured latency (ratios to the "
                          "dense p50) with +-5% and +-10% bands.", ["predictor"]),
    "target_vs_measured": ("Latency targets: FLOPs budget vs latency budget", "Each run with a "
                           "latency target: the learned network's measured latency against the "
                           "target, by --budget, with the +-5% band and the gated kNN top-1; "
                           "hollow markers: the same network after hwbench trim (measured "
                           "anew), so budgets compare in accuracy at about equal latency.",
                           ["targets"]),
    "dynamic_vs_static": ("At equal latency: does dynamic computation beat static?", "kNN "
                          "top-1 against measured p90 latency (batch 1, real test images) of "
                          "a thinner dense network, a pruned dense network, per-channel and "
                          "width gates, each landed on the same targets by its own path "
                          "(hwbench compare); error bars: the kNN's standard error; hollow: "
                          "not landed on its target.", ["dynamic_vs_static"]),
}


@dataclass
class ReportResult:
    out: Path
    files: list[Path] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # name -> "drawn" or why not
    skipped: list[tuple[str, str]] = field(default_factory=list)
    inputs: tuple[int, int] = (0, 0)  # (profiles, runs)


def build_report(paths: list[str | Path], out: str | Path, energy_only: bool = False,
                 targets: list[tuple[float, str]] = (), title: str = "hwbench report"
                 ) -> ReportResult:
    """Write the report for ``paths`` (profiles, run directories, folders) into ``out``.

    ``targets``: extra (seconds, percentile) latency targets for the summary table.
    """
    inputs = discover(paths)
    tables = build_tables(inputs, targets)
    out = Path(out)
    res = ReportResult(out=out, skipped=list(inputs.skipped),
                       inputs=(len(inputs.profiles), len(inputs.runs)))
    _note_unusable(inputs, res)
    for name, t in tables.items():
        res.files.append(atomic_write_text(out / "tables" / f"{name}.csv", t.csv()))
    res.files.append(atomic_write_text(out / "tables" / "README.md", columns_readme(tables)))

    import hwbench.report.figures as figs  # matplotlib only when a report is drawn
    pngs: dict[str, bytes] = {}
    for name, fig in figs.draw_all(tables, energy_only).items():
        if fig is None:
            res.figures[name] = "no data in the inputs"
            continue
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, bbox_inches="tight",
                        metadata={"Date": None} if ext == "svg" else {"Software": None})
            res.files.append(atomic_write_bytes(out / "figures" / f"{name}.{ext}",
                                                buf.getvalue()))
            if ext == "png":
                pngs[name] = buf.getvalue()
        figs.plt.close(fig)
        res.figures[name] = "drawn"
    sections = _sections(inputs, tables, res, energy_only)
    res.files.append(atomic_write_text(out / "report.md", _markdown(title, sections, res)))
    res.files.append(atomic_write_text(out / "report.html", _html(title, sections, res, pngs)))
    return res


def _note_unusable(inputs: Inputs, res: ReportResult) -> None:
    for r in inputs.runs:
        if not r.evaluated:
            res.skipped.append((r.path, "run without evaluation (no kNN or probe top-1): left "
                                        "out of the accuracy figures"))
        if not r.verify and r.config.get("method") != "dense":
            res.skipped.append((r.path, "run without verify.json: its gated stream has no "
                                        "measured latency (run `hwbench verify` on the device)"))


# A section is (heading, [blocks]); a block is ("p", text) | ("table", Table, columns) |
# ("figure", name) | ("list", [text]).
def _sections(inputs: Inputs, tables: dict[str, Table], res: ReportResult,
              energy_only: bool) -> list:
    secs = []
    if not energy_only:
        s = tables["summary"]
        secs.append(("Summary", [
            ("p", f"{res.inputs[0]} device profile(s), {res.inputs[1]} training run(s). Per "
                  "device and latency target: the t_d `pick` chooses (one rule, in the rule "
                  "column: the table's predicted latency as a monotone envelope), beside it the "
                  "largest "
                  "validly measured swept t_d at or under it, with its energy and MACs ratio, "
                  "the best gated top-1 of a run trained at the picked t_d, and that run's learned "
                  "network as measured (learned_ms): a prior that meets the target does not make "
                  "a trained network that does. Latencies are wall-clock times of the compact "
                  "engine, which skips the work (not masked execution)."),
            ("table", s, s.columns)]))
        if tables["delivered"].rows:
            d = tables["delivered"]
            secs.append(("What each target run delivered", [
                ("p", "RUN/final.json of every run trained to a latency target: the verdict "
                      "(MET inside [0.90, 1.00] x target; DEGRADED when the gated kNN is below "
                      "the randomly initialised network's), the measured latency beside the "
                      "accuracy of the network that was timed, and the thinner dense network "
                      "landed on the same target when the run trained one (--baseline thin)."),
                ("table", d, d.columns)]))
        if tables["targets"].rows:
            t = tables["targets"]
            secs.append(("Latency targets of training runs", [
                ("p", "Target vs predicted (profile, at decision time) vs measured (verify, "
                      "the learned network)."), ("table", t, t.columns)]))
    if not energy_only and tables["runtimes"].rows:
        t = tables["runtimes"]
        secs.append(("Runtimes side by side", [
            ("p", "One row per profile (device x runtime), all numbers measured on that device "
                  "with that runtime: the dense network's p50 (ms); at t_d "
                  + " and ".join(f"{x:g}" for x in RUNTIME_T_D) + " the latency ratio "
                  "(measured p50 / dense p50, profile sweep) and the efficiency (dense p50 / "
                  "p50) / (dense MACs / MACs), where 1 means time falls as MACs do; and the "
                  "share (0-1) of the predictor's validation patterns within +-10% and +-5% of "
                  "their measured latency ratio. Columns: tables/runtimes.csv."),
            ("table", t, [c for c in t.columns if c not in ("hardware", "profile")])]))
    if not energy_only and tables["dynamic_vs_static"].rows:
        t = tables["dynamic_vs_static"]
        secs.append(("At equal latency: dynamic vs static", [
            ("p", "Each method landed on each target by its own path and timed at batch 1 on "
                  "real test images against the dense network measured alongside "
                  "(hwbench compare); kNN top-1 of the timed network with its "
                  "standard error."), ("table", t, t.columns)]))
    secs.append(("Energy: what was measured and what was estimated",
                 _energy_blocks(inputs, tables)))
    names = ["energy_vs_td", "training_energy"] if energy_only else list(FIGURES)
    for name in names:
        title, text, csvs = FIGURES[name]
        state = res.figures.get(name, "not drawn")
        blocks = [("p", text + " Numbers: " + ", ".join(f"tables/{c}.csv" for c in csvs) + ".")]
        blocks.append(("figure", name) if state == "drawn" else ("p", f"Not drawn: {state}."))
        secs.append((title, blocks))
    if res.skipped:
        secs.append(("Inputs left out", [("list", [f"{p}: {r}" for p, r in res.skipped])]))
    return secs


def _energy_blocks(inputs: Inputs, tables: dict[str, Table]) -> list:
    lines, estimated_cpu = [], False
    for p in inputs.profiles:
        e = p.data.get("energy") or {}
        method = e.get("method", "none")
        pts = e.get("points", [])
        if method == "none" or not pts:
            lines.append(f"{p.device}: no energy figures ({e.get('reason', 'not measured')}).")
            continue
        measured = bool(e.get("measured"))
        windows = [pt["window_s"] for pt in pts if pt.get("window_s")] or [float("nan")]
        idle = e.get("idle_w")
        if method == "nvml-counter":
            unc = "NVML counter resolution 1 mJ"
        elif method == "nvml-power":
            unc = ("integrated polled power (Zeus polls the board's power, W, and integrates it "
                   "over the window): no counter, the sampling interval bounds it")
        elif "rapl" in method:
            unc = "RAPL counter resolution ~15 uJ"
        else:
            unc = "unknown: a power model, not a measurement"
        idle_txt = "not measured" if idle is None else \
            f"{idle:.2f} W" + ("" if measured else " (itself estimated)")
        lines.append(f"{p.device}, {p.setting}: inference energy "
                     f"**{'measured' if measured else 'ESTIMATED'}** ({method}); windows "
                     f"{min(windows):.2f}-{max(windows):.2f} s; idle power {idle_txt}; "
                     f"uncertainty: {unc}.")
        short = [w for w in p.data.get("warnings", []) if w.get("code") == "ENERGY_WINDOW_SHORT"]
        if short:
            lines.append(f"{p.device}: {len(short)} energy window(s) shorter than 1 s: those "
                         "figures are noisy.")
        if not measured and p.fingerprint.get("type") == "cpu":
            estimated_cpu = True
    for r in inputs.runs:
        e = r.energy or {}
        total = e.get("total")
        if not total:
            continue
        methods = {c: m for seg in e.get("segments", []) for c, m in
                   (seg.get("methods") or {}).items()}
        comp = "; ".join(f"{c}: {m}" for c, m in sorted(methods.items()))
        lines.append(f"run {r.name}: training energy {total['energy_kwh']:.4g} kWh "
                     f"(**{total.get('label', 'unknown')}**) over {total['duration_s']:.0f} s in "
                     f"{total.get('segments', 1)} launch(es); {comp}. Uncertainty: not reported "
                     "by codecarbon.")
    blocks = []
    if estimated_cpu:
        blocks.append(("p", "**This CPU has no readable energy counter (RAPL): its energy "
                            "figures are estimates from codecarbon's power model, not "
                            "measurements.**"))
    if not lines:
        lines = ["No energy figures in the inputs."]
    blocks.append(("list", lines))
    blocks.append(("p", "Per-point labels: tables/energy.csv (`method`, `measured`), "
                        "tables/training_energy.csv (`method`)."))
    return blocks


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(title: str, sections: list, res: ReportResult) -> str:
    out = [f"# {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "list":
                out += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "figure":
                out += [f"![{FIGURES[b[1]][0]}](figures/{b[1]}.png)", "",
                        f"SVG: [figures/{b[1]}.svg](figures/{b[1]}.svg)", ""]
            elif b[0] == "table":
                t, cols = b[1], b[2]
                if not t.rows:
                    out += ["(no rows)", ""]
                    continue
                out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in t.rows]
                out.append("")
    out += ["Tables: [tables/](tables/) (columns: [tables/README.md](tables/README.md)).", ""]
    return "\n".join(out)


CSS = """.scroll{overflow-x:auto}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;
border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f4f4f4}
td:first-child{text-align:left}img{max-width:100%;height:auto}figure{margin:1em 0}
figcaption{font-size:.85em;color:#555}"""


def _html(title: str, sections: list, res: ReportResult, pngs: dict[str, bytes]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for heading, blocks in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        for b in blocks:
            if b[0] == "p":
                text = esc(b[1])
                while "**" in text:  # the markdown bold of the energy labels
                    text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
                body.append(f"<p>{text}</p>")
            elif b[0] == "list":
                items = "".join(f"<li>{esc(x).replace('**', '')}</li>" for x in b[1])
                body.append(f"<ul>{items}</ul>")
            elif b[0] == "figure":
                data = base64.b64encode(pngs[b[1]]).decode("ascii")
                body.append(f'<figure><img alt="{esc(FIGURES[b[1]][0])}" '
                            f'src="data:image/png;base64,{data}"><figcaption>'
                            f"figures/{b[1]}.png, figures/{b[1]}.svg</figcaption></figure>")
            elif b[0] == "table":
                t, cols = b[1], b[2]
                if not t.rows:
                    body.append("<p>(no rows)</p>")
                    continue
                head = "".join(f"<th>{esc(c)}</th>" for c in cols)
                rows = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in cols)
                               + "</tr>" for r in t.rows)
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                            f"<tbody>{rows}</tbody></table></div>")
    body.append("<p>Tables: tables/*.csv (columns: tables/README.md).</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
