"""Cost of one co-training step vs one vanilla VICReg step (issues 5, 16): one run, steps
interleaved.

    python benchmarks/step_cost.py                          # this CPU, batch 64, amp auto
    python benchmarks/step_cost.py --methods co,dense,gated --amp off
    # the GPU setting of issue 16 (resnet18, imagenet stem, 224 px, batch 256, bf16), eager and
    # torch.compile'd steps side by side (compiling takes a minute or two per method first):
    python benchmarks/step_cost.py --device cuda --dataset imagenet100 --batch-size 256 \
        --amp bf16 --compile

A step is what the training loop runs per batch: autocast forward of both views, the losses,
backward, the LARS update (the data pipeline is excluded: it is the same for every method).
Methods run on one shared model in a shuffled order every round
(``hwbench.measure.protocol.measure``), so drift hits them alike; the first rounds are
warm-up. ``--compile`` times each method a second time with the objective's forward
through torch.compile (``<method>:compiled``, its ratio to ``dense:compiled``). Prints median ms
per step with its 95% CI, images/s (two views per image) and the ratio to ``dense``; writes the
raw samples to results/step_cost_<device>.json. Target: co / dense <= 1.10 on a CPU (issue 5),
<= 1.30 on a GPU (issue 16: batch 256, bf16).
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

from hwbench.data import info  # noqa: E402
from hwbench.io import atomic_write_json  # noqa: E402
from hwbench.measure.device import fingerprint, parse_device  # noqa: E402
from hwbench.measure.protocol import Inputs, Protocol, measure  # noqa: E402
from hwbench.measure.stats import summarise  # noqa: E402
from hwbench.nets import create_net  # noqa: E402
from hwbench.provenance import provenance  # noqa: E402
from hwbench.ssl.model import LARS, CoTrainStep, Objective, SSLModel, lars_param_groups  # noqa: E402
from hwbench.train.precision import amp_dtype  # noqa: E402

TARGETS = {"cpu": 1.10, "cuda": 1.30}  # co / dense step time (issues 5 and 16)
COMPILED = ":compiled"


def make_step(model: SSLModel, method: str, v1, v2, opt, amp, device, compile: bool = False):
    """One training step of ``method`` as the loop runs it (no value read to the host)."""
    objective = Objective(model, CoTrainStep(method, t_d=0.5))
    p = 0.9
    if compile:
        objective.compile()
        p = torch.full((), p, dtype=torch.float64, device=device)  # a float would recompile

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = objective(v1, v2, p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="mnist5k", help="sets stem and input size")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    ap.add_argument("--methods", default="dense,co")
    ap.add_argument("--compile", action="store_true",
                    help="also time each method with its forward through torch.compile")
    ap.add_argument("--max-time", type=float, default=60.0, help="seconds of timed rounds")
    ap.add_argument("--min-rounds", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = parse_device(args.device)
    meta = info(args.dataset)
    amp = amp_dtype(args.amp, device)
    torch.manual_seed(0)
    fmt = torch.channels_last
    model = SSLModel(create_net(args.arch, stem=meta.stem)).to(device, memory_format=fmt)
    model.train()
    opt = LARS(lars_param_groups(model), lr=1e-4)
    shape = (args.batch_size, 3, meta.input_size, meta.input_size)
    v1 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    v2 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    methods = args.methods.split(",")
    steps = {m: make_step(model, m, v1, v2, opt, amp, device) for m in methods}
    if args.compile:
        steps.update({m + COMPILED: make_step(model, m, v1, v2, opt, amp, device, True)
                      for m in methods})
    t0 = time.time()
    protocol = Protocol(quantile=0.5, ci_target=None, min_runs=args.min_rounds,
                        max_time_s=args.max_time, warmup=3, min_warmup_s=0.0)
    # each step trains on its own fixed views: the one input slot is unused
    res = measure({m: (lambda _x, f=f: f()) for m, f in steps.items()},
                  Inputs([None], {"source": "random views, fixed per method"}), protocol,
                  device, reference="dense" if "dense" in steps else None)
    fp = fingerprint(device)
    dtype = str(amp).replace("torch.", "") if amp else "fp32"
    print(f"{args.arch} {meta.stem} stem {meta.input_size} px, batch {args.batch_size}, {dtype} "
          f"autocast, channels-last · {fp['name']} ({fp['threads']} threads) · torch "
          f"{torch.__version__} · {time.time() - t0:.0f} s")
    stats = {m: summarise(r["samples_ms"]) for m, r in res.results.items()}
    target = TARGETS.get(device.type, TARGETS["cuda"])
    rows = []
    for m in steps:
        st = stats[m]
        base = stats.get("dense" + (COMPILED if m.endswith(COMPILED) else ""))
        ratio = st.p50_ms / base.p50_ms if base else float("nan")
        verdict = ""
        if m.split(":")[0] == "co" and base:
            verdict = f"  target <= {target:.2f} {'MET' if ratio <= target else 'MISSED'}"
        print(f"  {m:14s} p50 {st.p50_ms:9.1f} ms/step  95% CI [{st.ci95_lo_ms:.1f}, "
              f"{st.ci95_hi_ms:.1f}]  n {st.n:3d}  {args.batch_size / st.p50_ms * 1e3:6.1f} "
              f"images/s  ratio to dense {ratio:.3f}{verdict}")
        rows.append({"method": m, **st.to_dict(), "ratio_to_dense": ratio,
                     "images_per_s": args.batch_size / st.p50_ms * 1e3})
    out = Path(args.out) if args.out else ROOT / "results" / f"step_cost_{device.type}.json"
    atomic_write_json(out, {"benchmark": "step_cost", "provenance": provenance(),
                            "fingerprint": fp, "dtype": dtype,
                            "batch_size": args.batch_size, "arch": args.arch,
                            "dataset": args.dataset, "platform": platform.platform(),
                            "input_size": meta.input_size, "stem": meta.stem,
                            "target": target, "target_of": "co / dense p50 step time",
                            "compile": args.compile, "results": rows,
                            "samples_ms": {m: r["samples_ms"] for m, r in res.results.items()}})
    print(f"raw samples: {out}")


if __name__ == "__main__":
    main()
