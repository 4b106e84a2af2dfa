"""One compiled graph on a runtime (``Session``), from a module exported to ONNX in memory."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from torch import nn

from hwbench.engine.runtimes.registry import get
from hwbench.engine.sigstack import keep_signal_stack

OPSET = 17

# compiled graphs a forked child inherited from its parent: kept alive, never freed there
_INHERITED: list = []


def onnx_bytes(module: nn.Module, example: torch.Tensor, outputs: int = 1) -> bytes:
    """``module`` exported to ONNX for inputs of ``example``'s shape (fixed: runtimes plan for
    it), opset 17, TorchScript-based exporter (``dynamo=False``: the dynamo one needs
    onnxscript). Inputs ``x``, outputs ``y0``..``y{outputs-1}``."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices
        torch.onnx.export(module.eval(), (example,), buf, opset_version=OPSET, dynamo=False,
                          input_names=["x"], output_names=[f"y{i}" for i in range(outputs)])
    return buf.getvalue()


class Session:
    """One compiled graph on a runtime: ``session(array) -> list of arrays`` (fresh copies)."""

    def __init__(self, model: bytes, runtime: str, threads: int):
        self.runtime = runtime
        run, objects = get(runtime).open(model, threads)
        self.held = [run, *objects]  # freed in reverse order
        self.run = run
        self.pid = os.getpid()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.run(x)

    def close(self) -> None:
        """Free the compiled graph now (with this thread's signal stack kept; also done when
        the session is collected). In a forked child (a DataLoader worker) the graph is kept,
        never freed: its runtime's threads live in the parent only, and freeing it here waits
        for them forever (seen: a worker hung in OpenVINO's executor destructor when the
        garbage collector met a session inherited from the parent)."""
        held = self.__dict__.pop("held", [])
        self.__dict__.pop("run", None)
        if getattr(self, "pid", os.getpid()) != os.getpid():
            _INHERITED.extend(held)
            return
        with keep_signal_stack():
            held.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def compile_module(module: nn.Module, example: torch.Tensor, runtime: str, threads: int,
                   outputs: int = 1) -> Session:
    return Session(onnx_bytes(module, example, outputs), runtime, threads)
