#!/usr/bin/env bash
# Every GPU check in one call (< 8 minutes). Run on the lent CUDA machine from the repo root:
#   bash scripts/gpu_check.sh            (results under $OUT, default ./gpu_out)
# That machine has torch, click, seaborn and nvidia-ml-py; the package itself is pure Python and
# is installed without dependencies. Grows with each issue that adds a CUDA path.
set -uo pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/env.txt" 2>&1
$PY -m pip install -q --no-deps -e . > "$OUT/install.log" 2>&1
# The gated nets on CUDA: shapes, determinism and per-sample MACs equal to the CPU's.
$PY - > "$OUT/nets_cuda.txt" 2>&1 <<'PYEOF'
import torch
from hwbench.nets import create_net, list_nets
for name in list_nets():
    for stem, size in (("cifar", 32), ("imagenet", 224)):
        torch.manual_seed(0)
        net = create_net(name, stem=stem).eval()
        x = torch.randn(8, 3, size, size)
        cpu = net.forward_gated(x)
        gpu = net.cuda().forward_gated(x.cuda())
        same = all(torch.equal(a, b.cpu()) for a, b in zip(cpu.masks, gpu.masks))
        err = ((cpu.features - gpu.features.cpu()).abs().max()
               / cpu.features.abs().max().clamp_min(1e-12)).item()
        print(f"{name} {stem} {size}px masks_equal={same} macs_equal="
              f"{torch.equal(cpu.macs, gpu.macs.cpu())} feat_rel_err={err:.2e}")
PYEOF
echo "gpu_check done; see $OUT"
