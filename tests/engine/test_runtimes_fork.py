"""A forked child (a DataLoader worker) must never free a compiled graph it inherited: the
runtime's threads live in the parent, and OpenVINO's executor destructor then waits forever."""

import gc
import os
import signal
import time

import numpy as np
import pytest
import torch
from torch import nn


def _child_collects(cycle_holder: list) -> int:
    """Fork; the child drops the cycle, collects and exits; the exit code, or -1 if it hung."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            cycle_holder.clear()
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


@pytest.mark.parametrize("runtime", [pytest.param("openvino", marks=pytest.mark.slow),
                                     "onnxruntime"])
def test_a_child_that_collects_an_inherited_session_does_not_hang(runtime):
    pytest.importorskip(runtime)
    from hwbench.engine.runtimes import compile_module

    x = torch.randn(1, 3, 8, 8)
    session = compile_module(nn.Conv2d(3, 4, 3), x, runtime, threads=2)
    assert session(x.numpy())[0].shape == (1, 4, 6, 6)  # ran: the runtime's threads exist
    gc.disable()  # only the child may collect the cycle
    try:
        holder: list = [session]
        holder.append(holder)  # a cycle: freed by the collector, not by reference counting
        del session
        assert _child_collects(holder) == 0
    finally:
        holder.clear()
        gc.enable()
        gc.collect()


def test_a_session_is_freed_when_dropped_without_the_collector():
    pytest.importorskip("onnxruntime")
    import weakref

    from hwbench.engine.runtimes import compile_module

    x = torch.randn(1, 3, 8, 8)
    gc.disable()
    try:
        session = compile_module(nn.Conv2d(3, 4, 3), x, "onnxruntime", threads=1)
        gone = weakref.ref(session)
        out = session(np.asarray(x))
        del session
        assert gone() is None and out[0].shape == (1, 4, 6, 6)  # no cycle kept it
    finally:
        gc.enable()
