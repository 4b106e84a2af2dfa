"""``hwbench compare``: at equal measured latency, which network is worth deploying?

For every latency target (a ratio of the dense network's latency at the percentile, measured
alongside on this machine) and every method, one network is trained from scratch for the same
time budget and seed on the same data, landed in the band ``[0.90, 1.00] x target`` by its own
path, measured at batch 1 on real test images against the dense network alongside (the verify
protocol), and its kNN top-1 taken by the run's protocol on the test split:

* ``thin``: a thinner dense network (``hwbench.deploy.baseline``: the width multiplier from the
  profile's table, checked by measuring, trained with VICReg for the whole budget);
* ``channel`` / ``width``: per-channel or width gates, the whole ``hwbench train
  --target-latency`` path (latency budget, deploy, trim or restore, recovery fine-tuning);
* ``pruned``: a dense network trained with the same share of the budget, structurally pruned to
  the target with Torch-Pruning (``hwbench.deploy.prune``), then fine-tuned with the gated networks'
  recovery fine-tuning, taught by the network it was pruned from.

Writes ``{"schema", "command", "rows": [...]}`` after every row (atomically), one row per
target x method, with the raw samples the verdict was decided on; ``resume`` keeps the rows of a
previous invocation with the same settings and skips them (a run interrupted mid-training is
resumed from its last checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hwbench.data import info
from hwbench.deploy.baseline import land, measure_trained, thin_baseline
from hwbench.deploy.pipeline import train_to_target
from hwbench.deploy.prune import candidates, channel_scores, prune
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME
from hwbench.errors import UsageError
from hwbench.io import atomic_torch_save, atomic_write_json, check_writable
from hwbench.measure.device import torch_threads
from hwbench.nets import list_nets
from hwbench.nets.gate import GATE_KINDS, GateSpec
from hwbench.pick.goal import Goal
from hwbench.pick.t_d import envelope
from hwbench.profile.locate import profile_threads
from hwbench.profile.predictor import Predictor
from hwbench.provenance import provenance, source_commit
from hwbench.train.config import TrainConfig, budget_defaults
from hwbench.train.evaluation import load_run, run_eval
from hwbench.train.finetune import FinetuneConfig, finetune
from hwbench.train.loop import train
from hwbench.train.precision import amp_choice
from hwbench.train.schedule import BUDGET_MAX_EPOCHS
from hwbench.units import LatencyTarget

SCHEMA = "hwbench/compare@1"
BENCHMARK = "compare"  # the report reads files whose "benchmark" is this
# a gated network per gate kind, beside the two static alternatives
METHODS = ("thin", *GATE_KINDS, "pruned")
GATES = {kind: GateSpec.of(kind).text for kind in GATE_KINDS}  # channel, width:16
# the settings a resumed invocation must share with the rows it keeps
SAME = ("dataset", "arch", "time_budget_s", "epochs", "seed", "device", "runtime", "percentile",
        "batch_size", "max_steps_per_epoch", "n_synthetic")


@dataclass(frozen=True)
class CompareConfig:
    targets: tuple[str, ...] = ("0.45x", "0.6x", "0.75x")
    methods: tuple[str, ...] = METHODS
    dataset: str = "mnist5k"
    arch: str = "resnet18"
    time_budget_s: float | None = 600.0  # per network; None: ``epochs``
    epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    runtime: str = DEFAULT_RUNTIME
    percentile: str = "p90"
    out: str = "results/compare_mnist5k_cpu.json"
    work_dir: str | None = None  # the training runs; None: next to ``out`` (``<out>_runs``)
    resume: bool = False
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    n_synthetic: int = 512
    verify_max_time_s: float = 10.0
    command: str | None = None  # the invocation, recorded in the results

    @property
    def runs(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.out).with_suffix("").parent \
            / (Path(self.out).stem + "_runs")

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in SAME}


def check_compare(cc: CompareConfig, goals: list[Goal]) -> None:
    """One-line errors (``UsageError``) before anything is trained or measured. ``goals``:
    ``cc.targets`` parsed at the edge (``hwbench.pick.goal.parse_goals``)."""
    bad = [m for m in cc.methods if m not in METHODS]
    if bad or not cc.methods:
        raise UsageError(f"--methods: expected some of {', '.join(METHODS)}, got "
                         f"{', '.join(bad) or 'none'}")
    if not cc.targets:
        raise UsageError("--targets: give at least one, e.g. 0.6x")
    if any(g.target.ratio is None for g in goals):
        raise UsageError("--targets: ratios of the dense latency (0.6x): rows are compared at "
                         "equal ratios measured alongside")
    if cc.arch not in list_nets():
        raise UsageError(f"unknown network {cc.arch!r}; registered: {', '.join(list_nets())}")
    if "pruned" in cc.methods and cc.arch == "resnet50":
        raise UsageError("--methods pruned: resnet50 has bottleneck blocks; pruning supports "
                         "resnet18 and resnet34")
    if cc.time_budget_s is None and not cc.epochs:
        raise UsageError("give --time-budget or --epochs (the same for every network)")
    if "pruned" in cc.methods:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise UsageError("--methods pruned needs Torch-Pruning: pip install "
                             "'hwbench[prune]'") from None
    info(cc.dataset)
    check_writable(cc.out)


def base_config(cc: CompareConfig, name: str, **kw):
    """The training every method starts from: the data set, seed and budget of ``cc``."""
    budget = kw.pop("budget", "flops")
    epochs = cc.epochs or (BUDGET_MAX_EPOCHS if cc.time_budget_s else 10)
    return TrainConfig(dataset=cc.dataset, arch=cc.arch, epochs=epochs, seed=cc.seed,
                       device=cc.device, batch_size=cc.batch_size, energy=False,
                       time_budget_s=cc.time_budget_s, out=str(cc.runs / name),
                       resume=cc.resume, max_steps_per_epoch=cc.max_steps_per_epoch,
                       n_synthetic=cc.n_synthetic, budget=budget,
                       **budget_defaults(budget), **kw)


def run_compare(cc: CompareConfig, goals: list[Goal],
                say: Callable[[str], None] = lambda s: None) -> dict:
    """Every target x method row (see the module docstring) at the located ``goals`` (one per
    target of ``cc``, on this machine's profile of the runtime); the results object written."""
    done = _previous_rows(cc, say) if cc.resume else []

    results = {"schema": SCHEMA, "benchmark": BENCHMARK, "command": cc.command,
               "provenance": provenance(), "settings": cc.settings(), "rows": list(done)}
    for goal in goals:
        text = goal.target.text
        for method in cc.methods:
            if any(r["target"] == text and r["method"] == method for r in done):
                say(f"[{text} {method}] done in {cc.out}: skipped (--resume)")
                continue
            t0 = time.perf_counter()

            def tell(line: str, _g=text, _m=method) -> None:
                say(f"[{_g} {_m}] {line}")

            part = ROWS[method](cc, goal, tell)
            row = make_row(cc, goal.target, method, part, time.perf_counter() - t0)
            results["rows"].append(row)
            atomic_write_json(cc.out, results)
            tell(row_line(row))
    atomic_write_json(cc.out, results)
    return results


def _previous_rows(cc: CompareConfig, say) -> list[dict]:
    """The rows of ``cc.out`` written with the same settings (others are not kept)."""
    try:
        old = json.loads(Path(cc.out).read_text())
    except (OSError, ValueError):
        return []
    if old.get("schema") != SCHEMA or old.get("settings") != cc.settings():
        say(f"{cc.out}: written with other settings: its rows are not reused")
        return []
    return [r for r in old.get("rows", []) if isinstance(r, dict)]


def make_row(cc: CompareConfig, goal: LatencyTarget, method: str, part: dict,
             wall_s: float) -> dict:
    """One results row from a method's ``part`` (its verify-like record ``ver``, kNN, MACs,
    config and run folder)."""
    ver, pct = part["ver"], goal.percentile
    knn, n = part["knn_top1"], part.get("knn_n") or 0
    p = (knn or 0.0) / 100.0
    measured, dense = ver["measured"], ver["dense"]
    return {"target": goal.text, "target_ratio": goal.ratio, "percentile": pct,
            "target_ms": goal.ms_for(dense[f"{pct}_ms"]), "method": method,
            "p50_ms": measured["p50_ms"], "p90_ms": measured["p90_ms"],
            "dense_p90_ms": dense["p90_ms"],
            "measured_ratio_p90": ver["ratio_to_dense"]["value"],
            "ratio_p90": ver["ratio_to_dense"]["value"], "valid": ver["valid"],
            "verdict": ver["verdict"], "landed": ver["verdict"] == "MET",
            "knn_top1": knn, "knn_n": n,
            "knn_se": 100.0 * math.sqrt(p * (1 - p) / n) if knn is not None and n else None,
            "macs_ratio": ver["macs_ratio"], "epochs": part.get("epochs"), "seed": cc.seed,
            "commit": source_commit(), "config": {**cc.settings(), **part["config"]},
            "samples_ms": {"network": measured.get("samples_ms"),
                           "dense": dense.get("samples_ms")},
            "run": part["run"], "wall_s": wall_s}


def row_line(row: dict) -> str:
    knn = "kNN not evaluated" if row["knn_top1"] is None else \
        f"kNN {row['knn_top1']:.1f} +- {row['knn_se'] or 0:.1f} %"
    return (f"{row['verdict']}: p90 {row['measured_ratio_p90']:.3f}x dense for "
            f"{row['target']} · {knn} · MACs {row['macs_ratio']:.3f}")


def _epochs(run: Path) -> int | None:
    try:
        return json.loads((run / "config.json").read_text()).get("epochs")
    except (OSError, ValueError):
        return None


def thin_row(cc: CompareConfig, goal: Goal, say) -> dict:
    cfg = base_config(cc, f"thin_{goal.target.text}", method="dense")
    rec = thin_baseline(cfg, goal, cc.verify_max_time_s, say)
    run = Path(rec["run"])
    ver = json.loads((run / "verify.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return {"ver": ver, "knn_top1": rec["knn_top1"],
            "knn_n": (summary.get("final") or {}).get("knn_test_n"), "run": str(run),
            "epochs": _epochs(run),
            "config": {"width_mult": rec["width_mult"], "widths": rec["widths"]}}


def gated_row(cc: CompareConfig, goal: Goal, say, method: str) -> dict:
    cfg = base_config(cc, f"{method}_{goal.target.text}", method="co", budget="latency",
                      gate=GATES[method], sparsity_on="deployed", finetune_steps=None)
    s = train_to_target(cfg, [goal], say=say, trim=True,
                        verify_max_time_s=cc.verify_max_time_s)
    run, final = Path(s["dir"]), s["delivered"]
    net = run if final["network"] == "deployed" else run / final["network"]
    ver = json.loads((net / "verify.json").read_text())
    return {"ver": ver, "knn_top1": final["knn_top1"]["gated"],
            "knn_n": final["knn_top1"].get("n_test"), "run": str(net), "epochs": _epochs(run),
            "config": {"gate": GATES[method], "t_d": s["config"].get("t_d"),
                       "network": final["network"], "final_verdict": final["verdict"]}}


def pruned_row(cc: CompareConfig, goal: Goal, say) -> dict:
    """A dense network trained for the budget less the fine-tuning's share, pruned to the
    target (``hwbench.deploy.prune``, landed by measuring), fine-tuned, measured, evaluated."""
    tp, dev, target = goal.profile, goal.on.torch_device, goal.target
    cfg = base_config(cc, f"pruned_{target.text}", method="dense", finetune_steps=None)
    say("training the dense network to prune (the budget less the fine-tuning's share) ...")
    run = Path(train(cfg, say=say)["dir"])
    net, rcfg, _ = load_run(run / "checkpoint.pt")
    size = info(cc.dataset).input_size
    scores = channel_scores(net, size)
    with torch_threads(profile_threads(tp.profile)):
        widths, probes = _land_pruned(scores, goal, cc, say)
    out = run / f"pruned-{target.text}"
    _save_pruned(run / "checkpoint.pt", prune(net, scores, widths, size), out, cc,
                 int(rcfg.get("finetune_steps") or 0), say)
    with torch_threads(profile_threads(tp.profile)):

        ver = measure_trained(out, target, dev, goal.on.runtime, cc.verify_max_time_s,
                              torch.get_num_threads())
    atomic_write_json(out / "verify.json", ver)
    say("kNN top-1 of the pruned network ...")
    ev = run_eval(out / "checkpoint.pt", linear=False, knn=True,
                  knn_protocols=(rcfg.get("knn", "cosine"),), device=cc.device)
    return {"ver": ver, "knn_top1": ev.get("knn_top1_dense"), "knn_n": ev.get("knn_test_n"),
            "run": str(out), "epochs": _epochs(run),
            "config": {"widths": list(widths), "prior": probes,
                       "importance": "torch_pruning GroupMagnitudeImportance(p=2), DepGraph "
                                     "groups of each block's inner channels"}}


def _land_pruned(scores, goal: Goal, cc: CompareConfig, say):
    """The pruned widths landed on ``goal``: the widest candidate the table predicts to meet
    it, checked by measuring (``baseline.land``)."""
    cands = candidates(scores)
    tp, target_ms = goal.profile, goal.seconds() * 1e3
    pred = Predictor(tp.profile)
    env = envelope([(i, pred.thin_ms(list(w), goal.percentile)) for i, (_, w) in
                    enumerate(cands)])  # the rule pick_t_d and the thin pick apply
    meets = [i for i, ms in env if ms <= target_ms]
    best, probes = land(cands, meets[-1] if meets else 0, target_ms, tp.profile, goal.target,
                        goal.on.torch_device, goal.on.runtime, say=say,
                        what="pruned: kept share")
    return cands[best][1], probes


def _save_pruned(src: Path, net, out: Path, cc: CompareConfig, steps: int, say) -> None:
    """``out/checkpoint.pt``: the pruned network, fine-tuned ``steps`` steps (teacher: the
    network of ``src`` it was pruned from; the one before tuning is kept beside it)."""
    orig = torch.load(src, map_location="cpu", weights_only=False)
    ck = {k: v for k, v in orig.items() if k not in ("optimizer", "scaler")}
    ck["config"] = {**orig["config"], "widths": list(net.widths), "width_mult": None,
                    "pruned_from": str(src)}
    ck["model"] = {**orig["model"],
                   **{f"backbone.{k}": v.cpu() for k, v in net.state_dict().items()}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / "checkpoint-before-finetune.pt", ck)
    if steps:
        dev = torch.device(cc.device)
        say(f"fine-tuning the pruned network for {steps} steps (distillation from the network "
            "it was pruned from) ...")
        model, record = finetune(ck, FinetuneConfig(steps=steps, seed=cc.seed), dev,
                                 amp_choice(ck["config"].get("amp", "auto"), dev)[0],
                                 teacher_ck=orig, stream="dense")
        ck["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        ck["finetune"] = record
    atomic_torch_save(out / "checkpoint.pt", ck)


ROWS = {"thin": thin_row, "pruned": pruned_row,
        **{kind: (lambda cc, goal, say, _kind=kind: gated_row(cc, goal, say, _kind))
           for kind in GATE_KINDS}}
