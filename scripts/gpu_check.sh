#!/usr/bin/env bash
# Every device check in one call: the pytest tests marked `gpu` (tests/gpu), on the lent CUDA
# machine, from the repo root:
#   bash scripts/gpu_check.sh                 (< 8 minutes on an H100: pytest is stopped at 460 s)
# The numbers of issue 16 (tests/gpu/test_gpu_speed.py: one check per number, pass/fail, raw
# results in speed_<check>.json) run first, then the correctness and plumbing checks
# (tests/gpu/test_gpu_checks.py), so a run cut short by the limit loses the latter.
# Dry run of the plumbing here, on the CPU, small sizes:  DEV=cpu QUICK=1 bash scripts/gpu_check.sh
# Settings (environment): DEV (cuda), QUICK (0), OUT (raw outputs; default a new temp dir),
# GPU_CHECK_K (a pytest -k expression: run only those checks), GPU_CHECK_LIMIT (460 s for pytest),
# GPU_CHECK_COMPILE (0; 1 adds the torch.compile measurements: minutes of compiling, so give
# them their own run, e.g. GPU_CHECK_COMPILE=1 GPU_CHECK_K=compile GPU_CHECK_LIMIT=540),
# GPU_CHECK_ENV (1: record the environment), HWBENCH_GPU_CHECK_INJECT (break a check on purpose:
# tests/gpu/conftest.py).
# The last line printed is `N passed, N failed` (`, N skipped` when some were); exit 1 when a check
# failed or the run did not finish, else 0.
# That machine has torch, pytest, click, seaborn, pandas, numpy and nvidia-ml-py; zeus, codecarbon
# and their missing needs, and ptflops, travel in .whl/ (`bash scripts/gpu_wheels.sh` fetches
# them here first; the device call carries .whl); hwbench itself
# is pure Python, run from the checkout. The device returns at most 8 files, so every raw output
# is written under $WORK and packed into $OUT/gpu_check.tgz (checkpoints left out); the pytest
# log, the junit XML, the environment and the closing line come back beside it.
set -uo pipefail
DEV=${DEV:-cuda}
QUICK=${QUICK:-0}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXX)}
K=${GPU_CHECK_K:-}
LIMIT=${GPU_CHECK_LIMIT:-460}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)/gpu_check
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

# The environment, recorded while the checks run (one Python process, off the critical path);
# GPU_CHECK_ENV=0 leaves it out (the script's own CPU tests).
record_env() {
  date -u +%FT%TZ
  nproc
  command -v nvidia-smi >/dev/null && nvidia-smi \
    --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv
  timeout 120 $PY - "$DEV" <<'PYEOF'
import sys

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda)
for mod in ("codecarbon", "ptflops"):
    try:
        print(mod, getattr(__import__(mod), "__version__", "?"))
    except ImportError as exc:
        print(mod, "missing:", exc)
from hwbench.cli import cli  # noqa: E402

try:
    cli.main(["env", "--device", sys.argv[1]], prog_name="hwbench")
except SystemExit:
    pass
PYEOF
}
if [ "${GPU_CHECK_ENV:-1}" = 0 ]; then echo "not recorded (GPU_CHECK_ENV=0)" > "$WORK/env.txt" &
else record_env > "$WORK/env.txt" 2>&1 &
fi
ENV_PID=$!

# pytest-timeout (there on the device machine, loaded by its entry point) turns one hung check
# into one failure instead of a run stopped at the limit
TMO=()
[ -z "${PYTEST_DISABLE_PLUGIN_AUTOLOAD:-}" ] && $PY -c "import pytest_timeout" 2>/dev/null \
  && TMO=(--timeout 300)
KARGS=()
[ -n "$K" ] && KARGS=(-k "$K")
T0=$SECONDS
HWBENCH_GPU_DEVICE=$DEV HWBENCH_GPU_QUICK=$QUICK HWBENCH_GPU_CHECK_OUT=$WORK \
  HWBENCH_GPU_COMPILE=${GPU_CHECK_COMPILE:-0} \
  timeout "$LIMIT" $PY -m pytest tests/gpu/test_gpu_speed.py tests/gpu/test_gpu_checks.py \
  -m gpu -v -rfEs --tb=short -p no:cacheprovider \
  --junitxml="$WORK/junit.xml" "${TMO[@]}" "${KARGS[@]}" 2>&1 | tee "$WORK/pytest.txt"
RC=${PIPESTATUS[0]}
echo "pytest exit $RC after $((SECONDS - T0)) s (limit $LIMIT s)" | tee -a "$WORK/pytest.txt"
wait "$ENV_PID"
date -u +%FT%TZ >> "$WORK/env.txt"

# The closing line (scripts/gpu_check_summary.py): counts from the junit XML, or from the log when
# pytest did not finish; a run that stopped, crashed or selected nothing is one more failure.
SUMMARY=$($PY scripts/gpu_check_summary.py "$WORK/junit.xml" "$WORK/pytest.txt" "$RC")
FAILED=$?
[ -n "$SUMMARY" ] || { SUMMARY="0 passed, 1 failed"; FAILED=1; }  # the counting itself broke
echo "$SUMMARY" > "$WORK/summary.txt"
tar -czf "$OUT/gpu_check.tgz" --exclude='*.pt' -C "$(dirname "$WORK")" gpu_check
cp "$WORK/env.txt" "$WORK/pytest.txt" "$WORK/summary.txt" "$OUT/"
[ -f "$WORK/junit.xml" ] && cp "$WORK/junit.xml" "$OUT/"
rm -rf "$(dirname "$WORK")"
echo "raw outputs: $OUT (gpu_check.tgz, pytest.txt, junit.xml, env.txt)"
echo "$SUMMARY"
[ "$FAILED" = 0 ] || exit 1
exit 0
