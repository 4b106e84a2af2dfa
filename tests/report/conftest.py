"""Report fixtures written by the real code paths (profiler, train, verify, eval), tiny sizes,
with fake energy sources so the numbers are exact and nothing depends on this machine's power."""

import pytest
import torch

from hwbench.measure.energy import CodecarbonMeter
from hwbench.pick.t_d import pick_t_d
from hwbench.profile.build import ProfileConfig, run_profile
from hwbench.profile.predictor import profile_filename, save_profile
from tests.conftest import goals_for, trim_goal_for
from tests.measure.test_energy import _CC, gpu_meter

TINY_PROFILE = dict(input_size=32, t_d=(0.3, 0.6, 1.0), max_time_s=0.05, min_runs=32, warmup=1,
                    min_warmup_s=0.0, grid=4, table_rounds=2, validation=3, calibration=1,
                    energy_window_s=0.05)
TINY_RUN = dict(dataset="synthetic", n_synthetic=32, batch_size=16, proj_dims=(32, 32, 16),
                max_steps_per_epoch=1, eval_every=1)


@pytest.fixture(scope="session")
def report_inputs(tmp_path_factory):
    """profiles/: this CPU with codecarbon-estimated energy (batch 1) and with an exact fake
    NVML counter (batch 2); runs/: a verified co-trained run with eval.json and training energy,
    and a run interrupted before any evaluation."""
    from hwbench.deploy.pipeline import train_to_target
    from hwbench.train.config import TrainConfig
    from hwbench.train.evaluation import run_eval
    from hwbench.train.loop import train

    root = tmp_path_factory.mktemp("report-inputs")
    threads = torch.get_num_threads()
    est = run_profile(ProfileConfig(**TINY_PROFILE, threads=threads),
                      meter=CodecarbonMeter(factory=_CC))
    # the run's target: just above the table's prediction at swept t_d 0.6; whatever t_d pick
    # makes of it, the report's summary must make the same (one rule, tested there)
    target_ms = next(x["predicted_p90_ms"] for x in est["sweep"] if x["t_d"] == 0.6) * 1.0005
    run_t_d = pick_t_d(est, target_ms * 1e-3).t_d
    est_path = save_profile(est, root / "profiles" / profile_filename(est["fingerprint"]))
    meas = run_profile(ProfileConfig(**TINY_PROFILE, threads=threads, batch_size=2),
                       meter=gpu_meter())
    save_profile(meas, root / "profiles" / profile_filename(meas["fingerprint"]))
    cfg = TrainConfig(**TINY_RUN, epochs=2, energy=True, out=str(root / "runs" / "co"),
                      models_dir=str(root / "models"))
    train_to_target(cfg, goals_for(cfg, f"{est_path}:{target_ms!r}ms"), verify_max_time_s=0.2,
                    energy_factory=_CC)
    run_eval(root / "runs" / "co" / "checkpoint.pt", linear=True, knn=True)
    from hwbench.deploy.pipeline import trim_run

    run = root / "runs" / "co"
    trim_run(run, trim_goal_for(run, f"{target_ms!r}ms", est_path), max_time_s=0.2,
             min_runs=16, verify_max_time_s=0.2, calib_samples=32, max_measurements=3)

    def stop_in_second_epoch(state):  # epoch 0 finished, never evaluated
        if state["epoch"] >= 1:
            raise KeyboardInterrupt

    try:
        train(TrainConfig(**{**TINY_RUN, "eval_every": 5}, epochs=3, eval_initial=False,
                          energy=False, t_d=0.5, out=str(root / "runs" / "unevaluated"),
                          models_dir=str(root / "models")), progress=stop_in_second_epoch)
    except KeyboardInterrupt:
        pass
    _comparison(root / "runs" / "dynamic_vs_static_cpu.json")
    return {"root": root, "profiles": root / "profiles", "runs": root / "runs",
            "estimated": est_path, "target_ms": target_ms, "t_d": run_t_d}


def _comparison(path) -> None:
    """A benchmarks/dynamic_vs_static.py results file: two targets x three methods, one method
    short of its target (not landed), one with no kNN (a failed evaluation)."""
    import json

    rows = []
    for ratio, dense in ((0.45, 7.1), (0.6, 7.3)):
        for method, off, knn in (("thin", -0.02, 88.1), ("channel", -0.04, 80.4),
                                 ("width", 0.09 if ratio == 0.45 else -0.01,
                                  None if ratio == 0.6 else 84.0)):
            p90 = ratio * dense * (1 + off)
            rows.append({"target": f"{ratio}x", "target_ms": ratio * dense, "method": method,
                         "p50_ms": 0.93 * p90, "p90_ms": p90, "ratio_p90": p90 / dense,
                         "landed": abs(off) <= 0.05, "macs_ratio": ratio * 0.8,
                         "knn_top1": knn, "knn_se": 1.1, "knn_n": 1000, "epochs": 3,
                         "seed": 0, "detail": {"run": "elsewhere"}})
    path.write_text(json.dumps({"benchmark": "dynamic_vs_static", "rows": rows}))
