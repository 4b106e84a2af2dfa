#!/usr/bin/env bash
# The Python packages scripts/gpu_check.sh needs on the lent GPU machine that its image lacks,
# downloaded here as wheels into .whl/ (git-ignored through .git/info/exclude), for Python 3.12
# on x86-64 Linux: the device machine reaches no registry, so they travel with the checkout
# (the device tool's `carry: [".whl"]`; gpu_check.sh installs them into /tmp/site).
#   bash scripts/gpu_wheels.sh            (about 22 MB; one minute)
# Which: zeus (the NVML energy counter), codecarbon (training energy), ptflops, and what they
# need that the image does not hold (its package list: the device tool's KINDS.md). Pinned to
# the versions seen to install together there on 2026-12-05; the image already has numpy,
# pandas, scikit-learn, nvidia-ml-py, rich, httpx, click, typer, psutil, py-cpuinfo, requests,
# prometheus-client, python-dateutil.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PKGS=(zeus==0.16.0 codecarbon==3.3.2 ptflops==0.7.5 amdsmi==7.0.2 tyro==1.0.17
      docstring-parser==0.18.0 typeguard==4.6.1 shtab==1.13.0 pydantic==2.14.4
      pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
      typing-extensions==4.16.0 arrow==1.4.0 tzdata authlib==1.9.10 joserfc==1.8.0
      cryptography cffi pycparser rapidfuzz questionary==2.1.1 prompt-toolkit==3.0.53
      wcwidth pycountry)
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATS=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64; do PLATS+=(--platform "$p"); done
for pkg in "${PKGS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATS[@]}" -d .whl "$pkg" 2>&1 | grep -v '^WARNING: Location' || true
done
n=$(ls .whl/*.whl | wc -l)
echo "$n wheels in .whl/ ($(du -sh .whl | cut -f1)); run the check with carry [\".whl\"]"
