"""Profiles: the predictor on a synthetic table, the picker, schema checks, atomic versioned
writes, and one small real profiling run through the library and the CLI."""

import json

import numpy as np
import pytest
import torch

from hwbench.errors import UsageError
from hwbench.nets.geometry import net_geometry
from hwbench.pattern.gate_pattern import mixed_pattern, synthesise
from hwbench.pick.t_d import Unattainable, pick_t_d
from hwbench.profile.build import ProfileConfig, run_profile
from hwbench.profile.predictor import (
    SCHEMA,
    Predictor,
    ProfileError,
    load_profile,
    profile_filename,
    save_profile,
)
from tests.conftest import one_line_error
from tests.conftest import run_cli as run
from tests.measure.test_energy import gpu_meter

FP = {"type": "cpu", "name": "Test CPU", "threads": 2, "arch": "resnet18", "stem": "cifar",
      "input_size": 32, "batch_size": 1, "dtype": "fp32"}


def synthetic_profile(executes="kept", scale=1.0):
    """Block i costs (i + 1) * 0.01 ms per kept channel, +0.05 ms with a gate; stem + head 0.5."""
    blocks = []
    for i, b in enumerate(net_geometry("resnet18", "cifar", 32).blocks):
        grid = [0, b.width // 2, b.width]
        blocks.append({"name": b.name, "channels": b.width, "grid": grid,
                       "plain_ms": [(i + 1) * 0.01 * k for k in grid],
                       "gated_ms": [(i + 1) * 0.01 * k + 0.05 for k in grid]})
    return {"schema": SCHEMA, "fingerprint": FP,
            "table": {"stem_ms": 0.4, "head_ms": 0.1, "blocks": blocks},
            "dynamic_executes": [executes] * 8, "percentile_ratios": {"p90": 1.1, "p99": 1.5},
            "calibration": {"scale": scale}, "sweep": [],
            "references": {"dense": {"p50_ms": 30.0, "p90_ms": 33.0}}}


def expected_ms(pattern, executes="kept"):
    total = 0.5
    for i, lp in enumerate(pattern.layers):
        k = lp.always_on + (lp.dynamic if executes == "kept" else lp.dynamic * lp.dynamic_on_rate)
        total += (i + 1) * 0.01 * k + (0.05 if lp.dynamic else 0)
    return total


@pytest.mark.parametrize("executes", ["kept", "expected"])
def test_predictor_is_additive_and_interpolates(executes):
    pred = Predictor(synthetic_profile(executes))
    for seed in range(5):
        p = mixed_pattern("resnet18", "cifar", 32, 0.2 + 0.15 * seed, seed=seed)
        assert pred.predict(p) == pytest.approx(expected_ms(p, executes))
        assert pred.predict(p, "p90") == pytest.approx(1.1 * expected_ms(p, executes))
    assert Predictor(synthetic_profile(scale=2.0)).predict(p) == pytest.approx(
        2 * expected_ms(p))


def test_predictor_rejects_other_conditions_and_percentiles():
    pred = Predictor(synthetic_profile())
    with pytest.raises(UsageError, match="resnet18/imagenet/224px"):
        pred.predict(synthesise("resnet18", "imagenet", 224, 0.5))
    with pytest.raises(UsageError, match="percentile"):
        pred.predict(synthesise("resnet18", "cifar", 32, 0.5), "p95")


@pytest.mark.slow
def test_pick_largest_t_d_meeting_the_target():
    prof = synthetic_profile()
    pred = Predictor(prof)
    target_ms = pred.predict(synthesise("resnet18", "cifar", 32, 0.42), "p90")
    pick = pick_t_d(prof, target_ms / 1e3, "p90")
    assert pick.t_d == pytest.approx(0.42) and pick.predicted_ms <= target_ms
    assert pred.predict(synthesise("resnet18", "cifar", 32, 0.43), "p90") > target_ms
    assert pick_t_d(prof, 10.0).t_d == 1.0 and "no gating needed" in pick_t_d(prof, 10.0).note
    with pytest.raises(Unattainable, match="fastest") as err:
        pick_t_d(prof, 1e-6)
    assert err.value.exit_code == 2
    # the predictor is not trusted below the smallest measured t_d of the sweep
    prof["sweep"] = [{"t_d": 0.3}, {"t_d": 1.0}]
    below = pred.predict(synthesise("resnet18", "cifar", 32, 0.3), "p90") * 0.99
    with pytest.raises(Unattainable, match="covers t_d 0.3 to 1"):
        pick_t_d(prof, below / 1e3)


def test_load_profile_errors(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{oops")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ProfileError, match="'schema'"):
        load_profile(bad)
    prof = synthetic_profile()
    del prof["table"]
    bad.write_text(json.dumps(prof))
    with pytest.raises(ProfileError, match="'table' is missing"):
        load_profile(bad)
    prof = synthetic_profile()
    prof["table"]["blocks"][0]["plain_ms"].pop()
    bad.write_text(json.dumps(prof))
    with pytest.raises(ProfileError, match="malformed"):
        load_profile(bad)


def test_save_is_atomic_and_never_overwrites(tmp_path):
    path = tmp_path / profile_filename(FP)
    assert path.name == "test-cpu_2t_resnet18_cifar32_b1_fp32.json"
    first = save_profile(synthetic_profile(), path)
    second = save_profile(synthetic_profile(scale=3.0), path)
    assert first == path and second.name == "test-cpu_2t_resnet18_cifar32_b1_fp32-v2.json"
    assert load_profile(first)["calibration"]["scale"] == 1.0
    assert load_profile(second)["calibration"]["scale"] == 3.0
    assert not list(tmp_path.glob(".*.tmp"))


TINY = dict(input_size=16, t_d=(0.5, 1.0), max_time_s=0.05, min_runs=8, warmup=1,
            min_warmup_s=0.0, grid=4, table_rounds=2, validation=3, calibration=2,
            energy_window_s=0.05)


@pytest.mark.slow
def test_a_small_real_profile_has_every_part_and_exact_energy_arithmetic():
    prof = run_profile(ProfileConfig(**TINY), meter=gpu_meter())
    assert prof["schema"] == SCHEMA and prof["fingerprint"]["input_size"] == 16
    assert prof["fingerprint"]["runtime"] == "eager"
    assert [s["t_d"] for s in prof["sweep"]] == [0.5, 1.0]
    for s in prof["sweep"]:
        m = s["measured"]
        assert len(m["samples_ms"]) == m["n"] >= 8 and isinstance(s["valid"], bool)
        assert m["ci95_lo_ms"] <= m["p50_ms"] <= m["ci95_hi_ms"]
        assert s["predicted_p50_ms"] > 0
    assert prof["validation"]["n"] == 3 and len(prof["validation"]["errors"]) == 3
    assert len(prof["table"]["blocks"]) == 8 and prof["table"]["blocks"][0]["grid"][0] == 0
    # the latency table came through the one measurement path: protocol, validity, raw pieces
    t = prof["table"]
    assert t["protocol"]["min_runs"] == 2 and t["protocol"]["ci_target"] == 0.02
    assert set(t["entries"]) == {"dense", *(f"{k}@{j / 4:g}" for k in ("plain", "gated")
                                            for j in range(5))} - {"gated@0"}
    assert t["invalid"] == [k for k, e in t["entries"].items() if not e["valid"]]
    assert t["valid"] == (not t["invalid"])
    half = t["entries"]["plain@0.5"]
    assert len(half["segments_ms"]) == half["n"] >= 2 and len(half["segments_ms"][0]) == 10
    assert t["blocks"][3]["plain_ms"][2] == pytest.approx(
        float(np.median([row[4] for row in half["segments_ms"]])), abs=1e-4)
    table_warnings = [w for w in prof["warnings"] if w["where"].startswith("table")]
    assert len(table_warnings) == len({w["code"] for w in table_warnings})  # one per code
    if t["invalid"]:
        ci = next(w for w in table_warnings if w["code"] == "CI_NOT_MET")
        assert ci["networks"] == t["invalid"] and f"{len(t['invalid'])} of 10" in ci["where"]
    e = prof["energy"]
    assert e["method"] == "nvml-counter" and e["measured"] is True
    # the fake Zeus counter steps 1500 mJ per read: every window holds exactly 1.5 J
    assert e["idle_w"] == pytest.approx(1.5 / 1.0, rel=0.05)
    for pt in e["points"]:
        assert pt["energy_j_total"] == pytest.approx(1.5 / pt["inferences"])
        assert pt["energy_j_above_idle"] == pytest.approx(
            (1.5 - e["idle_w"] * pt["window_s"]) / pt["inferences"])
    codes = {w["code"] for w in prof["warnings"]}
    assert "ENERGY_WINDOW_SHORT" in codes  # 0.05 s windows are too short, and say so
    Predictor(prof)  # what was written can be read back
    # how busy the machine was over the whole profile (Linux /proc; others' share >= 0)
    load = prof["load"]
    assert load["wall_s"] > 0 and load["others_cores"] >= 0 and isinstance(load["busy"], bool)






@pytest.fixture(scope="module")
def cli_profile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prof")
    out = folder / "p.json"
    mine = mixed_pattern("resnet18", "cifar", 16, 0.6, seed=9).save(folder / "mine.json")
    r = run("profile", "--input-size", "16", "--t-d", "0.3,1.0", "--max-time", "0.1",
            "--min-runs", "8", "--warmup", "0", "--validation", "2", "--no-energy",
            "--grid", "4", "--table-rounds", "3",
            "--patterns", mine, "--patterns", mine, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.mark.slow
def test_profile_cli_writes_a_profile_and_prints_a_summary(cli_profile):
    out, text = cli_profile
    prof = load_profile(out)
    assert [s["t_d"] for s in prof["sweep"]] == [0.3, 1.0]
    assert len(prof["patterns"]) == 1  # the same file twice is measured once
    assert prof["patterns"][0]["predicted_p50_ms"] > 0 and prof["patterns"][0]["measured"]["n"]
    assert prof["energy"]["method"] == "none"
    assert "p90 ms" in text and "wrote" in text and "predictor" in text
    t = prof["table"]
    assert f"latency table: 10 networks, {t['rounds']} rounds, " in text
    assert ("every median valid" in text) == t["valid"]


@pytest.mark.slow
def test_predict_and_pick_cli(cli_profile, tmp_path):
    out, _ = cli_profile
    pat = synthesise("resnet18", "cifar", 16, 0.5).save(tmp_path / "p.json")
    d = json.loads(run("predict", "--profile", out, "--pattern", pat, "--json").output)
    assert d["p90_ms"] >= d["p50_ms"] > 0 and d["runtime"] == "eager"
    target = f"{d['p90_ms'] * 1000 * 1.001:.3f}us"  # just above the prediction
    d2 = json.loads(run("pick", "--profile", out, "--target-latency", target, "--json").output)
    assert d2["t_d"] >= 0.5 and d2["predicted_ms"] <= d2["target_ms"]
    assert "fastest" in one_line_error(run("pick", "--profile", out, "--target-latency", "1us"),
                                       code=2)


@pytest.mark.slow
def test_profile_cli_bad_input_leaves_nothing_behind(tmp_path, monkeypatch, cli_profile):
    import torch

    out = tmp_path / "x.json"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU" in one_line_error(run("profile", "--device", "cuda", "--out", out))
    assert "unknown device" in one_line_error(run("profile", "--device", "npu", "--out", out))
    assert "--t-d" in one_line_error(run("profile", "--t-d", "0,2", "--out", out))
    assert not out.exists()
    prof, _ = cli_profile
    assert "cannot parse latency" in one_line_error(
        run("pick", "--profile", prof, "--target-latency", "fast"))
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert "schema" in one_line_error(run("predict", "--profile", bad, "--pattern", bad))
    other = synthesise("resnet18", "cifar", 32, 0.5).save(tmp_path / "o.json")
    assert "the profile for" in one_line_error(run("predict", "--profile", prof, "--pattern",
                                                   other))


def test_env_cli():
    r = run("env", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["devices"][0]["device"] == "cpu" and "cpu" in d["energy"]
    assert {s["method"] for s in d["energy"]["cpu"]} >= {"rapl", "codecarbon-estimate"}


def _width_pattern(hists):
    """A resnet18 width:16 pattern from one histogram per block (None: the block's full width)."""
    from hwbench.nets.gate import parse_gate
    from hwbench.pattern.gate_pattern import GatePattern, LayerPattern

    layers = []
    for b, h in zip(net_geometry("resnet18", "cifar", 32).blocks, hists):
        n = b.width // 16
        layers.append(LayerPattern.from_width_hist(b.name, b.width, 16,
                                                   h or [0.0] * n + [1.0]))
    return GatePattern("resnet18", "cifar", 32, layers, gate=parse_gate("width:16"))


@pytest.mark.parametrize("executes", ["kept", "expected"])
def test_a_hard_width_pattern_predicts_the_table_sum_at_its_widths(executes):
    pred = Predictor(synthetic_profile(executes, scale=2.0))
    pattern = synthesise("resnet18", "cifar", 32, 0.4, gate="width:16")
    widths = [lp.widths()[0][0] for lp in pattern.layers]
    assert all(len(lp.widths()) == 1 for lp in pattern.layers)
    table = 0.5 + sum((i + 1) * 0.01 * w for i, w in enumerate(widths))  # plain: no gate runs
    assert pred.predict(pattern) == pytest.approx(2.0 * table, rel=1e-12)
    assert pred.predict(pattern, "p90") == pytest.approx(2.0 * 1.1 * table, rel=1e-12)
    assert pred.predict(pattern, "p99") == pytest.approx(2.0 * 1.5 * table, rel=1e-12)


def test_a_spread_width_pattern_predicts_the_per_input_distribution():
    prof = synthetic_profile("expected")
    prof["percentile_ratios"] = {"p90": 1.0, "p99": 1.0}  # no timing noise: the inputs alone
    pred = Predictor(prof)
    hist = [0.0] * 5  # layer1.0 (64 channels): half the inputs keep 16, half keep 64
    hist[1] = hist[4] = 0.5
    pattern = _width_pattern([hist] + [None] * 7)
    rest = 0.5 + sum((i + 1) * 0.01 * b.width
                     for i, b in enumerate(net_geometry("resnet18", "cifar", 32).blocks) if i)
    low, high = rest + 0.01 * 16 + 0.05, rest + 0.01 * 64 + 0.05  # gated: the width varies
    assert pred.predict(pattern, "p90") == pytest.approx(high, rel=1e-12)
    assert pred.predict(pattern, "p99") == pytest.approx(high, rel=1e-12)
    assert low <= pred.predict(pattern, "p50") <= high
    noisy = Predictor(synthetic_profile("expected"))
    mixed = mixed_pattern("resnet18", "cifar", 32, 0.4, seed=1, gate="width:16")
    p50, p90, p99 = (noisy.predict(mixed, q) for q in ("p50", "p90", "p99"))
    assert p50 < p90 <= p99
    assert noisy.predict(mixed, "p90") == p90  # seeded: the same answer every time
    dist = noisy.width_distribution(mixed)
    assert float(dist.min()) <= p50 <= 1.5 * float(dist.max())


def _staircase_profile(step, seed=0, noise=0.01):
    """A latency table with a staircase of ``step`` channels (None: smooth), noisy, unevenly
    fine: the first blocks' grids step by 2 and 4 channels, the later ones too coarse to tell."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for width, grid_step in ((64, 2), (128, 4), (256, 8), (512, 16)):
        grid = list(range(0, width + 1, grid_step))
        k = torch.tensor(grid, dtype=torch.float64)
        base = 0.2 + (torch.ceil(k / step) * step if step else k) * 0.002
        for_tables = []
        for _ in range(2):
            n = noise * torch.randn(len(grid), generator=g, dtype=torch.float64)
            for_tables.append((base * (1 + n)).tolist())
        blocks.append({"name": f"b{width}", "grid": grid, "plain_ms": for_tables[0],
                       "gated_ms": for_tables[1]})
    return {"table": {"blocks": blocks}}


@pytest.mark.parametrize("step", [8, 16, 32])
def test_table_step_reads_the_staircase_of_a_noisy_table(step):
    from hwbench.profile.predictor import table_step

    for seed in range(3):
        found = table_step(_staircase_profile(step, seed))
        assert found is not None and found[0] == step and found[1] < 0.95


def test_table_step_finds_none_in_a_smooth_or_coarse_table():
    from hwbench.profile.predictor import table_step

    assert table_step(_staircase_profile(None, 1)) is None
    coarse = _staircase_profile(16)
    coarse["table"]["blocks"] = coarse["table"]["blocks"][2:]  # grids of 8 and 16 channels
    assert table_step(coarse) is None


def test_calibration_keeps_the_model_that_predicts_left_out_patterns_better():
    from hwbench.profile.predictor import fit_calibration

    rng = np.random.default_rng(0)
    t = np.linspace(4.0, 13.0, 8)
    noise = 1 + rng.normal(0, 0.004, t.size)  # timing noise, unevenly spread
    # pieces that each pay a fixed cost: the table over-counts by 1.5 ms whatever the pattern
    fit = fit_calibration(list(t), list(0.07 * (t - 1.5) * noise), floor_ms=2.0)
    assert fit["model"] == "affine" and fit["loo_error"]["affine"] < fit["loo_error"]["scale"]
    assert fit["offset_ms"] == pytest.approx(-1.5, abs=0.2) and fit["s"] == pytest.approx(0.07,
                                                                                          rel=0.03)
    # in-context pieces: proportional, the intercept is noise
    fit = fit_calibration(list(t), list(0.08 * t * noise), floor_ms=2.0)
    assert fit["model"] == "scale" and fit["offset_ms"] == 0.0
    # an offset that would make the emptiest network take no time is not a candidate
    fit = fit_calibration(list(t), list(0.07 * (t - 2.5) * noise), floor_ms=2.0)
    assert fit["model"] == "scale" and fit["loo_error"]["affine"] == np.inf
    assert fit_calibration([5.0, 6.0], [0.4, 0.5], 1.0)["model"] == "scale"  # too few for affine


def test_the_predictor_adds_the_calibration_offset_to_every_table_sum():
    prof = synthetic_profile()
    base = Predictor(prof)
    prof["calibration"]["offset_ms"] = -0.5
    shifted = Predictor(prof)
    pat = synthesise("resnet18", "cifar", 32, 0.5)
    assert shifted.table_ms(pat) == pytest.approx(base.table_ms(pat) - 0.5)
    assert shifted.p50_ms(pat) == pytest.approx(base.scale * (base.table_ms(pat) - 0.5))
