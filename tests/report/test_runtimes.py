"""hwbench report with runtimes side by side: profiles of one device and setting that differ
only in their runtime are separate series and rows, never merged; a profile that names no
runtime (taken before runtimes existed) is eager. Small written-out profiles, no measuring."""

import csv
from pathlib import Path

import pytest

from hwbench.profile.predictor import profile_filename, save_profile
from hwbench.report import build_report
from hwbench.report.inputs import EAGER_LABEL, discover
from hwbench.report.tables import build_tables
from tests.profile.test_predictor import synthetic_profile

MACS = {0.3: 0.36, 0.5: 0.55, 1.0: 1.0}
# runtime -> (version, dense p50 ms, p50 ms per swept t_d, validation within 10%, within 5%);
# every number differs between runtimes, so a merged series cannot pass for either one
RUNTIMES = {
    None: (None, 10.0, {0.3: 6.0, 0.5: 7.5, 1.0: 10.4}, 0.9, 0.7),  # an old profile: eager
    "onnxruntime": ("1.32.0", 8.0, {0.3: 3.2, 0.5: 4.8, 1.0: 8.2}, 0.8, 0.5),
    "openvino": ("2026.4.0", 6.0, {0.3: 3.0, 0.5: 3.9, 1.0: 6.1}, 0.75, 0.25),
}
LABELS = {None: EAGER_LABEL, "onnxruntime": "onnxruntime 1.32.0",
          "openvino": "openvino 2026.4.0"}


def _stats(p50: float) -> dict:
    return {"n": 3, "samples_ms": [0.9 * p50, p50, 1.2 * p50], "p50_ms": p50,
            "p90_ms": 1.1 * p50, "p99_ms": 1.2 * p50, "min_ms": 0.9 * p50, "valid": True}


def fake_profile(runtime: str | None) -> dict:
    """The predictor's synthetic profile (tests/test_profiles) with references, a sweep and a
    validation measured "with" ``runtime`` (None: a fingerprint without runtime fields)."""
    version, dense, p50, w10, w5 = RUNTIMES[runtime]
    prof = synthetic_profile()
    fp = dict(prof["fingerprint"])
    if runtime is not None:
        fp.update(runtime=runtime, runtime_version=version, provider="CPU", runtime_threads=2)
    prof["fingerprint"] = fp
    prof["references"] = {"dense": _stats(dense), "masked": _stats(1.3 * dense)}
    prof["sweep"] = [{"t_d": t, "macs_ratio": MACS[t], "mode": "dynamic", "measured": _stats(ms),
                      "valid": True, "ratio_to_dense": ms / dense,
                      "predicted_p50_ms": 1.02 * ms, "predicted_p90_ms": 1.1 * ms}
                     for t, ms in p50.items()]
    points = [{"pattern": f"mixed-{i}", "macs_ratio": 0.4 + 0.1 * i,
               "ratio_to_dense": (0.5 + 0.1 * i), "predicted_ratio_to_dense": 0.52 + 0.1 * i}
              for i in range(2)]
    prof["validation"] = {"n": 2, "within_10pct": w10, "within_5pct": w5, "points": points}
    prof["energy"] = {"method": "none", "reason": "not measured in this test"}
    return prof


def write(tmp_path: Path, runtimes) -> Path:
    folder = tmp_path / "profiles"
    for rt in runtimes:
        prof = fake_profile(rt)
        save_profile(prof, folder / profile_filename(prof["fingerprint"]))
    return folder


def rows(out: Path, name: str) -> list[dict]:
    with open(out / "tables" / f"{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_an_old_profile_without_a_runtime_is_eager_and_keeps_its_label(tmp_path):
    old, ort = discover([write(tmp_path, [None, "onnxruntime"])]).profiles
    assert "runtime" not in old.fingerprint
    assert (old.runtime, old.runtime_label) == ("eager", EAGER_LABEL)
    assert old.device == old.hardware == "Test CPU (2 threads, fp32)"  # as before runtimes
    assert ort.runtime_label == "onnxruntime 1.32.0"
    assert ort.device == "Test CPU (2 threads, fp32) · onnxruntime 1.32.0"


@pytest.mark.slow
def test_the_runtimes_table_has_one_row_per_runtime_with_its_own_numbers(tmp_path):
    out = tmp_path / "rep"
    res = build_report([write(tmp_path, RUNTIMES)], out)
    got = {r["runtime"]: r for r in rows(out, "runtimes")}
    assert set(got) == set(LABELS.values()) and len(rows(out, "runtimes")) == 3
    for rt, (_, dense, p50, w10, w5) in RUNTIMES.items():
        r = got[LABELS[rt]]
        assert r["hardware"] == "Test CPU (2 threads, fp32)"
        assert float(r["dense_p50_ms"]) == pytest.approx(dense)
        for t in (0.3, 0.5):
            assert float(r[f"latency_ratio_td{t:g}"]) == pytest.approx(p50[t] / dense)
            # (dense p50 / p50) / (dense MACs / MACs), MACs ratio = MACs / dense MACs
            assert float(r[f"efficiency_td{t:g}"]) == pytest.approx(
                (dense / p50[t]) / (1 / MACS[t]))
        assert (float(r["within_10pct"]), float(r["within_5pct"])) == (w10, w5)
        assert r["provider"] == ("" if rt is None else "CPU")
    md = (out / "report.md").read_text()
    assert "## Runtimes side by side" in md and "measured" in md
    assert "| onnxruntime 1.32.0 |" in md and f"| {EAGER_LABEL} |" in md
    assert {res.figures[n] for n in ("latency_vs_td", "macs_not_time")} == {"drawn"}


def test_a_t_d_that_was_not_swept_is_left_empty_not_guessed(tmp_path):
    prof = fake_profile("onnxruntime")
    prof["sweep"] = [s for s in prof["sweep"] if s["t_d"] != 0.5]
    save_profile(prof, tmp_path / "p.json")
    (r,) = build_tables(discover([tmp_path / "p.json"]))["runtimes"].rows
    assert r["latency_ratio_td0.5"] is None and r["efficiency_td0.5"] is None
    assert r["latency_ratio_td0.3"] == pytest.approx(3.2 / 8.0)


def test_two_runtimes_of_one_device_are_never_merged(tmp_path):
    """Profiles identical but for the runtime: every table keyed by device keeps one series per
    runtime (one dense reference each, its own sweep), and the summary one row each."""
    tables = build_tables(discover([write(tmp_path, [None, "onnxruntime"])]))
    lat = tables["latency"].rows
    assert len({r["device"] for r in lat}) == 2
    for rt in (None, "onnxruntime"):
        _, dense, p50, _, _ = RUNTIMES[rt]
        mine = [r for r in lat if r["runtime"] == LABELS[rt]]
        assert len({r["device"] for r in mine}) == 1  # a runtime is one series ...
        others = [r for r in lat if r["device"] == mine[0]["device"]]
        assert others == mine  # ... and its series holds nothing of the other runtime
        assert [r["p50_ms"] for r in mine if r["mode"] == "dense"] == [dense]
        assert sorted(r["p50_ms"] for r in mine if r["mode"] == "dynamic") == sorted(p50.values())
    sweep = [r for r in tables["macs_vs_latency"].rows if r["source"] == "sweep"]
    by_device = {}
    for r in sweep:
        by_device.setdefault(r["device"], set()).add(r["runtime"])
    assert len(by_device) == 2 and all(len(v) == 1 for v in by_device.values())
    assert len({r["device"] for r in tables["summary"].rows}) == 2
    assert len({r["device"] for r in tables["predictor"].rows}) == 2


def test_the_figures_draw_one_line_per_runtime_on_the_same_axes(tmp_path):
    import hwbench.report.figures as figs

    tables = build_tables(discover([write(tmp_path, RUNTIMES)]))
    drawn = figs.draw_all(tables)
    ax = [a for a in drawn["latency_vs_td"].axes if a.get_visible()]
    assert len(ax) == 1  # one device and setting: one panel holds every runtime
    lines = {ln.get_label(): ln for ln in ax[0].get_lines()}
    colours = set()
    for rt, (_, dense, p50, _, _) in RUNTIMES.items():
        line = lines[f"{LABELS[rt]}: dynamic p50"]
        assert list(line.get_ydata()) == pytest.approx([p50[t] for t in sorted(p50)])
        ref = lines[f"{LABELS[rt]}: dense p50"]
        assert list(ref.get_ydata()) == pytest.approx([dense, dense])
        assert ref.get_color() == line.get_color()  # the dense reference is that runtime's
        colours.add(line.get_color() if isinstance(line.get_color(), str)
                    else tuple(line.get_color()))
    assert len(colours) == 3
    scatter = {c.get_label() for c in drawn["macs_not_time"].axes[0].collections}
    for rt in RUNTIMES:
        assert sum(LABELS[rt] in lab and lab.endswith("dynamic, sweep") for lab in scatter) == 1
    for fig in drawn.values():
        if fig is not None:
            figs.plt.close(fig)


def test_a_verified_point_without_its_profile_keeps_its_runtime(monkeypatch):
    """verify.json stores the runtime as a record (a dict): it labels the point's series, it
    never joins the eager one, and it is a plain label in the tables (hashable, no repr)."""
    from types import SimpleNamespace

    from hwbench.engine.runtimes import runtime_record
    from hwbench.report import tables
    from hwbench.report.inputs import record_label

    rec = runtime_record("onnxruntime", 1)
    assert record_label(rec) == f"onnxruntime {rec['runtime_version']}"
    assert record_label(None) == record_label("eager") == record_label(
        runtime_record("eager")) == EAGER_LABEL
    monkeypatch.setattr(tables, "_verify_profile", lambda run, inputs: None)
    run = SimpleNamespace(verify={"device": "Xeon", "runtime": rec})
    assert tables._device_of_verify(run, None) == f"Xeon · {record_label(rec)}"
    run = SimpleNamespace(verify={"device": "Xeon", "runtime": runtime_record("eager")})
    assert tables._device_of_verify(run, None) == "Xeon"
