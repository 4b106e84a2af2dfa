"""Where a result came from: the commit of the hwbench source that ran, the exact command, the
machine (CPU model, cores, the vector flags that decide its speed, GPU when used) and the date.
Every results file records it (``results/index.json`` says how to remake each one)."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from hwbench.measure.device import fingerprint

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def source_commit() -> str | None:
    """The git commit of the hwbench source that ran, or None (an installed copy, no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None


def cpu_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """Which of ``SPEED_FLAGS`` every CPU of this machine has ([] where unreadable)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    sets = [set(line.split(":", 1)[1].split()) for line in text.splitlines()
            if ":" in line and line.split(":", 1)[0].strip() == "flags"]
    common = set.intersection(*sets) if sets else set()
    return [f for f in SPEED_FLAGS if f in common]


def provenance(argv: list[str] | None = None, device: str = "cpu") -> dict:
    """{commit, command, machine, date} of the result this process is writing."""

    fp = fingerprint(torch.device(device))
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(".py"):
        args = ["python", os.path.relpath(args[0])] + args[1:]
    elif args:
        args = [Path(args[0]).name] + args[1:]
    return {"commit": source_commit(), "command": shlex.join(args),
            "machine": {"name": fp["name"], "cpu": fp["cpu"], "cpu_count": fp["cpu_count"],
                        "threads": fp["threads"], "cpu_flags": cpu_flags(),
                        "torch": fp["torch"]},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
