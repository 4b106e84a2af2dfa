"""Latency budget vs FLOPs budget (issue 7): how close does each land to a latency target?

    python benchmarks/budget_compare.py                                  # this CPU, 3 targets
    python benchmarks/budget_compare.py --targets 0.5x,0.7x --epochs 4 --budgets latency

For every target (relative targets are fractions of the profile's dense latency) and every
budget, one co-training run on mnist5k (cifar stem, 32 px) through the same path as
``hwbench train --target-latency T --budget B --target-device cpu``:

* ``flops``: the paper. ``pick`` chooses t_d from the profile's prior patterns; the MACs ratio is
  trained to t_d.
* ``latency``: the same t_d sets the bound; the sparsity term is the device latency predicted
  from the profile's block table for the network's noise-free gate decisions.

Each run ends by measuring the learned network with the compact engine at batch 1 (``verify``).
Then (``--trim``, the default) each network is trimmed on this device to the same target
(``hwbench trim``: least-used channels switched off, measured until the p90 lands in
[0.95, 0.99] x target) and measured anew: the trimmed networks of both budgets run at about the
same latency, so their kNN top-1 compare accuracy at equal measured latency.

Prints, per target and budget: measured p90 and its error against the target before and after
trimming, kNN top-1 of both streams, the hard-gate MACs ratio; writes every run's summary and
verify samples to results/budget_compare_<device>.json. Target (issue 7): |error| <= 5%. The
runs are sequential, never concurrent: they time the same CPU. ``--reuse`` takes runs already in
--out-dir (their summary and verify) instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwbench.data import info  # noqa: E402
from hwbench.deploy.pipeline import train_to_target, trim_run  # noqa: E402
from hwbench.engine.runtimes.deployment import deploy_on  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.measure.device import fingerprint, parse_device  # noqa: E402
from hwbench.pick.goal import locate, parse_goals, trim_goal  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402
from hwbench.train.config import TrainConfig, budget_defaults  # noqa: E402

TOLERANCE = 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.45x,0.6x,0.75x")
    ap.add_argument("--budgets", default="flops,latency")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--percentile", default="p90")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default="results/budget_compare")
    ap.add_argument("--out", default=None, help="JSON of every run [results/budget_compare_"
                                                "<device>.json]")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke tests")
    ap.add_argument("--trim", action=argparse.BooleanOptionalAction, default=True,
                    help="trim every network to its target on this device and measure again")
    ap.add_argument("--reuse", action="store_true",
                    help="take finished runs in --out-dir instead of training them again")
    ap.add_argument("--profile", default=None,
                    help="this device's profile [the matching one in profiles/]")
    args = ap.parse_args()
    dev = parse_device(args.device)
    meta = info(args.dataset)
    rows, t0 = [], time.perf_counter()
    for target in args.targets.split(","):
        for budget in args.budgets.split(","):
            name = f"{args.dataset}_{budget}_{target}"
            cfg = TrainConfig(dataset=args.dataset, epochs=args.epochs, lr=args.lr,
                              device=args.device, budget=budget, energy=False,
                              eval_initial=False,
                              out=str(Path(args.out_dir) / name), run_name=name,
                              models_dir=str(Path(args.out_dir) / "models"),
                              max_steps_per_epoch=args.max_steps_per_epoch,
                              **budget_defaults(budget))
            t_run = time.perf_counter()
            run = Path(args.out_dir) / name
            if args.reuse and (run / "summary.json").exists():
                s = json.loads((run / "summary.json").read_text())
                print(f"    reusing {run}", flush=True)
            else:
                goals = locate(parse_goals([f"{args.profile or args.device}:{target}"],
                                           args.device, args.percentile),
                               cfg.arch, meta.stem, meta.input_size,
                               say=lambda line: print("   ", line, flush=True))
                s = train_to_target(cfg, goals, trim=False,
                                    say=lambda line: print("   ", line, flush=True))
            v = s.get("verify")
            if v is None:
                raise SystemExit(f"{name}: no verification (is the profile this machine's?)")
            measured = v["measured"][f"{args.percentile}_ms"]
            row = {"target": target, "budget": budget, "target_ms": v["target_ms"],
                   "t_d": s["config"]["t_d"], "epochs": s["config"]["epochs"],
                   "measured_ms": measured,
                   "error": measured / v["target_ms"] - 1.0,
                   "predicted_ms": v["predicted"][f"{args.percentile}_ms"],
                   "knn_top1_dense": s["final"].get("knn_top1_dense"),
                   "knn_top1_gated": s["final"].get("knn_top1_gated"),
                   "eval_macs_ratio": s["final"].get("eval_macs_ratio"),
                   "dynamic_share": v.get("dynamic_share"), "train_s": time.perf_counter() - t_run,
                   "run": s["dir"]}
            if args.trim:
                goal = trim_goal(s["dir"], target, deploy_on(args.device), args.percentile,
                                 args.profile)
                t = trim_run(s["dir"], goal, TOLERANCE,
                             say=lambda line: print("   ", line, flush=True))
                row["trim"] = t
            rows.append(row)
            print(f"{target:>6s} {budget:8s} target {row['target_ms']:.3f} ms  measured "
                  f"{measured:.3f} ms  error {100 * row['error']:+.1f}%  kNN dense "
                  f"{row['knn_top1_dense']} gated {row['knn_top1_gated']}  MACs "
                  f"{row['eval_macs_ratio']:.3f}" + (
                      f"  | trimmed: {row['trim']['measured_ms']:.3f} ms "
                      f"{100 * row['trim']['error']:+.1f}%  kNN gated "
                      f"{row['trim'].get('knn_top1_gated')}" if args.trim else ""), flush=True)
    print(f"\n{'target':>7s} {'budget':8s} {'target ms':>9s} | {'trained p90':>11s} "
          f"{'error':>7s} {'kNN gated':>9s} {'MACs':>6s} | {'trimmed p90':>11s} {'error':>7s} "
          f"{'±5%':>4s} {'kNN gated':>9s} {'MACs':>6s} {'dense p50 now/profile':>21s}")
    for r in rows:
        line = (f"{r['target']:>7s} {r['budget']:8s} {r['target_ms']:9.3f} | "
                f"{r['measured_ms']:11.3f} {100 * r['error']:+6.1f}% "
                f"{r['knn_top1_gated']:9.1f} {r['eval_macs_ratio']:6.3f} |")
        t = r.get("trim")
        if t:
            line += (f" {t['measured_ms']:11.3f} {100 * t['error']:+6.1f}% "
                     f"{'yes' if abs(t['error']) <= TOLERANCE else 'no':>4s} "
                     f"{t.get('knn_top1_gated', float('nan')):9.1f} {t['macs_ratio']:6.3f} "
                     f"{t['dense_p50_ms'] / t['profile_dense_p50_ms']:21.3f}")
        print(line)
    out = args.out or str(ROOT / "results" / f"budget_compare_{dev.type}.json")
    atomic_write_json(out, {"benchmark": "budget_compare", "provenance": provenance(),
                            "device": fingerprint(dev),
                            "args": vars(args), "wall_s": time.perf_counter() - t0,
                            "tolerance": TOLERANCE, "runs": rows,
                            "verify": {r["run"]: json.loads(
                                (Path(r["run"]) / "verify.json").read_text()) for r in rows},
                            "verify_trimmed": {r["trim"]["dir"]: json.loads(
                                (Path(r["trim"]["dir"]) / "verify.json").read_text())
                                for r in rows if "trim" in r}})
    print(f"written {out}")


if __name__ == "__main__":
    main()
