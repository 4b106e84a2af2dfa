import json

import pytest

from hwbench.patterns import synthesise
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
