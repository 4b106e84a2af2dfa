"""Device parsing and fingerprints: what ran, recorded next to every number."""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from hwbench import __version__
from hwbench.errors import UsageError

DEVICE = re.compile(r"cpu|cuda(:\d+)?")  # the devices hwbench names


def parse_device(spec: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device; a clear error when unusable here."""
    if not DEVICE.fullmatch(spec or ""):
        raise UsageError(f"unknown device {spec!r}; use cpu, cuda or cuda:N")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but no CUDA GPU is available to torch "
                             f"{torch.__version__} on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
        ieee_fp32(dev)
    return dev


def ieee_fp32(device: torch.device | str) -> None:
    """On CUDA, make fp32 mean IEEE fp32: torch lets cuDNN convolutions use TF32 (10-bit
    mantissa) by default, which flips gate decisions near the threshold and makes a result
    labelled fp32 disagree with the CPU (seen on an H100: 24% relative error of a gated net).
    hwbench reports fp32, so it runs fp32; bf16/fp16 are asked for by name. A process-wide
    setting, recorded in the fingerprint (``tf32``)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_uuid(index: int) -> str | None:
    """The CUDA device's UUID as text (tells two boards of one model apart); None where torch
    does not report it (older torch)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return None if uuid is None else str(uuid)


def fingerprint(device: torch.device, threads: int | None = None) -> dict:
    """Who measured: device name (and UUID for a GPU), cores/threads used, driver/CUDA, library
    versions."""
    fp = {"type": device.type, "torch": torch.__version__, "hwbench": __version__,
          "python": platform.python_version(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(), "threads": threads or torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        fp.update(name=torch.cuda.get_device_name(idx), uuid=gpu_uuid(idx),
                  cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                  tf32=bool(torch.backends.cudnn.allow_tf32
                            or torch.backends.cuda.matmul.allow_tf32))
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
