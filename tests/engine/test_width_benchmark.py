"""A smoke test of benchmarks/width_engine.py's functions (tiny sizes; no timing asserted)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "width_engine.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("width_engine", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hard_pattern_keeps_exactly_the_given_widths(bench):
    from hwbench.pattern.gate_pattern import mixed_pattern

    p = mixed_pattern("resnet18", "cifar", 16, 0.5, seed=0, gate="width:16")
    widths = [lp.always_on + lp.dynamic for lp in p.layers]
    hp = bench.hard_pattern(p, widths)
    assert [lp.always_on for lp in hp.layers] == widths
    assert all(lp.dynamic == 0 for lp in hp.layers)


@pytest.mark.slow
def test_batch1_records_one_median_per_input_per_engine(bench):
    r = bench.batch1(0.5, n=2, reps=1, size=16, warmup_s=0.0, calibration=8)
    assert set(r["median_ms_per_input"]) == {"dense", "dynamic", "matched_static",
                                             "channel_dynamic"}
    assert all(len(v) == 2 for v in r["median_ms_per_input"].values())
    assert len(r["dynamic_over_matched_static"]) == 2 and r["efficiency_width"] > 0
    assert set(r["plan_width"]) <= {"width", "static"}


@pytest.mark.slow
def test_large_batch_compares_tiled_static_and_width_sorted_to_dense(bench, capsys):
    from argparse import Namespace

    args = Namespace(device="cpu", dtype="fp32", batch=4, arch="resnet18", stem="cifar",
                     size=16, t_d=0.5, tile=8, pool=1, calibration=8, batch_time=0.05)
    r = bench.large_batch(args)
    assert set(r["ratios_to_dense"]) == {"static_tile8", "static_untiled", "width_sorted",
                                         "width_auto", "width_sorted_unpermute_per_block"}
    pattern, executed = r["macs_ratio_pattern_executed"]["static_tile8"]
    assert executed >= pattern > 0
    assert "width" in r["plans"]["width_sorted"]
    bench.report_large_batch(r)
    assert "static_tile8" in capsys.readouterr().out
