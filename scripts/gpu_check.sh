#!/usr/bin/env bash
# Every GPU check in one call (< 8 minutes: the step timeouts below sum to 470 s). On the lent CUDA
# machine, from the repo root:
#   bash scripts/gpu_check.sh            (results under $OUT, default ./gpu_out)
# Dry run of the plumbing here, on the CPU, with short times:  DEV=cpu QUICK=1 bash scripts/gpu_check.sh
# That machine has torch, click, seaborn, pandas, numpy and nvidia-ml-py. codecarbon and its
# missing needs, and ptflops, travel in .whl/ (see the device tool's README); hwbench itself is
# pure Python, run from the checkout. The device returns at most 8 files, so every result is
# written under $WORK and packed into $OUT/gpu_check.tgz (checkpoints left out); the log and the
# step summary come back beside it.
set -uo pipefail
OUT=${OUT:-./gpu_out}
DEV=${DEV:-cuda}
QUICK=${QUICK:-0}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)/gpu_check
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
STEPS="$OUT/steps.txt"
: > "$STEPS"
# step NAME TIMEOUT CMD...: run with a timeout, log to $WORK/NAME.txt, one line in steps.txt
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.txt" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss (limit %ss)\n' "$name" "$rc" $((SECONDS - t0)) "$limit" | tee -a "$STEPS"
}
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv
  nproc
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import codecarbon, ptflops; print('codecarbon', codecarbon.__version__)"
} > "$WORK/env.txt" 2>&1
if [ "$QUICK" = 1 ]; then SP=(--quick); PT=2; ST=3; else SP=(--quick); PT=5; ST=15; fi

# 1. Gated nets and every engine mode on the device agree with the CPU (issue 2, issue 3). fp32 is
#    IEEE fp32 (hwbench turns TF32 off on CUDA), so CUDA fp32 must match the CPU; in bf16 the
#    compact modes are compared with the masked baseline in the same precision on the device.
step equality 55 $PY - "$DEV" <<'PYEOF'
import sys

import torch

from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.nets import list_nets
from hwbench.patterns import mixed_pattern

dev = sys.argv[1]
print("tf32 allowed:", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
for name in list_nets():
    for stem, size in (("cifar", 32), ("imagenet", 224)):
        p = mixed_pattern(name, stem, size, 0.3, seed=2)
        net = realise(p, seed=1)
        x = pattern_inputs(4, size, seed=3)
        cpu = build_engine(net, "masked", p)(x)
        c = net.forward_gated(x)
        g = net.to(dev).forward_gated(x.to(dev))
        same = all(torch.equal(a.cpu(), b) for a, b in zip(g.masks, c.masks))
        print(f"{name} {stem} {size}px nets: masks_equal={same} "
              f"macs_equal={torch.equal(g.macs.cpu(), c.macs)}")
        dtypes = (torch.float32, torch.bfloat16) if dev != "cpu" else (torch.float32,)
        for dtype in dtypes:
            ref = build_engine(net, "masked", p, device=dev, dtype=dtype)(x.to(dev)).float().cpu()
            for mode in ("masked", "static", "dynamic"):
                e = build_engine(net, mode, p, device=dev, dtype=dtype)
                out = e(x.to(dev)).float().cpu()
                err = ((out - cpu).abs().max() / cpu.abs().max()).item()
                own = ((out - ref).abs().max() / ref.abs().max()).item()
                print(f"  {mode:8s} {str(dtype):15s} rel_err_vs_cpu_fp32_masked={err:.2e} "
                      f"vs_masked_same_dtype_here={own:.2e} plan={','.join(e.plan)}")
        net.cpu()
PYEOF

# 2. The speed-up table for batch 1 (fp32, bf16) and batch 256 (bf16) (issue 3).
for cfg in "1 fp32" "1 bf16" "256 bf16"; do
  set -- $cfg
  [ "$DEV" = cpu ] && [ "$2" = bf16 ] && continue
  step "speedup_b$1_$2" 40 $PY benchmarks/speedup.py --device "$DEV" "${SP[@]}" \
    --batch-sizes "$1" --dtype "$2" --out "$WORK/speedup_b$1_$2.json"
done
# 3. A device profile with NVML energy (issue 4): latency table, sweep, validation, energy.
PROF="$WORK/profile_${DEV}_cifar32_b1.json"
step profile 130 $PY -m hwbench profile --device "$DEV" --arch resnet18 --stem cifar \
  --input-size 32 --batch-size 1 --max-time $PT --out "$PROF"
step env_hwbench 10 $PY -m hwbench env --device "$DEV"
# 4. Training on the device (issue 5): co vs dense step cost (bf16 autocast, batch 256), then a
#    short run (AMP, channels-last, NVML energy through codecarbon, kNN) verified on the profile.
step step_cost 40 $PY benchmarks/step_cost.py --device "$DEV" --batch-size 256 --max-time $ST \
  --out "$WORK/step_cost.json"
step train 45 $PY -m hwbench train --device "$DEV" --dataset synthetic --epochs 2 --batch-size 64 \
  --max-steps-per-epoch 4 --target-latency 0.8x --target-device "$PROF" --out "$WORK/train"
# 5. A report of the profile and run (issue 6): figures, CSVs, HTML (seaborn is there).
step report 25 $PY -m hwbench report "$PROF" "$WORK/train" --out "$WORK/report"
# 6. Training against device latency, two devices at once (issue 7): this GPU's profile and the
#    project CPU's (a profile from another machine: trained for, not verified here).
step train_latency2 45 $PY -m hwbench train --device "$DEV" --dataset synthetic --epochs 2 \
  --batch-size 64 --max-steps-per-epoch 6 --budget latency --target-latency "$PROF:0.7x" \
  --target-latency "results/profile_cpu_cifar32_b1_budget_compare.json:0.7x" \
  --out "$WORK/train_latency2"
cp models/train.json models/train_latency2.json "$WORK/" 2>/dev/null
date -u +%FT%TZ >> "$WORK/env.txt"
cp "$STEPS" "$WORK/"
tar -czf "$OUT/gpu_check.tgz" --exclude='*.pt' -C "$(dirname "$WORK")" gpu_check
cp "$WORK/env.txt" "$OUT/"
echo "gpu_check done: $OUT/gpu_check.tgz"
