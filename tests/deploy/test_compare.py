"""``hwbench compare``: bad input refused in one line before any work; every target x method a
row with its verdict, kNN and raw samples, on a fake device the profile misjudges; --resume
skips finished rows; the figure is drawn from the rows."""

import json

import pytest

from tests.conftest import one_line_error, run_cli
from tests.profile.test_locate import local_profile

TINY = ("--dataset", "synthetic", "--n-synthetic", "64", "--time-budget", "0", "--epochs", "1",
        "--batch-size", "16", "--max-steps-per-epoch", "1")


@pytest.mark.parametrize("args,msg", [
    (["--methods", "thin,nope"], "--methods: expected some of thin, channel, width, pruned"),
    (["--targets", "5ms"], "--targets: ratios of the dense latency"),
    (["--targets", "fast"], "fast"),
    (["--time-budget", "0"], "give --time-budget or --epochs"),
    (["--arch", "resnet50", "--methods", "pruned"], "bottleneck"),
    (["--time-budget", "ten"], "--time-budget"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    r = run_cli("compare", "--out", tmp_path / "c.json", *args)
    one_line_error(r)
    assert msg in r.output
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "profiles").exists()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """thin, pruned and channel rows at 0.67x on synthetic data, on a fake device (thin and
    pruned networks 20 % faster than the table says, unevenly; gated ones as in test_final)."""
    from hwbench.io import atomic_write_json
    from hwbench.profile.predictor import profile_filename
    from tests.deploy.test_baseline import MisjudgedDevice
    from tests.deploy.test_final import fake_device

    tmp = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(tmp)
        prof = local_profile()
        atomic_write_json(tmp / "profiles" / profile_filename(prof["fingerprint"]), prof)
        fake_device(mp, prof, True, 80.0)
        mp.setattr("hwbench.deploy.baseline.time_thin", MisjudgedDevice(prof, 0.8))
        r = run_cli("compare", *TINY, "--targets", "0.67x", "--methods", "thin,pruned,channel",
                    "--out", tmp / "c.json")
    finally:
        mp.undo()
    return tmp, r


@pytest.mark.slow
def test_every_target_and_method_is_a_row_with_its_verdict_and_samples(compared):
    tmp, r = compared
    assert r.exit_code == 0, r.output
    res = json.loads((tmp / "c.json").read_text())
    assert res["schema"] == "hwbench/compare@1" and res["benchmark"] == "compare"
    rows = res["rows"]
    assert [(x["target"], x["method"]) for x in rows] == [
        ("0.67x", "thin"), ("0.67x", "pruned"), ("0.67x", "channel")]
    for x in rows:
        for key in ("target_ratio", "method", "measured_ratio_p90", "verdict", "knn_top1",
                    "knn_se", "macs_ratio", "commit", "config"):
            assert key in x, key
        assert x["verdict"] == "MET", (x["method"], x["measured_ratio_p90"])
        assert 0.9 * 0.67 <= x["measured_ratio_p90"] <= 0.67
        assert len(x["samples_ms"]["network"]) == len(x["samples_ms"]["dense"]) > 0
        assert 0 < x["macs_ratio"] < 1 and x["knn_top1"] is not None
        assert x["config"]["seed"] == 0 and x["config"]["dataset"] == "synthetic"
    pruned = rows[1]
    assert pruned["config"]["widths"] and all(w % 16 == 0 for w in pruned["config"]["widths"])
    assert (tmp / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "written" in r.output and "MET: p90 " in r.output


@pytest.mark.slow
def test_resume_skips_finished_rows_and_runs_the_missing_ones(compared, monkeypatch):
    import shutil

    tmp, _ = compared
    out = tmp / "resumed.json"
    shutil.copy(tmp / "c.json", out)
    monkeypatch.chdir(tmp)

    def no_training(*a, **kw):
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr("hwbench.deploy.compare.ROWS", {m: no_training for m in
                                                 ("thin", "pruned", "channel", "width")})
    r = run_cli("compare", *TINY, "--targets", "0.67x", "--methods", "thin,pruned,channel",
                "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped (--resume)") == 3
    assert len(json.loads(out.read_text())["rows"]) == 3
    # other settings: the old rows are not reused (and the next row would be trained)
    r = run_cli("compare", *TINY, "--seed", "1", "--targets", "0.67x", "--methods", "thin",
                "--out", out, "--resume")
    assert "not reused" in r.output and r.exit_code != 0
