"""The thin baseline: its latency from the profile's table, the width multiplier ``pick`` names,
the measured check of that prior on a device the table misjudges, and ``train --baseline thin``
filling final.json (a fake device)."""

import json

import pytest
import torch

from hwbench.deploy.baseline import (
    AIM,
    PRIOR_PROBES,
    ThinPick,
    land_prior,
    pick_width_mult,
    thin_candidates,
)
from hwbench.nets import net_geometry
from hwbench.pattern.gate_pattern import GatePattern, LayerPattern
from hwbench.pick.t_d import Unattainable
from hwbench.profile.predictor import Predictor
from hwbench.units import LatencyTarget
from tests.conftest import run_cli
from tests.deploy.test_verify import fake_measurement
from tests.profile.test_locate import local_profile


def all_on(arch="resnet18"):
    """The channel pattern with every channel always on: the dense network, gates dropped."""
    blocks = net_geometry(arch, "cifar", 32).blocks
    return GatePattern(arch, "cifar", 32, [
        LayerPattern(b.name, b.width, b.width, 0, 0, 0.0) for b in blocks], t_d=1.0)


def test_thin_latency_is_the_tables_plain_rows_at_its_widths():
    prof = local_profile()
    pred = Predictor(prof)
    full = [b.width for b in net_geometry("resnet18", "cifar", 32).blocks]
    # the full width is the dense network, which the channel rule predicts from the same rows
    assert pred.thin_ms(full, "p90") == pytest.approx(pred.predict(all_on(), "p90"), rel=1e-12)
    half = [w // 2 for w in full]
    by_hand = pred.scale * pred.ratios["p90"] * (pred.fixed_ms + sum(
        pred.block_ms(i, w, False) for i, w in enumerate(half)))
    assert pred.thin_ms(half, "p90") == pytest.approx(by_hand, rel=1e-12)
    assert pred.thin_ms(half, "p90") < pred.thin_ms(full, "p90")


def test_the_candidates_are_distinct_and_each_m_builds_its_widths():
    from hwbench.nets import width_mult_widths

    cands = thin_candidates("resnet18")
    widths = [w for _, w in cands]
    assert len(set(widths)) == len(widths) and widths[-1] == tuple(
        b.width for b in net_geometry("resnet18", "cifar", 32).blocks)
    for m, w in cands:
        assert tuple(width_mult_widths("resnet18", m, 16)) == w
    assert [sum(w) for w in widths] == sorted(sum(w) for w in widths)


def test_the_pick_is_the_widest_meeting_the_target_just_met_and_just_missed():
    prof = local_profile()
    pred = Predictor(prof)
    cands = thin_candidates("resnet18")
    m, w = cands[len(cands) // 2]
    at = pred.thin_ms(list(w), "p90")
    just_met = pick_width_mult(prof, at * 1e-3, "p90")
    assert (just_met.width_mult, just_met.widths) == (m, w)
    assert just_met.predicted_ms == pytest.approx(at)
    just_missed = pick_width_mult(prof, at * (1 - 1e-9) * 1e-3, "p90")
    assert sum(just_missed.widths) < sum(w) and just_missed.predicted_ms < at
    with pytest.raises(Unattainable):
        pick_width_mult(prof, 1e-6, "p90")


class MisjudgedDevice:
    """A device whose thin networks measure ``factor`` x what the profile predicts (noisy,
    unevenly wrong: a different error per block count), the dense one as profiled."""

    def __init__(self, prof, factor, seed=0):
        self.pred, self.factor = Predictor(prof), factor
        self.dense = self.pred.thin_ms([b.width for b in net_geometry(
            "resnet18", "cifar", 32).blocks], "p90")
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = 0

    def __call__(self, net, full, inputs, dev, goal, max_time_s, *a, **kw):
        self.calls += 1
        noise = 1 + 0.01 * float(torch.randn((), generator=self.gen))
        wobble = 1 + 0.03 * ((sum(net.widths) // 16) % 3 - 1)
        return fake_measurement(self.factor * wobble * noise * self.pred.thin_ms(
            net.widths, "p90"), self.dense)


@pytest.mark.parametrize("factor,seed", [(0.8, 0), (0.8, 1), (1.25, 2), (1.0, 3)])
def test_the_prior_is_moved_into_the_band_on_a_device_the_table_misjudges(monkeypatch, factor,
                                                                          seed):
    prof = local_profile()
    dense = Predictor(prof).thin_ms([b.width for b in net_geometry(
        "resnet18", "cifar", 32).blocks], "p90")
    goal = LatencyTarget.parse("0.6x", "p90")
    pick = pick_width_mult(prof, 0.6 * dense * 1e-3, "p90")
    device = MisjudgedDevice(prof, factor, seed)
    monkeypatch.setattr("hwbench.deploy.baseline.time_thin", device)
    landed, probes = land_prior(pick, prof, goal, torch.device("cpu"))
    assert 1 <= len(probes) <= PRIOR_PROBES and device.calls == len(probes)
    best = next(p for p in probes if p["widths"] == list(landed.widths))
    assert 0.90 <= best["score"] <= 1.00, probes
    assert landed.widths != pick.widths or factor == 1.0
    assert all(abs(p["score"] - AIM) >= abs(best["score"] - AIM) for p in probes
               if p["score"] <= 1.0)


@pytest.mark.parametrize("args,msg", [
    (["--baseline", "nope", "--target-latency", "0.6x"], "'nope' is not one of 'none', 'thin'"),
    (["--baseline", "thin"], "--baseline thin needs --target-latency"),
])
def test_a_bad_baseline_is_one_line_and_exit_2_before_any_work(tmp_path, args, msg):
    r = run_cli("train", "--dataset", "synthetic", "--out", tmp_path / "run", *args)
    assert r.exit_code == 2 and msg in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_with_a_thin_baseline_fills_final_json(tmp_path, monkeypatch):
    """The gated run and its thin baseline, each landed on 0.67x by its own path (a fake device
    that runs the thin networks 20 % faster than the table says)."""
    from hwbench.io import atomic_write_json
    from tests.deploy.test_final import fake_device

    monkeypatch.chdir(tmp_path)
    prof_dict = local_profile()
    prof = atomic_write_json(tmp_path / "here.json", prof_dict)
    fake_device(monkeypatch, prof_dict, True, 80.0)
    device = MisjudgedDevice(prof_dict, 0.8)
    monkeypatch.setattr("hwbench.deploy.baseline.time_thin", device)
    r = run_cli("train", "--dataset", "synthetic", "--n-synthetic", "64", "--epochs", "1",
                "--batch-size", "16", "--max-steps-per-epoch", "1", "--no-energy",
                "--budget", "latency", "--target-latency", "0.67x", "--target-device", prof,
                "--baseline", "thin", "--out", tmp_path / "run")
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    b = final["baseline"]
    assert b is not None, r.output
    assert b["method"] == "thin" and b["verdict"] == "MET", r.output
    assert 0.90 * 0.67 <= b["measured"]["ratio"] <= 0.67 and b["measured"]["valid"]
    assert b["knn_top1"] is not None and 0 < b["macs_ratio"] < 1
    thin_cfg = json.loads((tmp_path / "run" / "baseline-thin" / "config.json").read_text())
    assert thin_cfg["method"] == "dense" and thin_cfg["width_mult"] == b["width_mult"]
    assert thin_cfg["widths"] == b["widths"]
    assert "thin baseline (width x" in r.output and r.exit_code == final["exit_code"]


def test_a_thin_pick_records_its_source():
    p = ThinPick(0.5, (32, 32), 3.0, 3.1, "p90").to_dict()
    assert p["widths"] == [32, 32] and p["source"].startswith("predicted")
