#!/usr/bin/env bash
# Remake the cheap committed results (results/index.json: "cheap": true) on this machine, one
# after the other (they time the same CPU: never two at once). Each writes its file with its
# provenance (commit, command, machine). About 30 min on a 2-core VM; the expensive ones are
# listed with their commands and durations in results/index.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON - <<'PY' | while IFS= read -r cmd; do
import json
for name, e in json.load(open("results/index.json"))["entries"].items():
    if e["cheap"]:
        print(e["remake"])
PY
  echo "== $cmd"
  # the index's commands start with python: run them with this venv's
  eval "${cmd/#python /$PYTHON }"
done
