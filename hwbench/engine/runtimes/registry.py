"""The runtimes hwbench knows, by name: the only place their names are listed (the CLI's choice
list mirrors ``RUNTIMES`` and a test holds them equal). A new runtime (TensorRT, say) is one
module beside this one with a ``Runtime`` subclass, and one line in ``REGISTRY``."""

from __future__ import annotations

import torch

from hwbench.engine.runtimes.base import Runtime
from hwbench.engine.runtimes.eager import EAGER
from hwbench.engine.runtimes.onnxruntime import ONNXRUNTIME
from hwbench.engine.runtimes.openvino import OPENVINO
from hwbench.errors import UsageError

REGISTRY: dict[str, Runtime] = {r.name: r for r in (EAGER, ONNXRUNTIME, OPENVINO)}
RUNTIMES = tuple(REGISTRY)
DEFAULT_RUNTIME = EAGER.name  # what runs a network when nothing is said: the compact engine
# the runtime an exported ONNX file is checked on when none is named
CHECKER = ONNXRUNTIME.name


def get(name: str | None) -> Runtime:
    """The runtime called ``name`` (the default for None); a one-line UsageError for an unknown
    one."""
    rt = REGISTRY.get(name or DEFAULT_RUNTIME)
    if rt is None:
        raise UsageError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    return rt


def is_graph(name: str | None) -> bool:
    """True when ``name`` runs an exported graph, False for the compact engine."""
    return get(name).graph


def of(record: dict | str | None) -> str:
    """The runtime's name in a fingerprint or runtime record (or a bare name); a record without
    one (profiles from before runtimes existed) ran on the default."""
    if isinstance(record, dict):
        return str(record.get("runtime") or DEFAULT_RUNTIME)
    return str(record or DEFAULT_RUNTIME)


def label(record: dict | str | None, version: str | None = None) -> str:
    """'eager' for the compact engine, '<name> <version>' for a graph runtime."""
    name = of(record)
    if isinstance(record, dict):
        version = record.get("runtime_version", version)
    return f"{name} {version}" if is_graph(name) and version else name


def check_runtime(runtime: str, device="cpu", execution: str = "eager",
                  dtype: str = "fp32") -> str:
    """A one-line UsageError for an unknown runtime, a graph runtime off the CPU, with an engine
    execution other than eager, a dtype other than fp32, or a missing extra; else the name."""
    get(runtime).check(torch.device(device).type, execution, dtype)
    return runtime


def runtime_record(runtime: str, threads: int | None = None) -> dict:
    """What runs the network, for fingerprints: runtime, version, provider/device, threads."""
    if threads is None:
        threads = torch.get_num_threads()
    return get(runtime).record(threads)
