"""RUN/final.json: the record of what a latency-target run delivered, its one-line verdict, and
``hwbench train --target-latency`` exiting with that verdict's code (a fake device)."""

import json

import pytest

from hwbench.deploy.final import final_record, line, source_commit
from tests.conftest import run_cli


def verify_result(score=0.97, valid=True, ratio=0.65, p90_ms=4.9, target=0.67):
    """The fields of a verify.json that final.json reads."""
    return {"score": score, "valid": valid,
            "target": {"percentile": "p90", "ratio": target, "ms": None},
            "ratio_to_dense": {"value": ratio}, "measured": {"p90_ms": p90_ms},
            "runtime": {"runtime": "eager"}}


KNN = {"knn_top1_gated": 88.0, "knn_top1_dense": 91.3, "knn_test_n": 1000}


def test_the_record_follows_the_schema():
    rec = final_record("trim-0.67x", verify_result(), (0.9, 1.0), KNN, 48.5, "cosine")
    assert rec["schema"] == "hwbench/final@1" and rec["network"] == "trim-0.67x"
    assert (rec["verdict"], rec["exit_code"]) == ("MET", 0)
    assert rec["target"] == {"percentile": "p90", "ratio": 0.67, "ms": None}
    assert rec["band"] == [0.9, 1.0] and rec["baseline"] is None
    assert rec["measured"] == {"ratio": 0.65, "ms": 4.9, "runtime": "eager", "valid": True}
    assert rec["knn_top1"] == {"gated": 88.0, "dense_stream": 91.3, "random_init": 48.5,
                               "protocol": "cosine", "n_test": 1000}
    assert rec["commit"] == source_commit()
    assert rec["commit"] is None or len(rec["commit"]) == 40
    json.dumps(rec)  # plain JSON


@pytest.mark.parametrize("score,valid,gated,verdict,code", [
    (0.899, True, 88.0, "UNDERSHOT", 4), (1.001, True, 88.0, "MISSED", 4),
    (0.95, False, 88.0, "NO DECISION", 5), (0.95, True, 48.4, "DEGRADED", 6),
])
def test_the_record_carries_the_verdict_and_its_code(score, valid, gated, verdict, code):
    knn = {**KNN, "knn_top1_gated": gated}
    rec = final_record("deployed", verify_result(score, valid), (0.9, 1.0), knn, 48.5, "cosine")
    assert (rec["verdict"], rec["exit_code"]) == (verdict, code)


def test_the_line_puts_the_accuracy_beside_the_latency():
    rec = final_record("trim-0.67x", verify_result(), (0.9, 1.0), KNN, 48.5, "cosine")
    assert line(rec) == ("MET: p90 0.650x dense (band 0.603-0.670x) · gated kNN 88.0 % "
                         "(dense stream 91.3 %, random init 48.5 %)")
    ms = verify_result(score=0.7, p90_ms=3.5)
    ms["target"] = {"percentile": "p90", "ratio": None, "ms": 5.0}
    text = line(final_record("deployed", ms, (0.9, 1.0), {}, None, None))
    assert text.startswith("UNDERSHOT: p90 3.500 ms (band 4.500-5.000 ms); 30.0 % of the "
                           "latency budget unused")
    assert text.endswith("· gated kNN not evaluated")


# --- hwbench train --target-latency and hwbench trim, end to end on a fake device --------------


def fake_device(monkeypatch, profile: dict, valid: bool, gated_knn: float):
    """verify's timer answers at once, as a device 20 % faster than ``profile`` throughout: the
    gated network at its predicted p90 (so trimming and restoring move it), the dense one at
    the profile's (``valid``: a p90 CI within 2 %, else far wider); the kNN evaluation of the
    delivered network returns ``gated_knn``."""
    import dataclasses

    from hwbench.profile.predictor import Predictor
    from tests.deploy.test_verify import fake_measurement

    pred, dense = Predictor(profile), profile["references"]["dense"]["p90_ms"]

    def time_network(net, pattern, inputs, dev, *a, **kw):
        m = fake_measurement(0.8 * pred.predict(pattern, "p90"), 0.8 * dense,
                             spread=0.002 if valid else 0.05)
        return dataclasses.replace(m, inputs=inputs.record), ["dynamic"] * len(pattern.layers)

    def evaluate_deployed(checkpoint, pattern_path, device, out):
        return {"knn_top1_gated": gated_knn, "knn_top1_dense": 90.0, "knn_test_n": 64}

    monkeypatch.setattr("hwbench.deploy.verify.time_network", time_network)
    monkeypatch.setattr("hwbench.deploy.pipeline.evaluate_deployed", evaluate_deployed)


@pytest.fixture(scope="module")
def degraded_run(tmp_path_factory):
    """``hwbench train --budget latency --target-latency 0.67x`` on this machine's (synthetic)
    profile, the fake device, and a delivered gated kNN of 0 %: (run dir, CLI result)."""
    from hwbench.io import atomic_write_json
    from tests.profile.test_locate import local_profile

    tmp = tmp_path_factory.mktemp("final")
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.chdir(tmp)  # the learned pattern goes to ./models/<run>.json
        prof = atomic_write_json(tmp / "here.json", local_profile())
        fake_device(monkeypatch, local_profile(), True, 0.0)
        r = run_cli("train", "--dataset", "synthetic", "--n-synthetic", "64", "--epochs", "1",
                    "--batch-size", "16", "--max-steps-per-epoch", "1", "--no-energy",
                    "--budget", "latency", "--target-latency", "0.67x", "--target-device",
                    prof, "--out", tmp / "run")
    finally:
        monkeypatch.undo()
    return tmp / "run", r


@pytest.mark.slow
def test_train_to_a_target_writes_final_json_and_exits_with_its_code(degraded_run):
    run, r = degraded_run
    final = json.loads((run / "final.json").read_text())
    # latency lands (the fake device follows the profile), but the features are worse than
    # the randomly initialised network's: DEGRADED wins, and it is the exit code
    assert (final["verdict"], final["exit_code"]) == ("DEGRADED", 6), r.output
    assert r.exit_code == 6, r.output
    assert final["network"] == "trim-0.67x" and (run / "trim-0.67x" / "verify.json").exists()
    assert 0.603 <= final["measured"]["ratio"] <= 0.67 and final["measured"]["valid"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["delivered"] == final
    assert final["knn_top1"]["gated"] == 0.0 < final["knn_top1"]["random_init"]
    assert final["knn_top1"]["random_init"] == summary["initial"]["knn_top1_gated"]
    assert "trim-0.67x: DEGRADED: p90 " in r.output and "(band 0.603-0.670x)" in r.output
    assert "(latency: MET)" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("valid,verdict,code", [(True, "MET", 0), (False, "NO DECISION", 5)])
def test_trim_rewrites_final_json_and_exits_with_its_code(degraded_run, tmp_path, monkeypatch,
                                                          valid, verdict, code):
    from hwbench.io import atomic_write_json
    from tests.profile.test_locate import local_profile

    run, _ = degraded_run
    prof = atomic_write_json(tmp_path / "here.json", local_profile())
    fake_device(monkeypatch, local_profile(), valid, 100.0)
    r = run_cli("trim", run, "--target-latency", "0.6x", "--profile", prof, "--out",
                tmp_path / "t")
    final = json.loads((run / "final.json").read_text())
    assert (final["verdict"], final["exit_code"], r.exit_code) == (verdict, code, code), r.output
    assert final["network"] == str(tmp_path / "t")  # outside the run: named in full
    assert final["target"]["ratio"] == 0.6 and final["knn_top1"]["gated"] == 100.0
    assert f": {verdict}: p90 " in r.output


# --- CI's guard on what make run delivers ------------------------------------------------------


@pytest.mark.parametrize("gated,dense,verdict,ok", [
    (86.3, 91.3, "MET", True),  # exactly 5 points under: still worth it
    (86.29, 91.3, "MET", False),  # just over 5 under
    (91.0, 91.3, "UNDERSHOT", True),  # the latency verdict is not CI's business
    (91.0, 91.3, "NO DECISION", True),
    (40.0, 91.3, "DEGRADED", False),
])
def test_the_guard_judges_accuracy_not_latency(gated, dense, verdict, ok):
    from hwbench.deploy.final import guard

    rec = final_record("deployed", verify_result(), (0.9, 1.0),
                       {**KNN, "knn_top1_gated": gated, "knn_top1_dense": dense}, 10.0, "cosine")
    rec["verdict"] = verdict
    assert (guard(rec) is None) is ok, guard(rec)


def test_the_guard_script_fails_in_one_line_without_a_final_json(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hwbench.io import atomic_write_json

    script = Path(__file__).resolve().parents[2] / "scripts" / "check_final.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no final.json" in r.stderr
    atomic_write_json(tmp_path / "final.json", final_record(
        "trim-0.67x", verify_result(), (0.9, 1.0), KNN, 48.5, "cosine"))
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("check_final: ok: trim-0.67x: MET")
