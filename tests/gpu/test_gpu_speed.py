"""The numbers of issue 16, one check each (``scripts/gpu_check.sh`` runs them with ``-m gpu``).

Every check measures in one run (modes interleaved with their dense reference, the same
execution for both), writes its raw result to ``$HWBENCH_GPU_CHECK_OUT/speed_<check>.json``
(value, limit, pass) and asserts the limit **on a CUDA device only**: on the CPU dry run
(``HWBENCH_GPU_DEVICE=cpu``) the same code runs at small sizes to prove the plumbing, and the
limit is reported as a skip, because the limits are the GPU's numbers.

The issue's setting: resnet18, imagenet stem, 224 px. QUICK (and the CPU): cifar stem, 32 px.
``HWBENCH_GPU_COMPILE=1`` (``GPU_CHECK_COMPILE=1`` in the script) adds the torch.compile
measurements (the compiled training step, the compiled engine beside the graphed one): they
compile for minutes, more than the script's 8 minutes leave, so they are asked for, not default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hwbench.pattern.gate_pattern import GatePattern, mixed_pattern, synthesise
from tests.gpu.conftest import ROOT, quick, run_logged, tail, write_json

pytestmark = pytest.mark.gpu

# (limit, what) per check: the "Numbers to reach"
LIMITS = {
    "b1_static": (1.10, "batch 1 fp32: static p50 / dense p50 at MACs 0.5 (CUDA graphs)"),
    "b1_dynamic_width": (1.10, "batch 1 fp32: width-gated dynamic p50 / dense p50 at MACs 0.5 "
                               "(CUDA graphs, one graph per width bucket)"),
    "b256_static": (0.70, "batch 256 bf16: static (tile 8) p50 / dense p50 at MACs 0.5"),
    "b256_dynamic_width": (0.80, "batch 256 bf16: width-grouped dynamic p50 / dense p50 at "
                                 "MACs 0.5"),
    "step_cost": (1.30, "co-training step / VICReg step, batch 256 bf16 (eager)"),
    "step_cost_compiled": (1.30, "co-training step / VICReg step, batch 256 bf16, both "
                                 "forwards through torch.compile"),
    "profile_td0.3": (0.75, "profile at batch 256 bf16: p50 at t_d 0.3 / dense p50"),
    "energy_td0.5": (0.80, "energy per inference at batch 256 bf16: gated t_d 0.5 / dense "
                           "(NVML counter, measured)"),
}


def compile_checks() -> bool:
    return os.environ.get("HWBENCH_GPU_COMPILE", "0") == "1"


def setting(device: torch.device) -> dict:
    """Network and sizes: the issue's on CUDA (full run), small ones on the CPU or QUICK."""
    big = device.type == "cuda" and not quick()
    return {"arch": "resnet18", "stem": "imagenet" if big else "cifar",
            "size": 224 if big else 32, "batch": 256 if device.type == "cuda" else 8,
            "dtype": "bf16" if device.type == "cuda" else "fp32",
            "graphs": "graphs" if device.type == "cuda" else "eager",
            "max_time_s": 3.0 if big else 1.0}


def verdict(name: str, value: float, device: torch.device, out: Path, **raw) -> None:
    """Write the check's result; assert its limit on CUDA, skip it (with the value) elsewhere."""
    limit, what = LIMITS[name]
    ok = bool(value <= limit)
    write_json(out / f"speed_{name}.json", {"check": name, "what": what, "value": value,
                                            "limit": limit, "pass": ok, "device": str(device),
                                            **raw})
    msg = f"{what}: {value:.3f} (limit {limit:.2f})"
    if device.type != "cuda":
        pytest.skip(f"dry run on {device}: {msg}; the limit is a GPU number")
    assert ok, msg


def _pattern(path: Path, pat: GatePattern, tile: int = 1) -> str:
    d = pat.to_dict()
    if tile != 1:
        d["tile"] = tile
    path.write_text(json.dumps(d), encoding="utf-8")
    return str(path)


def _speedup(device, check_out: Path, name: str, pat: GatePattern, batch: int, dtype: str,
             execution: str, tile: int = 1):
    from hwbench.profile.speedup import SpeedupConfig, run_speedup

    s = setting(device)
    cfg = SpeedupConfig(pattern=_pattern(check_out / f"pattern_{name}.json", pat, tile),
                        device=str(device), batch_size=batch, dtype=dtype,
                        max_time_s=s["max_time_s"], min_runs=20, warmup=5, inputs=8,
                        execution=execution, tile=tile)
    res = run_speedup(cfg)
    write_json(check_out / f"speedup_{name}.json", res.to_dict())
    return res


def _ratio(res, mode: str) -> float:
    return res.modes[mode].p50_ms / res.modes["dense"].p50_ms


@pytest.mark.parametrize("name,mode,gate", [("b1_static", "static", "channel"),
                                            ("b1_dynamic_width", "dynamic", "width:16")])
def test_batch1_gated_within_10pct_of_dense(name, mode, gate, device, check_out):
    """Batch 1, fp32, CUDA graphs for every mode (dense included): the gated network at MACs
    0.5 no slower than 1.10x dense. Static: a mixed channel pattern (the one measured at 2.1x
    before); dynamic: a width-gated mixed pattern (per-channel gathers cannot be graphed)."""
    s = setting(device)
    pat = mixed_pattern(s["arch"], s["stem"], s["size"], 0.5, seed=3, gate=gate)
    res = _speedup(device, check_out, name, pat, 1, "fp32", s["graphs"])
    verdict(name, _ratio(res, mode), device, check_out, execution=s["graphs"],
            macs_ratio=res.modes[mode].macs / res.modes["dense"].macs)


@pytest.mark.parametrize("name,mode,gate", [("b256_static", "static", "channel"),
                                            ("b256_dynamic_width", "dynamic", "width:16")])
def test_large_batch_skipping_pays(name, mode, gate, device, check_out):
    """Batch 256, bf16, channels-last: static compaction with channel counts rounded to the
    tensor-core tile (8) at MACs 0.5 (a prior: no dynamic channels); width-grouped dynamic
    execution of a width-gated mixed pattern at expected MACs 0.5."""
    s = setting(device)
    if mode == "static":
        pat, tile = synthesise(s["arch"], s["stem"], s["size"], 0.5), 8
    else:
        pat, tile = mixed_pattern(s["arch"], s["stem"], s["size"], 0.5, seed=3, gate=gate), 1
    res = _speedup(device, check_out, name, pat, s["batch"], s["dtype"], "eager", tile)
    verdict(name, _ratio(res, mode), device, check_out, dynamic_plan=res.dynamic_plan,
            macs_ratio=res.modes[mode].macs / res.modes["dense"].macs,
            macs_executed_ratio=res.modes[mode].macs_executed / res.modes["dense"].macs)


@pytest.fixture(scope="session")
def step_cost(device, check_out) -> dict:
    """benchmarks/step_cost.py once: co-training and VICReg steps (gated view 1 + dense view 2 +
    gating loss + LARS, against two dense views + LARS), interleaved; on CUDA (full run) also
    their torch.compile'd forwards. Batch 256 bf16 autocast on CUDA."""
    cuda, full = device.type == "cuda", device.type == "cuda" and not quick()
    compiled = full and compile_checks()
    out = check_out / "step_cost.json"
    args = [str(ROOT / "benchmarks" / "step_cost.py"), "--device", str(device),
            "--batch-size", "256" if cuda else "8", "--amp", "bf16" if cuda else "off",
            "--dataset", "imagenet100" if full else "synthetic",
            "--max-time", "15" if cuda else "3", "--min-rounds", "5", "--out", str(out)]
    r = run_logged(args + (["--compile"] if compiled else []), out.with_suffix(".txt"),
                   300 if compiled else 120)
    assert r.returncode == 0 and out.exists(), tail(r)
    return {row["method"]: row for row in json.loads(out.read_text())["results"]}


@pytest.mark.parametrize("name,suffix", [("step_cost", ""), ("step_cost_compiled", ":compiled")])
def test_co_training_step_cost(name, suffix, device, step_cost, check_out):
    """co / dense step time, each with its own execution (eager with eager, compiled with
    compiled)."""
    if "co" + suffix not in step_cost:
        pytest.skip(f"{name}: compiled steps are timed in the full CUDA run with "
                    "HWBENCH_GPU_COMPILE=1 only")
    co, dense = step_cost["co" + suffix], step_cost["dense" + suffix]
    verdict(name, co["ratio_to_dense"], device, check_out, co_p50_ms=co["p50_ms"],
            dense_p50_ms=dense["p50_ms"])


@pytest.fixture(scope="session")
def large_batch_profile(device, check_out) -> dict:
    """``hwbench profile`` at the large batch (the library, for the table's knobs), with the
    NVML counter's energy per inference; saved to OUT."""
    from hwbench.profile.build import ProfileConfig, run_profile
    from hwbench.profile.predictor import save_profile

    s = setting(device)
    cfg = ProfileConfig(device=str(device), arch=s["arch"], stem=s["stem"], input_size=s["size"],
                        batch_size=s["batch"], dtype=s["dtype"], t_d=(0.3, 0.5, 1.0),
                        energy=device.type == "cuda", grid=8, table_rounds=3, validation=2,
                        calibration=2, max_time_s=s["max_time_s"], min_runs=16, warmup=3,
                        min_warmup_s=0.2, ci_target=0.02 if device.type == "cuda" else 0.10,
                        tile=8 if device.type == "cuda" else 1)
    prof = run_profile(cfg)
    save_profile(prof, check_out / f"profile_{device.type}_b{s['batch']}_{s['dtype']}.json")
    return prof


def test_profile_sweep_is_not_flat(device, large_batch_profile, check_out):
    sweep = {s["t_d"]: s for s in large_batch_profile["sweep"]}
    verdict("profile_td0.3", sweep[0.3]["ratio_to_dense"], device, check_out,
            ratios={str(t): s["ratio_to_dense"] for t, s in sweep.items()},
            valid=large_batch_profile["valid"])


def test_energy_per_inference_falls_with_t_d(device, check_out, request):
    if device.type != "cuda":
        pytest.skip(f"energy through NVML's counter is a CUDA check; the device is {device}")
    energy = request.getfixturevalue("large_batch_profile")["energy"]
    assert (energy["method"], energy["measured"]) == ("nvml-counter", True), energy
    points = {(p["mode"], p["t_d"]): p for p in energy["points"]}
    dense = points[("dense", None)]["energy_j_total"]
    gated = points[("dynamic", 0.5)]["energy_j_total"]
    verdict("energy_td0.5", gated / dense, device, check_out, dense_j=dense, gated_j=gated,
            unit="J per inference, NVML counter (measured)")


def test_batch1_compile_beside_graphs(device, check_out):
    """``--exec compile`` (torch.compile, mode reduce-overhead on CUDA) measured beside
    ``graphs`` in one interleaved run, batch 1 fp32, the channel pattern of the batch-1 check.
    No limit of its own (the issue asks for it as an alternative, measured): it must run and
    its ratios are written to OUT."""
    if device.type != "cuda" or quick() or not compile_checks():
        pytest.skip("compile is timed in the full CUDA run with HWBENCH_GPU_COMPILE=1 only "
                    "(tests/engine/test_graphs.py checks it on the CPU)")
    from hwbench.profile.speedup import SpeedupConfig, run_speedups

    s = setting(device)
    pat = mixed_pattern(s["arch"], s["stem"], s["size"], 0.5, seed=3)
    cfg = SpeedupConfig(pattern=_pattern(check_out / "pattern_b1_compile.json", pat),
                        device=str(device), batch_size=1, dtype="fp32", max_time_s=3.0,
                        min_runs=20, warmup=5, inputs=8)
    runs = run_speedups(cfg, ("graphs", "compile"))
    out = {ex: {**r.to_dict(), "ratios": {m: _ratio(r, m) for m in r.modes}}
           for ex, r in runs.items()}
    write_json(check_out / "speedup_b1_graphs_vs_compile.json", out)
    assert all(r.modes["dense"].p50_ms > 0 for r in runs.values())


@pytest.mark.parametrize("method,gate", [("co", "channel"), ("co", "width:16"),
                                         ("gated", "channel")])
def test_training_step_never_waits_for_the_device(method, gate, device):
    """Forward of both views, the losses, backward and the LARS update under CUDA's own sync
    check (``torch.cuda.set_sync_debug_mode("error")``: any host sync raises), bf16 autocast.
    The CPU's dry run uses the Python-level guard of tests/ssl/syncs.py instead."""
    from hwbench.nets import create_net
    from hwbench.ssl.model import LARS, CoTrainStep, Objective, SSLModel, lars_param_groups
    from tests.ssl.syncs import no_host_sync

    torch.manual_seed(0)
    net = create_net("resnet18", stem="cifar", gate=gate)
    model = SSLModel(net, proj_dims=(64, 64, 32)).to(device).train()
    objective = Objective(model, CoTrainStep(method, t_d=0.5))
    opt = LARS(lars_param_groups(model, 2.0), lr=0.1)
    v1, v2 = (torch.randn(8, 3, 32, 32, device=device) for _ in range(2))
    amp = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, terms = objective(v1, v2, 0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return terms

    step()  # the first step creates the momentum buffers
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            terms = step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    else:
        with no_host_sync():
            terms = step()
    assert torch.isfinite(torch.stack(list(terms.values()))).all()
