"""Settings of the device checks (``pytest -m gpu tests/gpu``; scripts/gpu_check.sh runs them).

Environment:
- ``HWBENCH_GPU_DEVICE``: the device checked, ``cuda`` (default), ``cuda:N`` or ``cpu`` (a dry
  run of the plumbing). ``cuda`` on a machine without one fails every check: a GPU check that
  skips where there is no GPU would pass without checking anything.
- ``HWBENCH_GPU_QUICK=1``: small sizes (two networks at 32/64 px, a tiny profile, no benchmarks).
- ``HWBENCH_GPU_CHECK_OUT``: folder for raw outputs (JSON, logs). Default: a pytest temp dir.
- ``HWBENCH_GPU_CHECK_INJECT``: comma-separated checks to break on purpose (``engine``,
  ``masks``), so that a test can prove the script reports failures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
INJECTABLE = ("engine", "masks")


def injected() -> set[str]:
    names = {n.strip() for n in os.environ.get("HWBENCH_GPU_CHECK_INJECT", "").split(",")}
    return names - {""}


def quick() -> bool:
    return os.environ.get("HWBENCH_GPU_QUICK", "0") == "1"


def pytest_configure(config):
    bad = injected() - set(INJECTABLE)
    if bad:  # a typo must not silently inject nothing
        raise pytest.UsageError(f"HWBENCH_GPU_CHECK_INJECT: unknown {sorted(bad)}; known: "
                                f"{', '.join(INJECTABLE)}")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The checked device; turns fp32 into IEEE fp32 on CUDA (as hwbench's CLI does)."""
    from hwbench.errors import UsageError
    from hwbench.measure.device import parse_device

    spec = os.environ.get("HWBENCH_GPU_DEVICE", "cuda")
    try:
        return parse_device(spec)
    except UsageError as exc:
        pytest.fail(f"HWBENCH_GPU_DEVICE={spec}: {exc} (HWBENCH_GPU_DEVICE=cpu: a dry run)")


@pytest.fixture(scope="session")
def check_out(tmp_path_factory) -> Path:
    """Where raw outputs go (``$HWBENCH_GPU_CHECK_OUT`` or a temp dir)."""
    env = os.environ.get("HWBENCH_GPU_CHECK_OUT")
    out = Path(env) if env else tmp_path_factory.mktemp("gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def run_logged(args: list[str], log: Path, timeout_s: float, cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    """Run ``python args...`` with the checkout importable; stdout and stderr go to ``log`` and
    the result. A run past ``timeout_s`` seconds fails the check."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, *args]
    try:
        res = subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        text = [t if isinstance(t, str) else (t or b"").decode(errors="replace")
                for t in (exc.stdout, exc.stderr)]
        log.write_text(f"$ {' '.join(cmd)}\n{text[0]}\n{text[1]}\nTIMEOUT after {timeout_s} s\n")
        pytest.fail(f"{' '.join(args[:3])} ran past {timeout_s} s (log: {log})")
    log.write_text(f"$ {' '.join(cmd)}\n{res.stdout}\n--- stderr\n{res.stderr}\n"
                   f"rc={res.returncode}\n")
    return res


def tail(res: subprocess.CompletedProcess, n: int = 2000) -> str:
    """The end of a run's output, for an assertion message."""
    return f"{res.stdout[-n:]}\n--- stderr\n{res.stderr[-n:]}"
