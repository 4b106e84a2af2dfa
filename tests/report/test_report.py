"""hwbench report, built from profiles and runs that the real code paths wrote (conftest)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwbench.report import build_report
from hwbench.report.build import FIGURES
from tests.conftest import one_line_error, run_cli


def rows(out: Path, name: str) -> list[dict]:
    with open(out / "tables" / f"{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def report(report_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = build_report([report_inputs["profiles"], report_inputs["runs"]], out)
    return out, res, report_inputs


@pytest.mark.slow
def test_every_figure_is_written_as_png_and_svg(report):
    out, res, _ = report
    assert res.figures == {name: "drawn" for name in FIGURES}
    for name in FIGURES:
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert res.inputs == (2, 2)


@pytest.mark.slow
def test_tables_hold_the_expected_rows(report):
    out, _, inp = report
    profiles = [json.loads(p.read_text()) for p in sorted(inp["profiles"].glob("*.json"))]
    lat = rows(out, "latency")
    # per profile: dense + masked references and one row per swept t_d, with p10 <= p50 <= p90
    assert len(lat) == sum(len(p["sweep"]) + 2 for p in profiles) == 10
    for r in lat:
        assert float(r["p10_ms"]) <= float(r["p50_ms"]) <= float(r["p90_ms"])
    assert {r["setting"] for r in lat} == {"resnet18 cifar 32px b1", "resnet18 cifar 32px b2"}
    energy = rows(out, "energy")
    assert len(energy) == 2 * sum(len(p["energy"]["points"]) for p in profiles) == 16
    assert {(r["method"], r["measured"]) for r in energy} == {
        ("codecarbon-estimate", "False"), ("nvml-counter", "True")}
    mvl = rows(out, "macs_vs_latency")
    assert sum(r["source"] == "learned" for r in mvl) == 1
    assert sum(r["source"] == "masked" for r in mvl) == 2
    assert sum(r["source"] == "validation" for r in mvl) == 6
    # channel groups: 8 gated blocks x 3 groups, summing to each block's channels
    ch = [r for r in rows(out, "channels") if r["run"] == "co"]
    assert len(ch) == 24
    pattern = json.loads((inp["runs"] / "co" / "pattern.json").read_text())
    for layer in pattern["layers"]:
        assert sum(int(r["channels"]) for r in ch if r["layer"] == layer["name"]) == \
            layer["channels"]
    acc = rows(out, "accuracy")
    got = {(r["stream"], r["metric"], r["latency_source"]) for r in acc if r["run"] == "co"}
    assert ("gated", "knn_top1", "verify") in got and ("gated", "linear_top1", "verify") in got
    assert ("dense", "knn_top1", "profile-dense") in got
    te = rows(out, "training_energy")
    assert [r["component"] for r in te] == ["cpu", "gpu", "ram"]
    assert float(te[0]["energy_kwh"]) == pytest.approx(0.002)  # the fake tracker's CPU kWh
    curves = rows(out, "training_curves")
    assert {int(r["epoch"]) for r in curves if r["run"] == "co"} == {0, 1}
    assert {int(r["epoch"]) for r in curves if r["run"] == "unevaluated"} == {0}
    pred = rows(out, "predictor")
    assert sum(r["source"] == "validation" for r in pred) == 6
    assert sum(r["source"] == "learned" for r in pred) == 1
    for r in pred:
        # the CSV keeps 6 significant digits: an error near 0 is compared absolutely
        assert float(r["error"]) == pytest.approx(
            float(r["predicted_ratio"]) / float(r["measured_ratio"]) - 1, abs=1e-5)


@pytest.mark.slow
def test_the_summary_decides_as_pick_does(report, tmp_path):
    from hwbench.pick.t_d import RULE, Unattainable, pick_t_d

    out, _, inp = report
    prof = json.loads(inp["estimated"].read_text())
    target = json.loads((inp["runs"] / "co" / "config.json").read_text())["decision"]
    summary = [r for r in rows(out, "summary") if r["setting"] == "resnet18 cifar 32px b1"]
    assert len(summary) == 1 and float(summary[0]["target_ms"]) == pytest.approx(
        target["target_ms"])
    assert float(summary[0]["t_d"]) == target["t_d"] == inp["t_d"]  # the run's own pick
    assert summary[0]["rule"] == RULE
    # more targets: each row's t_d is pick's; the measured columns are the largest validly
    # measured swept t_d at or under it; below the fastest prediction nothing meets
    preds = sorted(x["predicted_p90_ms"] for x in prof["sweep"])
    targets = [preds[0] * 1.3, preds[-1] * 1.01, preds[0] * 0.5]
    build_report([inp["estimated"]], tmp_path, targets=[(t * 1e-3, "p90") for t in targets])
    got = rows(tmp_path, "summary")
    assert len(got) == 3
    for t in targets:
        row = min(got, key=lambda r: abs(float(r["target_ms"]) - t))
        try:
            pick = pick_t_d(prof, t * 1e-3, "p90")
        except Unattainable:
            assert row["t_d"] == "" and row["measured_ms"] == ""
            continue
        assert float(row["t_d"]) == pick.t_d
        valid = [s for s in prof["sweep"] if s["t_d"] <= pick.t_d + 1e-9 and s["valid"]]
        if valid:
            best = max(valid, key=lambda s: s["t_d"])
            assert float(row["swept_t_d"]) == best["t_d"]
            assert float(row["measured_ms"]) == pytest.approx(best["measured"]["p90_ms"],
                                                              rel=1e-5)
            assert "estimated" in row["energy_source"]
    tg = rows(out, "targets")
    verify = json.loads((inp["runs"] / "co" / "verify.json").read_text())
    # verify's own decision; none (empty) when its p90 was not valid
    want = str(verify["met"]) if verify["valid"] else ""
    assert tg[0]["met"] == want and tg[0]["budget"] == "flops"
    assert float(tg[0]["error"]) == pytest.approx(
        verify["measured"]["p90_ms"] / target["target_ms"] - 1)


@pytest.mark.slow
def test_a_trimmed_network_is_a_second_point_of_its_run(report):
    out, res, inp = report
    trimmed = [r for r in rows(out, "targets") if r["stage"] == "trimmed"]
    assert len(trimmed) == 1 and trimmed[0]["run"].startswith("co/trim-")
    tdir = inp["runs"] / "co" / trimmed[0]["run"].split("/", 1)[1]
    v = json.loads((tdir / "verify.json").read_text())
    s = json.loads((tdir / "summary.json").read_text())
    assert float(trimmed[0]["measured_ms"]) == pytest.approx(v["measured"]["p90_ms"])
    assert float(trimmed[0]["error"]) == pytest.approx(v["measured"]["p90_ms"] / v["target_ms"]
                                                       - 1)
    assert float(trimmed[0]["gated_top1_pct"]) == pytest.approx(s["knn_top1_gated"])
    assert trimmed[0]["budget"] == "flops" and res.figures["target_vs_measured"] == "drawn"


@pytest.mark.slow
def test_the_summary_reports_the_learned_network_of_a_run_at_the_chosen_t_d(report_inputs,
                                                                          tmp_path):
    conf = json.loads((report_inputs["runs"] / "co" / "config.json").read_text())
    target_ms = conf["decision"]["target_ms"]
    build_report([report_inputs["estimated"], report_inputs["runs"] / "co"], tmp_path)
    row = next(r for r in rows(tmp_path, "summary")
               if float(r["target_ms"]) == pytest.approx(target_ms))
    verify = json.loads((report_inputs["runs"] / "co" / "verify.json").read_text())
    assert float(row["t_d"]) == conf["t_d"] and row["top1_source"].startswith("co ")
    assert float(row["learned_ms"]) == pytest.approx(verify["measured"]["p90_ms"])
    assert row["learned_met"] == str(verify["measured"]["p90_ms"] <= target_ms)


@pytest.mark.slow
def test_the_report_states_what_is_measured_and_what_is_estimated(report):
    out, res, _ = report
    md = (out / "report.md").read_text()
    assert "its energy figures are estimates from codecarbon's power model" in md
    assert "inference energy **measured** (nvml-counter)" in md
    assert "inference energy **ESTIMATED** (codecarbon-estimate)" in md
    assert "training energy" in md and "(**estimated**)" in md
    # the interrupted run is reported, and why it is left out of the accuracy figures
    assert any(p.endswith("unevaluated") and "without evaluation" in why
               for p, why in res.skipped)
    cols = (out / "tables" / "README.md").read_text()
    for name in ("summary", "latency", "energy", "accuracy", "channels", "predictor"):
        assert f"## {name}.csv" in cols


@pytest.mark.slow
def test_the_html_is_self_contained(report):
    out, _, _ = report
    html = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<link" not in html


@pytest.mark.slow
def test_same_inputs_give_the_same_csvs_and_svgs(report, tmp_path):
    out, _, inp = report
    build_report([inp["profiles"], inp["runs"]], tmp_path)
    for f in sorted((out / "tables").iterdir()):
        assert (tmp_path / "tables" / f.name).read_bytes() == f.read_bytes(), f.name
    for name in FIGURES:
        svg = f"figures/{name}.svg"
        assert (tmp_path / svg).read_bytes() == (out / svg).read_bytes(), svg


@pytest.mark.slow
def test_energy_only_draws_the_energy_figures(report_inputs, tmp_path):
    res = build_report([report_inputs["profiles"], report_inputs["runs"]], tmp_path,
                       energy_only=True)
    assert set(res.figures) == {"energy_vs_td", "training_energy"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "energy_vs_td.png", "energy_vs_td.svg", "training_energy.png", "training_energy.svg"]
    md = (tmp_path / "report.md").read_text()
    assert "## Energy: what was measured" in md and "## Summary" not in md


@pytest.mark.slow
def test_a_run_names_its_profile_and_brings_it_in(report_inputs, tmp_path):
    res = build_report([report_inputs["runs"] / "co"], tmp_path)
    assert res.inputs == (1, 1)
    assert rows(tmp_path, "targets")[0]["profile"] == str(report_inputs["estimated"])


@pytest.mark.slow
def test_extra_targets_add_summary_rows(report_inputs, tmp_path):
    build_report([report_inputs["estimated"]], tmp_path, targets=[(1.0, "p90"), (1e-6, "p50")])
    s = rows(tmp_path, "summary")
    assert [float(r["target_ms"]) for r in s] == [0.001, 1000.0]
    assert s[0]["t_d"] == "" and float(s[1]["t_d"]) == 1.0  # nothing is 1 us; all are < 1 s


@pytest.mark.slow
def test_bad_inputs_are_skipped_with_a_reason_or_a_one_line_error(report_inputs, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    future = tmp_path / "future.json"
    future.write_text('{"schema": "hwbench/device-profile@9"}')
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    r = run_cli("report", str(report_inputs["estimated"]), str(junk), str(future), str(broken),
                "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    assert "junk.json: neither a device profile nor a training run" in r.output
    assert "unknown schema version (hwbench/device-profile@9)" in r.output
    assert "broken.json: not readable JSON" in r.output
    assert (tmp_path / "rep" / "report.html").exists()

    (tmp_path / "empty").mkdir()
    r = run_cli("report", str(tmp_path / "empty"), "--out", str(tmp_path / "x"))
    assert "an empty folder" in one_line_error(r)
    r = run_cli("report", str(junk), "--out", str(tmp_path / "x"))
    assert "nothing to report on" in one_line_error(r)
    r = run_cli("report", "--out", str(tmp_path / "x"))
    assert "name at least one" in one_line_error(r)
    r = run_cli("report", str(report_inputs["estimated"]), "--target-latency", "fast",
                "--out", str(tmp_path / "x"))
    assert "cannot parse latency" in one_line_error(r)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_measurement_and_training_code_never_import_a_plotting_library():
    code = ("import sys, hwbench.cli, hwbench.train, hwbench.profile.build, hwbench.deploy.verify, "
            "hwbench.pick.target, hwbench.report; "
            "bad = [m for m in ('matplotlib', 'seaborn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


# Appended to a copy of the report (the report itself carries no script): after load, write
# how many images decoded into the DOM, which --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-decoded', ok + '/' + imgs.length);
});</script></body>"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed "
                    "(apt-get install chromium)")
def test_the_html_report_loads_in_chromium_with_every_image_decoded(report, tmp_path):
    out, _, _ = report
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", PROBE))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run(cmd + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert f'data-decoded="{len(FIGURES)}/{len(FIGURES)}"' in dom
    shot = out / "screenshot.png"  # kept next to the report for a person to look at
    subprocess.run(cmd + ["--window-size=1280,4000", f"--screenshot={shot}",
                          (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_dynamic_vs_static_comparison_is_a_table_and_a_figure(report):
    out, res, inp = report
    got = rows(out, "dynamic_vs_static")
    assert len(got) == 6 and {r["method"] for r in got} == {"thin", "channel", "width"}
    assert [r["landed"] for r in got if r["method"] == "width"] == ["False", "True"]
    assert res.figures["dynamic_vs_static"] == "drawn"
    md = (out / "report.md").read_text()
    assert "## At equal latency: dynamic vs static" in md
    # a results file without the required columns is skipped with its reason, not read
    bad = inp["root"] / "bad_dvs.json"
    bad.write_text(json.dumps({"benchmark": "dynamic_vs_static", "rows": [{"method": "x"}]}))
    from hwbench.errors import UsageError
    from hwbench.report.inputs import discover

    with pytest.raises(UsageError, match="without rows"):
        discover([bad])
    assert len(discover([inp["runs"] / "dynamic_vs_static_cpu.json"]).comparisons) == 1


def nonmonotone_profile():
    """A fake device whose full width is faster than 90 % of it (a kernel that runs the full
    width best), in its table and in its measured sweep, as committed profiles show."""
    from tests.profile.test_predictor import synthetic_profile

    prof = synthetic_profile()
    for i, b in enumerate(prof["table"]["blocks"]):
        w = b["channels"]
        b["grid"] = [0, w // 2, (9 * w) // 10, w]
        cost = [0, 0.5 * w, 0.9 * w, 0.75 * w]  # full width: cheaper than 0.9 of it
        b["plain_ms"] = [(i + 1) * 0.01 * c for c in cost]
        b["gated_ms"] = [(i + 1) * 0.01 * c + 0.05 for c in cost]
    prof["created"] = "2026-12-05T00:00:00+00:00"
    prof["fingerprint"] = {**prof["fingerprint"], "name": "fake nonmonotone", "type": "cpu"}

    def point(t_d, p90):
        m = {"n": 64, "p50_ms": p90 / 1.1, "p90_ms": p90, "p99_ms": p90 * 1.3,
             "valid": True, "samples_ms": [p90 * (0.8 + 0.5 * i / 63) for i in range(64)]}
        return {"t_d": t_d, "macs_ratio": t_d, "mode": "dynamic", "pattern": f"prior {t_d}",
                "measured": m, "valid": True, "ratio_to_dense": p90 / 33.0,
                "predicted_p50_ms": p90 / 1.1, "predicted_p90_ms": p90,
                "predicted_p99_ms": p90 * 1.3}
    prof["sweep"] = [point(0.3, 12.0), point(0.6, 20.0), point(0.9, 29.0), point(1.0, 25.0)]
    prof["references"] = {"dense": point(1.0, 33.0)["measured"]}
    return prof


@pytest.mark.slow
def test_pick_and_the_report_agree_where_t_d_1_is_faster_than_0_9(tmp_path):
    from hwbench.pattern.gate_pattern import synthesise
    from hwbench.pick.t_d import pick_t_d
    from hwbench.profile.predictor import Predictor, save_profile

    prof = nonmonotone_profile()
    pred = Predictor(prof)
    p90 = {t: pred.predict(synthesise("resnet18", "cifar", 32, t), "p90") for t in (0.9, 1.0)}
    assert p90[1.0] < p90[0.9]  # the fake is what it claims
    target_ms = (p90[1.0] + p90[0.9]) / 2  # met by t_d 1.0 alone, were it taken at its word
    pick = pick_t_d(prof, target_ms * 1e-3, "p90")
    assert pick.t_d < 0.9 and pick.predicted_ms <= target_ms
    path = save_profile(prof, tmp_path / "fake.json")
    # the report's old rule (the largest swept t_d measured under the target) said 1.0
    assert max(s["t_d"] for s in prof["sweep"] if s["measured"]["p90_ms"] <= target_ms) == 1.0
    build_report([path], tmp_path / "out", targets=[(target_ms * 1e-3, "p90")])
    (row,) = rows(tmp_path / "out", "summary")
    assert float(row["t_d"]) == pick.t_d and float(row["predicted_ms"]) == pytest.approx(
        pick.predicted_ms, rel=1e-5)
    assert float(row["swept_t_d"]) == 0.6 and float(row["measured_ms"]) == 20.0


@pytest.mark.parametrize("method,words", [
    ("nvml-counter", "NVML counter resolution 1 mJ"),
    ("nvml-power", "integrated polled power"),
])
def test_polled_power_is_not_labelled_a_counter(method, words):
    from hwbench.report.build import _energy_blocks
    from hwbench.report.inputs import Inputs, Profile
    from tests.profile.test_predictor import synthetic_profile

    prof = synthetic_profile()
    prof["fingerprint"] = {**prof["fingerprint"], "type": "cuda", "name": "Old GPU"}
    prof["energy"] = {"method": method, "measured": True, "idle_w": 30.0,
                      "points": [{"window_s": 1.2, "energy_j_total": 0.01}]}
    text = " ".join(str(b) for b in _energy_blocks(Inputs(profiles=[Profile("p.json", prof)]),
                                                   {}))
    assert words in text
    assert ("resolution 1 mJ" in text) is (method == "nvml-counter")


@pytest.mark.slow
def test_the_verdict_accuracy_and_baseline_sit_beside_the_latency(report, tmp_path):
    out, _, inp = report
    final = json.loads((inp["runs"] / "co" / "final.json").read_text())
    (row,) = [r for r in rows(out, "delivered") if r["run"] == "co"]
    assert row["verdict"] == final["verdict"] and row["network"] == final["network"]
    assert float(row["measured_ratio"]) == pytest.approx(final["measured"]["ratio"], rel=1e-5)
    assert float(row["knn_gated"]) == pytest.approx(final["knn_top1"]["gated"], rel=1e-5)
    assert row["baseline"] == ""  # the fixture's run trained none
    assert "## What each target run delivered" in (out / "report.md").read_text()
    # a run with a thin baseline: its row carries it
    from hwbench.deploy.final import final_record
    from tests.deploy.test_final import KNN, verify_result

    run = tmp_path / "runs" / "with_baseline"
    run.mkdir(parents=True)
    cfg = json.loads((inp["runs"] / "co" / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "summary.json").write_text(json.dumps({"config": cfg}))
    rec = final_record("trim-0.67x", verify_result(), (0.9, 1.0), KNN, 48.5, "cosine")
    rec["baseline"] = {"method": "thin", "width_mult": 0.59375, "verdict": "MET",
                       "measured": {"ratio": 0.64}, "knn_top1": 93.0}
    (run / "final.json").write_text(json.dumps(rec))
    build_report([run], tmp_path / "out")
    (b,) = rows(tmp_path / "out", "delivered")
    assert (b["verdict"], b["baseline"], b["baseline_verdict"]) == (
        "MET", "thin (width x 0.59375)", "MET")
    assert float(b["baseline_knn"]) == 93.0 and float(b["knn_gated"]) == 88.0
