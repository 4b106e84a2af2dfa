"""``make run`` exits with the worst of its steps: train's verdict and the final verify's, which
a ``| tee`` used to swallow (a fake ``hwbench`` in a fake virtual environment)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE = """#!/bin/sh
# a stand-in hwbench: train makes a deployed network, verify prints a line; both exit as told
cmd=$1; shift
case $cmd in
  train) while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
         mkdir -p "$out/deployed" && touch "$out/deployed/checkpoint.pt" "$out/summary.json"
         exit {train} ;;
  verify) echo "verify: NO DECISION"; exit {verify} ;;
  *) exit 0 ;;
esac
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("train,verify,want", [(0, 5, 5), (4, 0, 4), (0, 0, 0), (6, 4, 6)])
def test_make_run_exits_with_the_worst_of_its_steps(tmp_path, train, verify, want):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "hwbench"
    fake.write_text(FAKE.format(train=train, verify=verify))
    fake.chmod(0o755)
    stamp = venv / ".hwbench-installed"
    stamp.touch()  # newer than pyproject.toml: nothing is installed
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "run", f"VENV={venv}",
                        f"RUN_OUT={tmp_path / 'run'}"], capture_output=True, text=True,
                       timeout=120)
    # make exits 2 for a failed recipe and names the recipe's code: "Error 5"
    assert r.returncode == (2 if want else 0), r.stderr
    assert (f"Error {want}" in r.stderr) == bool(want), r.stderr
    assert (tmp_path / "run" / "verify_openvino.txt").read_text().strip() == "verify: NO DECISION"
    assert not (tmp_path / "run" / ".verify_rc").exists()


def _recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    body = text.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return body


def test_make_test_and_make_test_slow_split_the_suite_and_ci_runs_both():
    """No test is dropped: ``make test`` selects ``not slow``, ``make test-slow`` selects
    ``slow`` (the complement, with the same deselection of GPU checks), and .ci/run runs both
    after the README's test command."""
    fast, slow = _recipe("test"), _recipe("test-slow")
    assert '-m "not slow"' in fast and "-m slow" in slow
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make test") < ci.index("make test-slow")
    assert "make test" in (ROOT / "README.md").read_text()
