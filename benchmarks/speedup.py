"""Speed-up benchmark of the compact engine (issue 3): one run, modes interleaved.

    python benchmarks/speedup.py                 # the issue's matrix on this CPU
    python benchmarks/speedup.py --quick         # fewer seconds per pattern
    python benchmarks/speedup.py --per-layer     # also where the time goes, block by block
    python benchmarks/speedup.py --device cuda --exec eager,graphs,compile --batch-sizes 1
                                                 # executions timed interleaved in one run
    python -c "from hwbench.pattern.gate_pattern import mixed_pattern as m; \
        m('resnet18', 'imagenet', 224, 0.5, seed=0, gate='width:16').save('/tmp/w16.json')"
                                                 # width gates with dynamic widths
    python benchmarks/speedup.py --patterns /tmp/w16.json --device cuda --exec eager,graphs
                                                 # one graph per (width block, width bucket)

    python benchmarks/speedup.py --device cuda --dtype bf16 --batch-sizes 256 --tile 8
    python benchmarks/speedup.py ... --gate width:16   # width-gated mixed patterns instead

Every (execution, mode) of one pattern and batch size is timed in one interleaved measurement;
ratios are to the dense engine of the SAME execution (graphed dense for graphed modes).

Prints, per pattern and batch size, each mode's p50 latency, speedup over dense, MACs ratio and
efficiency = speedup / (dense MACs / mode MACs), and writes every raw sample to
results/speedup_<device>.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwbench.engine import build_engine, pattern_inputs, realise  # noqa: E402
from hwbench.engine.graphs import EXECUTIONS  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.pattern.gate_pattern import load_pattern, mixed_pattern  # noqa: E402
from hwbench.profile.speedup import SpeedupConfig, layer_times, mode_macs, run_speedups  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402

MATRIX = [  # (pattern, batch sizes)
    ("models/mixed_resnet18_imagenet224_t0.3.json", (1,)),
    ("models/mixed_resnet18_imagenet224_t0.5.json", (1,)),
    ("models/mixed_resnet18_cifar32_t0.3.json", (1, 64)),
    ("models/mixed_resnet18_cifar32_t0.5.json", (1, 64)),
]
TARGETS = {  # (stem, batch) -> (static, dynamic) efficiency targets of the issue
    ("imagenet", 1): (0.85, 0.80), ("cifar", 1): (0.80, 0.70),
    ("imagenet", 64): (0.88, None), ("cifar", 64): (0.88, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 s per pattern instead of 8")
    ap.add_argument("--per-layer", action="store_true", help="per-block timings at batch 1")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--batch-sizes", default=None, help="override, e.g. 1,256 (GPU)")
    ap.add_argument("--exec", dest="executions", default="eager",
                    help=f"comma-separated, timed interleaved: {', '.join(EXECUTIONS)}")
    ap.add_argument("--patterns", default=None,
                    help="comma-separated pattern files instead of the matrix (batch 1 unless "
                         "--batch-sizes)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tile", type=int, default=None, help="tensor-core tile (8 or 16 on GPUs)")
    ap.add_argument("--gate", default=None, help="e.g. width:16: a mixed pattern of that gate "
                                                 "and the file's t_d replaces each file")
    args = ap.parse_args()
    executions = tuple(e.strip() for e in args.executions.split(",") if e.strip())
    bad = [e for e in executions if e not in EXECUTIONS]
    if bad or not executions:
        ap.error(f"--exec: unknown {', '.join(bad) or 'nothing'}; known: {', '.join(EXECUTIONS)}")
    torch.set_num_threads(args.threads)
    results, t0 = [], time.time()
    matrix = [(p, (1,)) for p in args.patterns.split(",")] if args.patterns else MATRIX
    for path, batches in matrix:
        path = gated_copy(path, args.gate)
        if args.batch_sizes:
            batches = tuple(int(b) for b in args.batch_sizes.split(","))
        for bsz in batches:
            cfg = SpeedupConfig(pattern=str(ROOT / path), device=args.device, batch_size=bsz,
                                threads=args.threads, max_time_s=3.0 if args.quick else 8.0,
                                min_runs=20 if bsz > 8 else 50, backend=args.backend,
                                dtype=args.dtype, tile=args.tile)
            start = time.time()
            runs = run_speedups(cfg, executions)
            for r in runs.values():
                report(path, bsz, args.dtype, r, time.time() - start)
                results.append(r.to_dict())
            if args.per_layer and bsz == 1:
                per_layer(cfg)
    dev = args.device.replace(":", "")
    out = Path(args.out) if args.out else ROOT / "results" / f"speedup_{dev}_{platform.node()}.json"
    atomic_write_json(out, {"benchmark": "speedup", "provenance": provenance(),
                            "runs": results})
    print(f"\nwrote {out} ({time.time() - t0:.0f} s in all)")


def report(path: str, bsz: int, dtype: str, r, seconds: float) -> None:
    """One execution's table: each mode's p50/p90 and its ratios to this execution's dense."""
    p = r.pattern
    tgt = TARGETS.get((p["stem"], bsz), (None, None)) if r.execution == "eager" else (None, None)
    print(f"\n{Path(path).name}  batch {bsz}  {r.device['name']} ({r.device['threads']} "
          f"threads, {r.device['backend']}, {dtype})  execution {r.execution}  "
          f"[{seconds:.0f} s for all executions]")
    print(f"  pattern MACs ratio {r.flops_ratio:.3f}; dynamic: "
          f"{r.dynamic_batch_strategy}; plan {','.join(r.dynamic_plan)}")
    if r.execution != "eager":
        print("  setup (capture/compile, s wall clock): "
              + ", ".join(f"{m} {t:.1f}" for m, t in r.setup_s.items()))
    for name, m in r.modes.items():
        goal = {"static": tgt[0], "dynamic": tgt[1]}.get(name)
        mark = "" if goal is None else (f"  target {goal:.2f} "
                                        f"{'met' if m.efficiency >= goal else 'MISSED'}")
        print(f"  {name:8s} p50 {m.p50_ms:9.3f} ms  p90 {m.p90_ms:9.3f} ms  "
              f"n {m.samples:4d}  gated/dense latency {1 / m.speedup:.3f}  vs MACs "
              f"{m.macs / r.modes['dense'].macs:.3f}  speedup {m.speedup:.2f}  "
              f"efficiency {m.efficiency:.2f}{mark}")


def gated_copy(path: str, gate: str | None) -> str:
    """``path`` itself, or (``gate`` given) a mixed pattern of that gate with the file's arch,
    stem, size and t_d, written under results/patterns/."""
    if gate is None:
        return path
    p = load_pattern(ROOT / path)
    q = mixed_pattern(p.arch, p.stem, p.input_size, p.t_d, seed=0, gate=gate)
    return str(q.save(ROOT / "results" / "patterns" /
                      f"{Path(path).stem}_{gate.replace(':', '')}.json"))


def per_layer(cfg: SpeedupConfig) -> None:
    pattern = load_pattern(cfg.pattern)
    net = realise(pattern, seed=cfg.seed)
    x = pattern_inputs(1, pattern.input_size, seed=cfg.seed + 7)
    engines = {m: build_engine(net, m, pattern, tune_inputs=x) for m in ("dense", "static")}
    t = layer_times(engines, x)
    g = pattern.geometry()
    kept = pattern.kept_channels()
    print("  where the time goes (batch 1, median ms per block, dense vs static):")
    print(f"    {'block':10s} {'dense':>8s} {'static':>8s} {'time ratio':>10s} {'MACs ratio':>10s}")
    rows = [("stem", g.stem_macs, g.stem_macs)] + [
        (b.name, b.dense_macs(), b.gated_macs(k)) for b, k in zip(g.blocks, kept)]
    for (name, dm, sm), td, ts in zip(rows, t["dense"], t["static"]):
        print(f"    {name:10s} {td:8.3f} {ts:8.3f} {ts / td:10.3f} {sm / dm:10.3f}")
    mm = mode_macs(pattern)
    print(f"    {'sum':10s} {sum(t['dense']):8.3f} {sum(t['static']):8.3f} "
          f"{sum(t['static']) / sum(t['dense']):10.3f} {mm['static'] / mm['dense']:10.3f}")


if __name__ == "__main__":
    main()
