"""How a step runs on the device: autocast (``amp``: bf16 where the CPU has it natively or the GPU
supports it, fp16 + gradient scaling on older GPUs) and ``torch.compile``'s backend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from hwbench.errors import UsageError

# AMX runs bf16 matrix products natively and fast. AVX512-BF16 alone does not pay: on the
# project's 2-core Xeon VM with avx512_bf16 and no AMX, a co-training step (resnet18, batch 128,
# 32 px) took 6.8 s under bf16 autocast against 4.6 s in fp32 (measured 2026-11-30, 3 steps each,
# interleaved). Without either flag bf16 is emulated, about 3x slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16",)

# torch.compile's backend for --compile (tests swap in a faster one to check the wiring)
COMPILE_BACKEND = "inductor"


def check_compile(device: torch.device) -> None:
    """A one-line UsageError where ``--compile`` cannot run on ``device``: no TorchDynamo for
    this Python, a CPU without a C++ compiler, a GPU without Triton, another device type."""
    from torch._dynamo.eval_frame import is_dynamo_supported  # loaded only with --compile

    if not is_dynamo_supported():
        raise UsageError(f"--compile: torch {torch.__version__} has no torch.compile for this "
                         "Python; train without --compile")
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "")
        if not any(shutil.which(c) for c in (cxx, "g++", "c++", "clang++") if c):
            raise UsageError("--compile on a CPU needs a C++ compiler (g++ or clang++; none "
                             "found); install one or train without --compile")
    elif device.type == "cuda":
        from torch.utils._triton import has_triton  # loaded only with --compile

        if not has_triton():
            raise UsageError("--compile on a GPU needs Triton (pip install triton); train "
                             "without --compile")
    else:
        raise UsageError(f"--compile runs on cpu or cuda, not {device.type}")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32); see ``amp_choice``."""
    return amp_choice(amp, device)[0]


def amp_choice(amp: str, device: torch.device,
               cpuinfo: str | None = None) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32) and why. ``auto`` takes bf16
    where the hardware runs it natively and fast (CPUs whose ``cpuinfo`` flags name AMX,
    GPUs from Ampere), fp16 on older GPUs, and fp32 on other CPUs. ``cpuinfo``: the text of
    /proc/cpuinfo (read when None; tests pass their own)."""
    if amp == "off":
        return None, "--amp off"
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device (use bf16 on CPUs)")
        return torch.float16, "--amp fp16"
    if amp == "bf16":
        return torch.bfloat16, "--amp bf16"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "--amp auto: the GPU runs bf16 natively"
        return torch.float16, "--amp auto: the GPU has no bf16: fp16 with gradient scaling"
    native, why = cpu_bf16_native(cpuinfo)
    return (torch.bfloat16 if native else None), f"--amp auto: {why}"


def cpu_bf16_native(cpuinfo: str | None = None,
                    path: str | os.PathLike = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether bf16 autocast pays on this CPU, and why: one of ``BF16_CPU_FLAGS`` (AMX) in every
    x86 ``flags`` line of ``cpuinfo`` (the text; read from ``path`` when None). AVX512-BF16
    without AMX measured slower than fp32, and without either bf16 is emulated (oneDNN's own
    test, ``_is_mkldnn_bf16_supported``, says yes to any AVX-512 CPU). Other CPUs (no x86 flags
    lines) and an unreadable file count as not native."""
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return False, f"cannot read {path} ({exc.__class__.__name__})"
    flag_sets = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                 if ":" in line and line.split(":", 1)[0].strip() == "flags"]
    if not flag_sets:
        return False, "no x86 CPU flags in cpuinfo, so no known native bf16"
    common = set.intersection(*flag_sets)
    native = [f for f in BF16_CPU_FLAGS if f in common]
    if native:
        return True, f"the CPU runs bf16 natively ({', '.join(native)})"
    if "avx512_bf16" in common:
        return False, ("the CPU has avx512_bf16 but no AMX: bf16 training measured slower than "
                       "fp32 on such a CPU (6.8 vs 4.6 s a step)")
    return False, ("the CPU has neither avx512_bf16 nor amx_bf16: bf16 would be emulated, "
                   "slower than fp32")
