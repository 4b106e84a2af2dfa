"""The default runtime: hwbench's own compact engine in PyTorch (``hwbench.engine.compact``),
run as the execution asked for (``hwbench.engine.graphs``)."""

from __future__ import annotations

import torch

from hwbench.engine.runtimes.base import Runtime


class Eager(Runtime):
    def record(self, threads: int) -> dict:
        return {"runtime": self.name, "runtime_version": torch.__version__}


EAGER = Eager("eager", graph=False)
