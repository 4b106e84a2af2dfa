"""Width-gated networks in the compact engine: does running each input at its own width pay?

    python benchmarks/width_engine.py            # resnet18 / cifar stem / 32 px / fp32, batch 1
    python benchmarks/width_engine.py --quick    # fewer inputs and rounds
    python benchmarks/width_engine.py --large-batch --device cuda --dtype bf16 --batch 256 \
        --stem imagenet --size 224 --tile 8      # issue 16's GPU setting (d) only

Per mean-MACs target t_d (0.3, 0.5, 0.7): a width-gated mixed pattern (``mixed_pattern(...,
gate="width:16")``) realised on a random network, timed on N fresh synthetic inputs, all engines
interleaved in one ``measure`` run (round r runs input r mod N, so every input gets the same
number of samples from every engine):

(a) ``dynamic`` (the width executor) against ``matched static``: for each input, the static
    engine of a hard-histogram pattern of exactly that input's widths (a thin network, no
    gates). Per-input ratio of medians: within 10%?
(b) efficiency = (dense mean latency / dynamic mean per-input latency) / (1 / mean MACs ratio)
    (MACs per input from the eager gated stream, gates included), against the issue's bar
    (>= 0.70 at t_d 0.5 and 0.7, >= 0.55 at 0.3); the same for the per-channel ``dynamic``
    engine (policy auto) on a channel-gated ``mixed_pattern`` of the same t_d, for comparison.
(c) batch 64: width-grouped dynamic (policy ``width``) vs static of the same pattern (ratio of
    p50), and the ``auto`` policy (grouped or static per block, tuned at build time).

(d) ``--large-batch``: at one large batch, MACs ``--t-d`` (0.5): dense; ``static`` of the
    prior pattern (``synthesise``) with kept channels rounded to ``--tile`` (and untiled); the
    width-gated (``width:16``) mixed pattern's dynamic engine (samples sorted by width, order
    restored once; also restored after every block, and the ``auto`` plan); all interleaved in
    one ``measure`` run, p50 ratios to dense printed with pattern and executed MACs ratios.

Threads: torch's default. Every raw sample goes to results/width_engine_<device>_<host>.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwbench.engine import build_engine, pattern_inputs, realise  # noqa: E402
from hwbench.engine.tiling import executed_macs  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.measure.device import fingerprint  # noqa: E402
from hwbench.measure.protocol import Inputs, Protocol, measure  # noqa: E402
from hwbench.pattern.gate_pattern import GatePattern, LayerPattern, mixed_pattern, synthesise  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402

TARGETS = (0.3, 0.5, 0.7)
BAR = {0.3: 0.55, 0.5: 0.70, 0.7: 0.70}  # the dynamic-efficiency bar at batch 1
GATE = "width:16"


def hard_pattern(p: GatePattern, widths: list[int]) -> GatePattern:
    """The pattern every input of which keeps exactly ``widths`` (one per block): a static
    network of those widths."""
    g = p.gate.step
    layers = [LayerPattern.from_width_hist(lp.name, lp.channels, g,
                                           [float(k * g == w) for k in range(lp.channels // g + 1)])
              for lp, w in zip(p.layers, widths)]
    return GatePattern(p.arch, p.stem, p.input_size, layers, p.t_d, gate=p.gate)


class Matched:
    """Calls, for each input, the static engine of that input's widths (looked up by identity)."""

    def __init__(self, engines: dict[int, object]):
        self.engines = engines

    def __call__(self, x):
        return self.engines[id(x)](x)


def per_input(samples: list[float], n: int) -> list[float]:
    """Median per input: sample r was taken on input r mod n."""
    return [statistics.median(samples[i::n]) for i in range(n)]


@torch.no_grad()
def batch1(t_d: float, n: int, reps: int, size: int = 32, arch: str = "resnet18",
           seed: int = 0, warmup_s: float = 0.5, calibration: int = 64) -> dict:
    """(a) and (b) for one t_d: one interleaved measurement of dense, dynamic (width),
    matched static (width) and dynamic (channel gates) on the same ``n`` inputs."""
    p = mixed_pattern(arch, "cifar", size, t_d, seed=seed, gate=GATE)
    net = realise(p, seed=seed, calibration=calibration)
    pc = mixed_pattern(arch, "cifar", size, t_d, seed=seed)
    net_c = realise(pc, seed=seed, calibration=calibration)
    xs = list(pattern_inputs(n, size, seed=seed + 1000).contiguous(
        memory_format=torch.channels_last).split(1))
    fwd = net.forward_gated(torch.cat(xs))
    widths = torch.stack([m.sum(dim=1) for m in fwd.masks], dim=1).long()  # (n, blocks)
    statics: dict[tuple, object] = {}
    for w in widths.tolist():
        if tuple(w) not in statics:
            statics[tuple(w)] = build_engine(net, "static", hard_pattern(p, w))
    engines = {
        "dense": build_engine(net, "dense"),
        "dynamic": build_engine(net, "dynamic", p),
        "matched_static": Matched({id(x): statics[tuple(w)] for x, w in zip(xs, widths.tolist())}),
        "channel_dynamic": build_engine(net_c, "dynamic", pc, tune_inputs=xs[:4]),
    }
    proto = Protocol(quantile=0.5, ci_target=None, min_runs=n * reps, max_time_s=0.0,
                     warmup=n, min_warmup_s=warmup_s, seed=seed)
    m = measure(engines, Inputs(xs, {"source": "synthetic", "n": n, "seed": seed + 1000}),
                proto, reference="dense", where=f"t_d={t_d}")
    med = {k: per_input(r["samples_ms"], n) for k, r in m.results.items()}
    ratio = [d / s for d, s in zip(med["dynamic"], med["matched_static"])]
    macs = fwd.macs_ratio.tolist()
    macs_c = net_c.forward_gated(torch.cat(xs)).macs_ratio.tolist()
    dense = statistics.fmean(med["dense"])

    def eff(name: str, mr: list[float]) -> float:
        return (dense / statistics.fmean(med[name])) * statistics.fmean(mr)

    return {"t_d": t_d, "pattern_macs_ratio": p.macs_ratio(), "widths": widths.tolist(),
            "distinct_width_vectors": len(statics), "macs_ratio_per_input": macs,
            "channel_macs_ratio_per_input": macs_c, "median_ms_per_input": med,
            "dynamic_over_matched_static": ratio, "efficiency_width": eff("dynamic", macs),
            "efficiency_channel": eff("channel_dynamic", macs_c),
            "plan_width": engines["dynamic"].plan, "plan_channel": engines["channel_dynamic"].plan,
            "measurement": {"results": m.results, "protocol": m.protocol, "inputs": m.inputs,
                            "warnings": m.warnings}}


@torch.no_grad()
def batch64(t_d: float, max_time_s: float, bsz: int = 64, size: int = 32,
            arch: str = "resnet18", seed: int = 0) -> dict:
    """(c): width-grouped dynamic vs static of the same pattern at batch ``bsz``."""
    p = mixed_pattern(arch, "cifar", size, t_d, seed=seed, gate=GATE)
    net = realise(p, seed=seed)
    x = pattern_inputs(bsz, size, seed=seed + 2000).contiguous(memory_format=torch.channels_last)
    distinct = [len(m.sum(dim=1).unique()) for m in net.forward_gated(x).masks]
    engines = {"static": build_engine(net, "static", p, batch_size=bsz),
               "dynamic": build_engine(net, "dynamic", p, batch_size=bsz,
                                       dynamic_policy="width"),
               "dynamic_auto": build_engine(net, "dynamic", p, batch_size=bsz, tune_inputs=x)}
    proto = Protocol(quantile=0.5, ci_target=0.02, min_runs=10, max_time_s=max_time_s, warmup=3,
                     min_warmup_s=0.3, seed=seed)
    m = measure(engines, Inputs([x], {"source": "synthetic", "n": bsz, "seed": seed + 2000}),
                proto, reference="static", where=f"t_d={t_d} batch {bsz}")
    return {"t_d": t_d, "batch": bsz, "distinct_widths_per_block": distinct,
            "dynamic_over_static": m.ratio("dynamic", "static"),
            "auto_over_static": m.ratio("dynamic_auto", "static"),
            "plan_auto": engines["dynamic_auto"].plan,
            "measurement": {"results": m.results, "protocol": m.protocol, "inputs": m.inputs,
                            "warnings": m.warnings}}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def large_batch(args) -> dict:
    """(d): dense vs tiled static vs width-grouped dynamic at one large batch, interleaved."""
    dev, dt, bsz, size = torch.device(args.device), DTYPES[args.dtype], args.batch, args.size
    chan = synthesise(args.arch, args.stem, size, args.t_d, tile=args.tile)
    chan1 = synthesise(args.arch, args.stem, size, args.t_d)
    wid = mixed_pattern(args.arch, args.stem, size, args.t_d, seed=0, gate=GATE, tile=args.tile)
    cnet, cnet1 = realise(chan, seed=0), realise(chan1, seed=0)
    wnet = realise(wid, seed=0, calibration=args.calibration)
    pool = [pattern_inputs(bsz, size, seed=3000 + i).to(dev, dt) for i in range(args.pool)]
    kw = dict(device=dev, dtype=dt, batch_size=bsz, tune_inputs=pool[:2])
    engines = {"dense": build_engine(cnet, "dense", **kw),
               f"static_tile{args.tile}": build_engine(cnet, "static", chan, **kw),
               "static_untiled": build_engine(cnet1, "static", chan1, **kw),
               "width_sorted": build_engine(wnet, "dynamic", wid, dynamic_policy="width", **kw),
               "width_auto": build_engine(wnet, "dynamic", wid, **kw)}
    per_block = build_engine(wnet, "dynamic", wid, dynamic_policy="width", **kw)
    per_block.unpermute_per_block = True  # the order restored after every block
    engines["width_sorted_unpermute_per_block"] = per_block
    proto = Protocol(quantile=0.5, ci_target=0.02, min_runs=10, max_time_s=args.batch_time,
                     warmup=3, min_warmup_s=0.5, seed=0)
    m = measure(engines, Inputs(pool, {"source": "synthetic", "n": bsz * len(pool)}), proto,
                dev, reference="dense", where=f"large batch {bsz}")
    dense_macs = chan.geometry().dense_macs()
    macs = {f"static_tile{args.tile}": (chan.macs_ratio(),
                                        executed_macs(chan, "static", args.tile) / dense_macs),
            "static_untiled": (chan1.macs_ratio(), executed_macs(chan1, "static") / dense_macs)}
    for name in ("width_sorted", "width_auto", "width_sorted_unpermute_per_block"):
        macs[name] = (wid.macs_ratio(), executed_macs(wid, "dynamic", args.tile,
                                                      engines[name].plan) / dense_macs)
    return {"setting": vars(args), "device": fingerprint(dev, torch.get_num_threads()),
            "ratios_to_dense": {k: m.ratio(k, "dense") for k in engines if k != "dense"},
            "macs_ratio_pattern_executed": macs,
            "plans": {k: e.plan for k, e in engines.items() if k.startswith("width")},
            "measurement": {"results": m.results, "protocol": m.protocol, "inputs": m.inputs,
                            "warnings": m.warnings}}


def report_large_batch(r: dict) -> None:
    a = r["setting"]
    print(f"(d) {r['device'].get('name')}, {a['arch']}/{a['stem']}/{a['size']} px, batch "
          f"{a['batch']}, {a['dtype']}, MACs {a['t_d']}, tile {a['tile']}; p50 ratio to dense "
          "(95% CI), one interleaved run:")
    dense = r["measurement"]["results"]["dense"]["p50_ms"]
    print(f"  dense p50 {dense:.3f} ms per batch")
    for name, rr in r["ratios_to_dense"].items():
        pm, em = r["macs_ratio_pattern_executed"][name]
        print(f"  {name:34s} {rr['value']:.3f} [{rr['lo']:.3f}, {rr['hi']:.3f}]"
              f"{'' if rr['valid'] else ' (CI not met)'}  MACs ratio pattern {pm:.3f} / "
              f"executed {em:.3f}")
    print(f"  width_auto plan: {','.join(r['plans']['width_auto'])}")


def report_batch1(r: dict) -> None:
    q = sorted(r["dynamic_over_matched_static"])
    within = sum(abs(v - 1) <= 0.10 for v in q) / len(q)
    med = r["median_ms_per_input"]
    bar = BAR[r["t_d"]]
    print(f"\nt_d {r['t_d']}: mean MACs ratio (per input, gates incl.) "
          f"{statistics.fmean(r['macs_ratio_per_input']):.3f} width / "
          f"{statistics.fmean(r['channel_macs_ratio_per_input']):.3f} channel; "
          f"{r['distinct_width_vectors']} distinct width vectors in {len(q)} inputs")
    print(f"  mean per-input median ms: dense {statistics.fmean(med['dense']):.3f}  dynamic "
          f"{statistics.fmean(med['dynamic']):.3f}  matched static "
          f"{statistics.fmean(med['matched_static']):.3f}  channel dynamic "
          f"{statistics.fmean(med['channel_dynamic']):.3f}")
    print(f"  (a) dynamic / matched static per input: min {q[0]:.3f}  median "
          f"{statistics.median(q):.3f}  max {q[-1]:.3f}; within 10%: {within:.0%} of inputs")
    for name, e in (("width", r["efficiency_width"]), ("channel", r["efficiency_channel"])):
        mark = "met" if e >= bar else "MISSED"
        print(f"  (b) efficiency ({name} dynamic) {e:.2f}  bar {bar:.2f} {mark}")
    print(f"      plan channel: {','.join(r['plan_channel'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=32, help="N inputs per t_d (batch 1)")
    ap.add_argument("--reps", type=int, default=7, help="samples per input per engine")
    ap.add_argument("--batch-time", type=float, default=6.0, help="max seconds, batch 64")
    ap.add_argument("--quick", action="store_true", help="8 inputs, 3 samples each, 2 s")
    ap.add_argument("--threads", type=int, default=None, help="default: torch's default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--large-batch", action="store_true", help="run (d) only (below)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--stem", default="imagenet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--t-d", type=float, default=0.5)
    ap.add_argument("--tile", type=int, default=8)
    ap.add_argument("--pool", type=int, default=4, help="distinct input batches cycled")
    ap.add_argument("--calibration", type=int, default=64, help="realise's inputs (width)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.large_batch:
        t0 = time.time()
        r = large_batch(args)
        report_large_batch(r)
        dev = args.device.replace(":", "")
        out = Path(args.out) if args.out else (
            ROOT / "results" / f"width_engine_large_batch_{dev}_b{args.batch}_{args.dtype}_"
                               f"{platform.node()}.json")
        atomic_write_json(out, {**r, "provenance": provenance()})
        print(f"\nwrote {out} ({time.time() - t0:.0f} s in all)")
        return
    n, reps, bt = (8, 3, 2.0) if args.quick else (args.inputs, args.reps, args.batch_time)
    t0 = time.time()
    fp = fingerprint(torch.device("cpu"), torch.get_num_threads())
    how = "set by --threads" if args.threads else "torch default"
    print(f"{fp.get('name')} ({torch.get_num_threads()} threads, {how}), fp32, "
          f"resnet18/cifar/32 px, gate {GATE}")
    runs, batches = [], []
    for t_d in TARGETS:
        runs.append(batch1(t_d, n, reps))
        report_batch1(runs[-1])
    print("\n(c) batch 64, p50 dynamic (grouped by width) / static of the same pattern:")
    for t_d in TARGETS:
        r = batch64(t_d, bt)
        batches.append(r)
        rr = r["dynamic_over_static"]
        print(f"  t_d {t_d}: {rr['value']:.3f} [{rr['lo']:.3f}, {rr['hi']:.3f}]"
              f"{'' if rr['valid'] else ' (CI not met)'}; distinct widths per block "
              f"{r['distinct_widths_per_block']}")
        ra = r["auto_over_static"]
        print(f"         auto policy (width or static per block, tuned): {ra['value']:.3f} "
              f"[{ra['lo']:.3f}, {ra['hi']:.3f}]; plan {','.join(r['plan_auto'])}")
    out = Path(args.out) if args.out else (ROOT / "results" /
                                           f"width_engine_cpu_{platform.node()}.json")
    atomic_write_json(out, {"benchmark": "width_engine", "provenance": provenance(),
                            "device": fp,
                            "threads": torch.get_num_threads(), "batch1": runs,
                            "batch64": batches})
    print(f"\nwrote {out} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
