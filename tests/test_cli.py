import json

import pytest

from hwbench.pattern.gate_pattern import synthesise
from tests.conftest import one_line_error
from tests.conftest import run_cli as run


def test_flops_default_table():
    r = run("flops")
    assert r.exit_code == 0, r.output
    assert "703,560,448 MACs" in r.output and "layer4.1" in r.output and "FLOPs" in r.output


def test_flops_json_dense_and_t_d():
    d = json.loads(run("flops", "--json").output)
    assert d["dense_macs"] == 703_560_448 and d["unit"] == "MACs"
    assert len(d["layers"]) == 8
    d = json.loads(run("flops", "--stem", "imagenet", "--input-size", "96", "--t-d", "0.5",
                       "--json").output)
    assert d["dense_macs"] == 333_103_104
    assert d["ratio"] == pytest.approx(d["gated_macs"] / d["dense_macs"])
    assert abs(d["ratio"] - 0.5) < 0.01 and d["t_d"] == 0.5


def test_flops_pattern_file(tmp_path):
    path = synthesise("resnet34", "imagenet", 64, 0.4).save(tmp_path / "p.json")
    d = json.loads(run("flops", "--pattern", str(path), "--json").output)
    assert d["arch"] == "resnet34" and d["input_size"] == 64 and len(d["layers"]) == 16
    r = run("flops", "--pattern", str(path))
    assert r.exit_code == 0 and "ratio gated/dense" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--arch", "resnet7"], "unknown arch"),
    (["--t-d", "1.5"], "--t-d"),
    (["--t-d", "0"], "--t-d"),
    (["--input-size", "0"], "--input-size"),
    (["--input-size", "abc"], "input-size"),
    (["--stem", "tiny"], "stem"),
    (["--pattern", "missing.json"], "no such file"),
    (["--nope"], "--nope"),
])
def test_flops_bad_input_is_one_line_exit_2(args, needle):
    assert needle in one_line_error(run("flops", *args))


def test_flops_pattern_errors(tmp_path):
    path = synthesise("resnet18", "cifar", 32, 0.4).save(tmp_path / "p.json")
    assert "does not match" in one_line_error(run("flops", "--pattern", str(path),
                                                  "--arch", "resnet50"))
    assert "mutually exclusive" in one_line_error(run("flops", "--pattern", str(path),
                                                      "--t-d", "0.3"))
    d = json.loads(path.read_text())
    d["layers"][0]["always_on"] = 63
    path.write_text(json.dumps(d))
    line = one_line_error(run("flops", "--pattern", str(path)))
    assert str(path) in line and "layers[0].always_on" in line


def test_help_describes_every_option():
    r = run("--help")
    assert r.exit_code == 0 and "flops" in r.output
    r = run("flops", "--help")
    assert r.exit_code == 0
    for opt in ("--arch", "--stem", "--input-size", "--pattern", "--t-d", "--json"):
        assert opt in r.output


@pytest.mark.parametrize("text,needle", [
    ("soon", "cannot parse --time-budget 'soon'"),
    ("12", "cannot parse --time-budget '12'"),  # a unit is needed
    ("12 minutes", "e.g. 90s, 12min or 1.5h"),
    ("0min", "--time-budget must be positive"),
    ("-5s", "cannot parse --time-budget"),
])
def test_train_time_budget_bad_text_is_one_line(tmp_path, text, needle):
    r = run("train", "--dataset", "digits", "--time-budget", text, "--out", tmp_path / "r")
    assert needle in one_line_error(r)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_train_time_budget_sizes_a_run_end_to_end(tmp_path):
    # dense, one epoch at most, 64 synthetic images: the kNN evaluations (at the start and the
    # end of a budgeted run) are most of this test's time
    r = run("train", "--dataset", "synthetic", "--n-synthetic", "64", "--method", "dense",
            "--time-budget", "10min",
            "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2", "--no-energy",
            "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    plan = cfg["time_budget"]
    assert cfg["time_budget_s"] == plan["budget_s"] == 600.0
    assert cfg["epochs"] == plan["epochs"] == plan["max_epochs"] == 1
    assert 1 <= plan["steps_per_epoch"] <= 2 and plan["predicted_s"] <= 0.9 * 600
    assert plan["eval_s"] > 0 and plan["step_s"] > 0 and plan["final_s"] == 0  # dense: no pattern
    assert cfg["lr"] == 0.05 and "--time-budget run of" in cfg["lr_reason"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["time_budget"]["epochs"] == 1 and isinstance(summary["warnings"], list)
    assert "time budget 600 s: on this machine a step takes" in r.output
    assert "learning rate 0.05" in r.output and "this launch took" in r.output
