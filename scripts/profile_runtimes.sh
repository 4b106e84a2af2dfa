#!/usr/bin/env bash
# Issue 17's numbers on this CPU: the runtimes benchmark (dense p50, static efficiency at t_d 0.3
# and 0.5, every runtime interleaved per pattern), then one profile per runtime and input
# (latency table, sweep, predictor validated on 20 random patterns), batch 1, fp32, THREADS
# threads (default 1), no energy (no counter on these VMs: CPU energy would be an estimate).
# Run it on a quiet machine: nothing else timing or testing.
#   bash scripts/profile_runtimes.sh                 # cifar 32 px and imagenet 224 px
#   SIZES="cifar:32" bash scripts/profile_runtimes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
SIZES=${SIZES:-"cifar:32 imagenet:224"}
RUNTIMES=${RUNTIMES:-"eager onnxruntime openvino"}
LOG=${LOG:-results/runtimes_profiles_${THREADS}t.log}
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) threads=$THREADS"
  [ "${SKIP_BENCH:-0}" = 1 ] || $PY benchmarks/runtimes.py --threads "$THREADS"
  for s in $SIZES; do
    stem=${s%%:*}; size=${s##*:}
    for rt in $RUNTIMES; do
      echo "## profile $stem $size $rt ($(date -u +%T))"
      $PY -m hwbench profile --device cpu --arch resnet18 --stem "$stem" --input-size "$size" \
        --threads "$THREADS" --runtime "$rt" --no-energy
    done
  done
  echo "# done $(date -u +%FT%TZ)"
} 2>&1 | tee -a "$LOG"
