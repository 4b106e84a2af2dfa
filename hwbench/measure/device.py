"""Device parsing and fingerprints: what ran, recorded next to every number."""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from hwbench import __version__
from hwbench.errors import UsageError


def parse_device(spec: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device; a clear error when unusable here."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spec or ""):
        raise UsageError(f"unknown device {spec!r}; use cpu, cuda or cuda:N")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but no CUDA GPU is available to torch "
                             f"{torch.__version__} on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: torch.device, threads: int | None = None) -> dict:
    """Who measured: device name, cores/threads used, driver/CUDA, library versions."""
    fp = {"type": device.type, "torch": torch.__version__, "hwbench": __version__,
          "python": platform.python_version(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(), "threads": threads or torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        fp.update(name=torch.cuda.get_device_name(idx), cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version())
    else:
        fp["name"] = fp["cpu"]
    return fp


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op CPU threads (None: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
