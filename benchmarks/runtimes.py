"""Runtimes side by side (issue 17): hwbench's engine, ONNX Runtime and OpenVINO, one run each.

    python benchmarks/runtimes.py                  # the issue's matrix on this CPU, 1 thread
    python benchmarks/runtimes.py --quick          # 3 s per pattern instead of 8
    python benchmarks/runtimes.py --threads 2 --runtimes eager,onnxruntime
    python benchmarks/runtimes.py --gate width:16  # width-gated mixed patterns: one graph per
                                                   # width bucket (dynamic) vs one masked graph
                                                   # (static), timed in the same run

For each pattern (resnet18, cifar stem 32 px and imagenet stem 224 px, t_d 0.3 and 0.5; batch 1,
fp32) every (runtime, mode) is timed in ONE interleaved measurement (``speedup.run_runtimes``),
so the runtimes see the same machine drift; each runtime's ratios are to its own dense network.
Prints per runtime the dense p50 and the static mode's speed-up, MACs ratio and efficiency
(speed-up / (dense MACs / static MACs): 1.0 = time falls as MACs do), and the dynamic mode's
(on a runtime: the static graph for channel gates). Raw samples go to
results/runtimes_<device>_<threads>t.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwbench.engine.runtimes import RUNTIMES  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.profile.speedup import SpeedupConfig, run_runtimes  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402

PATTERNS = [
    "models/mixed_resnet18_cifar32_t0.3.json",
    "models/mixed_resnet18_cifar32_t0.5.json",
    "models/mixed_resnet18_imagenet224_t0.3.json",
    "models/mixed_resnet18_imagenet224_t0.5.json",
]


def _row(rt: str, r) -> dict:
    dense, static, dyn = (r.modes[m] for m in ("dense", "static", "dynamic"))
    return {"runtime": rt, "version": r.device.get("runtime_version"),
            "dense_p50_ms": dense.p50_ms, "static_p50_ms": static.p50_ms,
            "static_speedup": static.speedup, "static_macs_ratio": static.macs / dense.macs,
            "static_efficiency": static.efficiency, "dynamic_speedup": dyn.speedup,
            "dynamic_efficiency": dyn.efficiency, "masked_speedup": r.modes["masked"].speedup,
            "dynamic_plan": r.dynamic_plan, "samples": dense.samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="3 s per pattern instead of 8")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--patterns", nargs="*", default=PATTERNS)
    ap.add_argument("--gate", default=None,
                    help="width:G: width-gated mixed patterns (seed 0) at the same t_d and sizes, "
                         "the dynamic mode forced to one graph per width bucket")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runtimes = tuple(args.runtimes.split(","))
    policy = "auto"
    if args.gate:
        import tempfile

        from hwbench.pattern.gate_pattern import load_pattern, mixed_pattern

        tmp = Path(tempfile.mkdtemp())
        made = []
        for path in args.patterns:
            p = load_pattern(ROOT / path)
            dest = tmp / f"{Path(path).stem}_{args.gate.replace(':', '')}.json"
            mixed_pattern(p.arch, p.stem, p.input_size, p.t_d, seed=0, gate=args.gate).save(dest)
            made.append(str(dest))
        args.patterns, policy = made, "width"
    out = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
           "batch_size": 1, "dtype": "fp32", "runtimes": runtimes, "unit": "ms; ratios",
           "protocol": "per pattern, every (runtime, mode) interleaved in one measurement; "
                       "ratios to the same runtime's dense", "results": []}
    t0 = time.time()
    for path in args.patterns:
        cfg = SpeedupConfig(pattern=str(ROOT / path), threads=args.threads,
                            max_time_s=3.0 if args.quick else 8.0, min_runs=30,
                            dynamic_policy=policy)
        res = run_runtimes(cfg, runtimes)
        rows = [_row(rt, r) for rt, r in res.items()]
        out["results"].append({"pattern": path, "rows": rows,
                               "raw": {rt: r.to_dict() for rt, r in res.items()}})
        print(f"\n{path}  (batch 1, fp32, {args.threads} thread(s), dynamic policy {policy})")
        print(f"{'runtime':<12} {'dense p50 ms':>12} {'static x':>9} {'MACs':>6} "
              f"{'static eff':>10} {'dyn x':>6} {'dyn eff':>8} {'masked x':>9}  plan")
        for r in rows:
            print(f"{r['runtime']:<12} {r['dense_p50_ms']:12.3f} {r['static_speedup']:9.2f} "
                  f"{r['static_macs_ratio']:6.3f} {r['static_efficiency']:10.2f} "
                  f"{r['dynamic_speedup']:6.2f} {r['dynamic_efficiency']:8.2f} "
                  f"{r['masked_speedup']:9.2f}  {'/'.join(sorted(set(r['dynamic_plan'])))}")
        fastest = min(rows, key=lambda r: r["dense_p50_ms"])
        print(f"fastest dense: {fastest['runtime']}; dense p50 ratio to {rows[0]['runtime']}: "
              + ", ".join(
            f"{r['runtime']} {r['dense_p50_ms'] / rows[0]['dense_p50_ms']:.2f}" for r in rows))
    out["duration_s"] = time.time() - t0
    out["provenance"] = provenance()
    gate = f"_{args.gate.replace(':', '')}" if args.gate else ""
    dest = Path(args.out) if args.out else \
        ROOT / "results" / f"runtimes_cpu_{args.threads}t{gate}.json"
    atomic_write_json(dest, out)
    print(f"\nraw samples: {dest}")


if __name__ == "__main__":
    main()
