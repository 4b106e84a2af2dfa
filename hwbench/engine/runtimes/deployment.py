"""Where and how a network runs: the device and the runtime on it, checked once.

A ``Deployment`` is made by ``deploy_on`` at the edge (the CLI, or a script's top): the device
is parsed (``cpu``, ``cuda``, ``cuda:N``, usable here), and the runtime checked for it (known,
its extra installed, the device, execution and dtype it runs). Everything below takes the value
and checks nothing again; holding one means it was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hwbench.engine.graphs import DEFAULT_EXECUTION, check_execution
from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, check_runtime, get
from hwbench.errors import UsageError
from hwbench.measure.device import DEVICE, parse_device


@dataclass(frozen=True)
class Deployment:
    device: str = "cpu"  # as given: cpu, cuda or cuda:N
    runtime: str = DEFAULT_RUNTIME  # hwbench.engine.runtimes.RUNTIMES
    execution: str = DEFAULT_EXECUTION  # the engine's: hwbench.engine.graphs.EXECUTIONS
    dtype: str = "fp32"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def flag(self) -> str:
        """The CLI words that ask for this runtime (empty for the default)."""
        return get(self.runtime).flag

    def on(self, device: str) -> Deployment:
        """The same runtime on another device, checked there."""
        return deploy_on(device, self.runtime, self.execution, self.dtype)


def deploy_on(device: str = "cpu", runtime: str | None = None,
              execution: str = DEFAULT_EXECUTION, dtype: str = "fp32") -> Deployment:
    """The checked ``Deployment``: a one-line UsageError for a device not usable here, an unknown
    runtime, a missing extra, or a device, execution or dtype the runtime does not run."""
    runtime = runtime or DEFAULT_RUNTIME
    if DEVICE.fullmatch(device or ""):  # what the runtime runs on, whatever this machine has
        check_runtime(runtime, device, execution, dtype)
    parse_device(device)  # a device this machine has
    return Deployment(device, runtime, execution, dtype)


def deploy_engine_on(device: str, runtime: str | None, execution: str,
                     dtype: str) -> Deployment:
    """``deploy_on`` for a command that times the engine itself (``profile``, ``speedup``): the
    engine's own limits first (the device usable here, fp32 on the CPU, the execution on the
    device), then the runtime's."""
    dev = parse_device(device)
    if dev.type == "cpu" and dtype != "fp32":
        raise UsageError("on the CPU the engine runs fp32 only")
    check_execution(execution, dev)
    return deploy_on(device, runtime, execution, dtype)
