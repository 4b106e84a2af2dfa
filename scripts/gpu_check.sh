#!/usr/bin/env bash
# Every GPU check in one call (< 8 minutes: the timeouts below sum to 500 s). On the lent CUDA machine, from the repo root:
#   bash scripts/gpu_check.sh            (results under $OUT, default ./gpu_out)
# That machine has torch, click, seaborn, numpy and nvidia-ml-py. Other wheels travel in .whl/
# (see the device tool's README); the package itself is pure Python, installed without deps.
# Grows with each issue that adds a CUDA path.
set -uo pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/env.txt" 2>&1

# 1. Gated nets and every engine mode on CUDA agree with the CPU (issue 2, issue 3).
timeout 80 $PY - > "$OUT/equality_cuda.txt" 2>&1 <<'PYEOF'
import torch
from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.nets import list_nets
from hwbench.patterns import mixed_pattern
for name in list_nets():
    for stem, size in (("cifar", 32), ("imagenet", 224)):
        p = mixed_pattern(name, stem, size, 0.3, seed=2)
        net = realise(p, seed=1)
        x = pattern_inputs(4, size, seed=3)
        cpu = build_engine(net, "masked", p)(x)
        gnet = net.cuda()
        g = gnet.forward_gated(x.cuda())
        c = net.cpu().forward_gated(x)
        same = all(torch.equal(a.cpu(), b) for a, b in zip(g.masks, c.masks))
        print(f"{name} {stem} {size}px nets: masks_equal={same} "
              f"macs_equal={torch.equal(g.macs.cpu(), c.macs)}")
        for mode in ("masked", "static", "dynamic"):
            for dtype in (torch.float32, torch.bfloat16):
                e = build_engine(net, mode, p, device="cuda", dtype=dtype)
                out = e(x.cuda()).float().cpu()
                err = ((out - cpu).abs().max() / cpu.abs().max()).item()
                print(f"  {mode:8s} {str(dtype):15s} rel_err_vs_cpu_masked={err:.2e} "
                      f"plan={','.join(e.plan)}")
PYEOF

# 2. The speed-up table for batch 1 (fp32, bf16) and batch 256 (bf16) (issue 3).
for cfg in "1 fp32" "1 bf16" "256 bf16"; do
  set -- $cfg
  timeout 60 $PY benchmarks/speedup.py --device cuda --quick --batch-sizes "$1" --dtype "$2" \
    --out "$OUT/speedup_cuda_b$1_$2.json" > "$OUT/speedup_cuda_b$1_$2.txt" 2>&1
done
# 3. A device profile with NVML energy (issue 4): latency table, sweep, validation, energy.
timeout 100 $PY -m hwbench profile --device cuda --arch resnet18 --stem cifar --input-size 32 \
  --batch-size 1 --max-time 10 --out "$OUT/profile_cuda_cifar32_b1.json" \
  > "$OUT/profile_cuda.txt" 2>&1
$PY -m hwbench env --device cuda > "$OUT/env_hwbench.txt" 2>&1
# 4. Training on CUDA (issue 5): co vs dense step cost (bf16 autocast, batch 256), then a short
#    run (AMP, channels-last, NVML energy through codecarbon, kNN) that verifies against the
#    profile just written.
timeout 50 $PY benchmarks/step_cost.py --device cuda --batch-size 256 --max-time 20 \
  --out "$OUT/step_cost_cuda.json" > "$OUT/step_cost_cuda.txt" 2>&1
timeout 50 $PY -m hwbench train --device cuda --dataset synthetic --epochs 2 --batch-size 64 \
  --max-steps-per-epoch 4 --target-latency 0.8x --target-device "$OUT/profile_cuda_cifar32_b1.json" \
  --out "$OUT/train_cuda" > "$OUT/train_cuda.txt" 2>&1
# 5. A report of the CUDA profile and run (issue 6): figures, CSVs, HTML (seaborn is there).
timeout 40 $PY -m hwbench report "$OUT/profile_cuda_cifar32_b1.json" "$OUT/train_cuda" \
  --out "$OUT/report" > "$OUT/report.txt" 2>&1
echo "gpu_check done; see $OUT"
