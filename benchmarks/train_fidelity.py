"""Does the network training estimates equal the network that is deployed, and what do the
short-run knobs do to it? (issue 23, items 1 and 4)

    python benchmarks/train_fidelity.py --profile profiles/<this cpu>.json --target 0.67x \
        --vary gate_noise_anneal=0,0.4 --vary gate_bias=learned,none --vary gate_warmup=0,1 \
        --vary alpha=0.02,0.2 --seeds 0,1 --epochs 3

Settings: hwbench's defaults, then each ``--vary FIELD=V1,V2,...`` (a ``TrainConfig`` field)
changed one at a time from them (``--anneal A,B`` is ``--vary gate_noise_anneal=A,B``). For
each setting and seed, one short co-training run against the profile's predicted latency
(``--budget latency``, deployed-gate sparsity: what ``make run`` trains), the same steps for
every setting, then the deployment ``train --target-latency`` makes (``pipeline.deploy_run``:
summarise on calibration images, close the decided channels). Per run: the last epoch's
training estimate (MACs ratio of the passes' masks, predicted p90 of the latency term) beside
the deployed network's (the pattern's MACs ratio, the profile's predicted p90), their gaps
(``pipeline.fidelity``), and the kNN top-1 of both streams at the end (eval mode: the deployed
decisions). Settings run one after another on one machine; nothing here is timed, so a busy
machine changes no number (only how long it takes). Writes every row and the command to
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwbench.data import info  # noqa: E402
from hwbench.deploy.pipeline import deploy_run, fidelity  # noqa: E402
from hwbench.deploy.verify import pattern_macs_ratio  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.pattern.gate_pattern import load_pattern  # noqa: E402
from hwbench.profile.predictor import Predictor, load_profile  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402
from hwbench.train.config import TrainConfig  # noqa: E402
from hwbench.train.loop import train  # noqa: E402
from hwbench.units import LatencyTarget  # noqa: E402


def base_config(args, target_ms: float, t_d: float) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, budget="latency", sparsity_on="deployed", lam=50.0,
                       t_d=t_d, eval_every=args.epochs, eval_initial=args.initial,
                       energy=False, amp=args.amp, gate=args.gate,
                       max_steps_per_epoch=args.steps_per_epoch,
                       latency_targets=({"device": "cpu", "profile": args.profile,
                                         "target_ms": target_ms, "percentile": "p90"},))


def one_run(cfg: TrainConfig, profile: dict) -> dict:
    t0 = time.perf_counter()
    summary = train(cfg)
    deployed = deploy_run(summary["dir"], "cpu")
    pattern = load_pattern(deployed["pattern"])
    verify_like = {"percentile": "p90", "macs_ratio": pattern_macs_ratio(pattern),
                   "predicted": {"p90_ms": Predictor(profile).predict(pattern, "p90")}}
    final = summary["final"]
    return {"gate_noise_anneal": cfg.gate_noise_anneal, "seed": cfg.seed,
            "epochs": cfg.epochs, "steps_per_epoch": cfg.max_steps_per_epoch or "all",
            "training": {k: final.get(k) for k in ("macs_ratio", "deployed_macs_ratio",
                                                   "eval_macs_ratio", "latency_ms_0")},
            "fidelity": fidelity(final, verify_like),
            "knn_top1": {"gated": final.get("knn_top1_gated"),
                         "dense": final.get("knn_top1_dense"),
                         "random_init_gated": summary["initial"].get("knn_top1_gated"),
                         "n_test": final.get("knn_test_n"), "protocol": final.get("knn_protocol")},
            "wall_s": time.perf_counter() - t0, "dir": summary["dir"]}


def settings(vary: list[str]) -> list[dict]:
    """The defaults ({}), then each FIELD=V1,V2 value on its own, parsed by the field's type;
    duplicates (a value equal to the default) dropped."""
    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    out, seen = [{}], {()}
    for spec in vary:
        name, _, values = spec.partition("=")
        if name not in types or not values:
            raise SystemExit(f"--vary {spec!r}: expected FIELD=V1,V2 with a TrainConfig field")
        for v in values.split(","):
            kind = types[name]
            value = v.lower() in ("1", "true", "yes") if kind is bool else \
                (v if kind is str else float(v))
            key = ((name, value),) if value != getattr(TrainConfig, name) else ()
            if key not in seen:
                seen.add(key)
                out.append(dict(key))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--target", default="0.67x", help="p90 target: '0.67x' of dense or '12ms'")
    ap.add_argument("--t-d", type=float, default=0.5, help="the bound's t_d")
    ap.add_argument("--vary", action="append", default=[],
                    help="FIELD=V1,V2: a TrainConfig field's values, each run on its own")
    ap.add_argument("--anneal", default=None, help="= --vary gate_noise_anneal=A,B")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--amp", default="off")
    ap.add_argument("--gate", default="channel")
    ap.add_argument("--initial", action="store_true", help="kNN of the random init too")
    ap.add_argument("--out", default="results/train_fidelity_cpu.json")
    ap.add_argument("--work", default="/tmp/hwbench-train-fidelity")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    dense = profile["references"]["dense"]["p90_ms"]
    goal = LatencyTarget.parse(args.target, "p90")
    target_ms = goal.ms if goal.ratio is None else goal.ratio * dense
    meta = info(args.dataset)
    rows = []
    vary = args.vary + ([f"gate_noise_anneal={args.anneal}"] if args.anneal else [])
    for setting in settings(vary):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = "_".join(f"{k}{v}" for k, v in setting.items()) or "defaults"
            cfg = replace(base_config(args, target_ms, args.t_d), **setting, seed=seed,
                          out=f"{args.work}/{name}_seed{seed}",
                          models_dir=f"{args.work}/models")
            row = {"setting": setting, **one_run(cfg, profile)}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("setting", "seed", "fidelity",
                                                   "knn_top1")}), flush=True)
    atomic_write_json(Path(args.out), {
        "what": "training estimate vs deployed network and kNN, per setting (issue 23)",
        "command": " ".join(sys.argv),
        "provenance": provenance(),
        "profile": args.profile, "target": args.target, "target_ms": target_ms,
        "input_size": meta.input_size, "rows": rows})


if __name__ == "__main__":
    main()
