"""What a runtime is to hwbench: a ``Runtime`` checks that it can run here, describes itself for
fingerprints, and opens a compiled graph from ONNX bytes. One module per runtime beside this one;
``registry`` lists them. Nothing here imports torch or a runtime's package at import time."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from hwbench.errors import UsageError


def require_extra(what: str, extra: str, *modules: str) -> None:
    """A one-line UsageError naming the extra to install when one of ``modules`` cannot be
    imported (``what`` needs it)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"{what} needs {name}, which is not installed: "
                             f"pip install 'hwbench[{extra}]'") from None


@dataclass(frozen=True)
class Runtime:
    """One way to run a network. ``graph``: it runs an exported, compiled graph (on the CPU, in
    fp32, with the engine's execution left eager); otherwise it is the compact engine itself.
    ``extra``/``modules``: the pip extra and the modules it needs."""

    name: str
    graph: bool = True
    extra: str | None = None
    modules: tuple[str, ...] = ()

    def check(self, device_type: str, execution: str, dtype: str) -> None:
        """A one-line UsageError when this runtime cannot run on ``device_type`` with the engine
        execution and dtype asked for, or its extra is missing."""
        if not self.graph:
            return
        if device_type != "cpu":
            raise UsageError(f"--runtime {self.name} runs on the CPU here (GPU runtimes such as "
                             "TensorRT are not built); use --device cpu")
        if execution != "eager":
            raise UsageError(f"--exec {execution} is how the engine runs; --runtime {self.name} "
                             "runs the exported graph (use --exec eager)")
        if dtype != "fp32":
            raise UsageError(f"--runtime {self.name} is measured in fp32 only, got {dtype}")
        require_extra(f"--runtime {self.name}", self.extra or self.name, *self.modules)

    def record(self, threads: int) -> dict:
        """What runs the network, for fingerprints: runtime, version, provider, threads."""
        raise NotImplementedError

    def open(self, model: bytes, threads: int) -> tuple[Callable, list]:
        """Compile ``model`` (ONNX bytes): ``(run, held)``, ``run(array) -> list of arrays``
        (fresh copies; it must not reference the session object) and the runtime objects that
        keep the compiled graph alive."""
        raise UsageError(f"the {self.name} runtime runs no exported graph")

    @property
    def flag(self) -> str:
        """The CLI words that select this runtime ('' for the default)."""
        return f" --runtime {self.name}" if self.graph else ""

    @property
    def timed(self) -> str:
        """What is timed when a network runs on it, in words."""
        return f"{self.name} graph" if self.graph else "compact engine"
